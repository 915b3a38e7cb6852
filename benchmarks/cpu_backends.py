"""The CPU paths side by side on the embedded pair, in one run: HF two models, HF one-forward adapter pair,
llama.cpp; and the one-forward pair with its steps compiled (`torch.compile`). Per backend and batch size: BACo ms/step, one model's step on the same backend, tokens/s, peak RSS.

    python benchmarks/cpu_backends.py [--batch 1 8] [--steps 32] [--repeats 3] [--threads N]
                                      [--backends hf-two hf-one hf-one-compiled llamacpp]

Each backend runs in its own process (so its peak RSS is its own): it loads the pair, warms an engine of
`batch` rows up (router p-punc:0.5, stop tokens disabled so every row runs the full length), records the
peak RSS, then loads the reference (one model alone on the same backend; on the one-forward backend that is
the plain base model, as on the two-model backend) and times both engines taking turns (medians, like
`lockstep_overhead.py`). Columns:
  baco ms       one BACo step (both models forward, router, word rule, sampler, provenance)
  one model ms  one step of the base model alone on the same backend (its forward + the sampler)
  ratio         baco / one model: two separate models cost about 2; the one-forward target is <= 1.3
                (hf-one-compiled: both compiled, the pair and the reference; compiling is not timed)
  tok/s         BACo tokens per second (batch / baco step)
  vs hf-two     tokens/s relative to the HF two-model path at the same batch size
  peak RSS      the process's peak resident memory with the pair loaded and running (MB)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

BACKENDS = ("hf-two", "hf-one", "hf-one-compiled", "llamacpp")


def measure(backend: str, batches: list[int], steps: int, repeats: int) -> dict:
    import torch

    from baco import Collaboration
    from baco.models import SoloPair
    from baco.models.hf import HFCausalLM
    from lockstep_overhead import running_engine, steady_steps, without_stops

    if backend == "llamacpp":
        collab = Collaboration.from_pretrained(backend="llamacpp")
    else:
        collab = Collaboration.from_pretrained(backend="hf", one_forward="off" if backend == "hf-two" else "on",
                                               compile=backend == "hf-one-compiled")
    without_stops(collab)
    rows = {}
    for batch in batches:
        budget = steps * 2 * repeats
        baco = running_engine(collab, collab.pair, "p-punc:0.5", batch, budget)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        base = collab.pair.base
        if backend.startswith("hf-one"):  # the reference is the plain base model, not the base rows of the shared one
            base = HFCausalLM.from_pretrained("baco:gemma-3-270m", device="cpu")
            base.compiled = backend == "hf-one-compiled"  # compiled like the pair
        alone = SoloPair(base, reads="base")
        alone.vocab, alone._mask = collab.pair.vocab, collab.pair._mask
        one = running_engine(collab, alone, "base", batch, budget)
        timed = steady_steps({"baco": baco, "one": one}, steps, 2 * repeats)
        rows[batch] = {"baco": timed["baco"], "one": timed["one"], "rss_mb": rss}
    return {"backend": backend, "threads": torch.get_num_threads(), "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--steps", type=int, default=24, help="steps per turn (each engine takes 2 x --repeats turns)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch / llama.cpp CPU threads (default: torch's)")
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--one", choices=BACKENDS, help=argparse.SUPPRESS)  # internal: measure one backend
    args = parser.parse_args()
    if args.one:
        import torch
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        if args.threads:
            torch.set_num_threads(args.threads)
        print(json.dumps(measure(args.one, args.batch, args.steps, args.repeats)))
        return
    results = {}
    for backend in args.backends:
        command = [sys.executable, __file__, "--one", backend, "--batch", *map(str, args.batch),
                   "--steps", str(args.steps), "--repeats", str(args.repeats)]
        command += ["--threads", str(args.threads)] if args.threads else []
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{backend}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
            continue
        results[backend] = json.loads(done.stdout.strip().splitlines()[-1])
    threads = {r["threads"] for r in results.values()}
    print(f"embedded pair (Gemma-3-270M base + baco's adapter), router p-punc:0.5, CPU threads {threads}")
    print(f"{'backend':>15} {'batch':>5} {'baco ms':>8} {'one model ms':>12} {'ratio':>6} {'tok/s':>7} "
          f"{'vs hf-two':>9} {'peak RSS MB':>11}")
    for backend, result in results.items():
        for batch, row in result["rows"].items():
            reference = results.get("hf-two", {}).get("rows", {}).get(batch)
            speedup = f"{reference['baco'] / row['baco']:.2f}x" if reference else "-"
            print(f"{backend:>15} {batch:>5} {row['baco'] * 1e3:>8.1f} {row['one'] * 1e3:>12.1f} "
                  f"{row['baco'] / row['one']:>6.2f} {int(batch) / row['baco']:>7.1f} {speedup:>9} {row['rss_mb']:>11.0f}")


if __name__ == "__main__":
    main()
