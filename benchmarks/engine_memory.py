"""Memory an engine holds beyond its caches, measured against what `max_batch="auto"` reckons, in one run.

    python benchmarks/engine_memory.py                                   # the tiny random pair, CPU
    python benchmarks/engine_memory.py --shape DIR --set num_hidden_layers=2 [--one-forward on]
    python benchmarks/engine_memory.py --shape DIR --device cuda         # on a GPU (the caching allocator's peak)

For each batch size: the peak of the first engine step (admission: the prompts' prefill, then a step) and of a
steady step, per row, beside what `fit_slots` reserves per slot for them (`step_bytes`, `prefill_bytes`): the
ratios measured / reserved must stay <= 1. Then the slots `max_batch="auto"` gives on this device.
Sampling with top-p (the costliest sampler path: a full sort on a GPU) and min-p, both paths of the step
(`sync_free` off and on).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lockstep_overhead import random_pair_like  # noqa: E402

from baco import Collaboration, SamplingParams  # noqa: E402
from baco.decode.engine import MEMORY_FRACTION, Engine, fit_slots, prefill_bytes, step_bytes  # noqa: E402
from baco.routers import get_router  # noqa: E402
from baco.testing import peak_bytes  # noqa: E402

WORDS = "the cat sat on a mat and then it ran far away from home".split()


def measure(collab: Collaboration, rows: int, words: int, columns: int, params: SamplingParams,
            sync_free: bool, router: str = "p-punc:0.5") -> tuple[int, int, int]:
    """(peak of the first step, peak of a steady step, longest prompt in tokens) of an engine of `rows` slots."""
    engine = Engine(collab.pair, get_router(router), max_batch=rows, max_len=columns, sync_free=sync_free,
                    graphs=False)
    prompts = [" ".join(WORDS[(i + j) % len(WORDS)] for j in range(words)) for i in range(rows)]
    requests = collab.requests(prompts, 1, params, seed=0)
    for request in requests:
        engine.add(request, params)
    steps = engine.run()
    device = collab.pair.device
    first = peak_bytes(lambda: next(steps), device)
    for _ in range(3):
        next(steps)
    steady = peak_bytes(lambda: next(steps), device)
    return first, steady, max(len(r.base_ids) for r in requests)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", help="random-initialised models with this folder's config and tokenizer")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=JSON", help="config changes for --shape")
    parser.add_argument("--one-forward", default="off", choices=["on", "off"])
    parser.add_argument("--batch", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--words", type=int, default=48, help="words per prompt")
    parser.add_argument("--max-len", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if args.shape:
        base, aligned = random_pair_like(args.shape, args.set, tempfile.mkdtemp(prefix="baco-bench-"), 4.0,
                                         adapter=args.one_forward == "on")
        label = f"random weights shaped like {args.shape} {' '.join(args.set)}".strip()
    else:
        from baco.testing import make_tiny_adapter, make_tiny_pair

        folder = tempfile.mkdtemp(prefix="baco-bench-")
        base, aligned = make_tiny_pair(folder)
        if args.one_forward == "on":
            aligned = str(make_tiny_adapter(f"{folder}/adapter", base))
        label = "tiny random pair"
    collab = Collaboration.from_pretrained(base, aligned, device=args.device, dtype=args.dtype,
                                           one_forward=args.one_forward)
    dtype = next(collab.pair.base.model.parameters()).dtype
    print(f"pair: {label}{' (one forward)' if args.one_forward == 'on' else ''}; vocabulary {collab.pair.vocab_size}, "
          f"{len(collab.pair.sides)} sides, device {collab.pair.device}, {dtype}, torch {torch.__version__}")
    print(f"{'sampling':>14} {'sync-free':>9} {'rows':>5} {'prompt':>6} {'steady/row':>10} {'step res.':>10} "
          f"{'ratio':>6} {'first/row':>10} {'+prefill':>10} {'ratio':>6}")
    worst = 0.0
    for name, params in (("top-p 0.9", SamplingParams(top_p=0.9, max_new_tokens=16)),
                         ("min-p 0.05", SamplingParams(min_p=0.05, max_new_tokens=16))):
        for sync_free in (False, True):
            for rows in args.batch:
                first, steady, prompt = measure(collab, rows, args.words, args.max_len, params, sync_free)
                step = step_bytes(collab.pair)
                both = step + prefill_bytes(collab.pair, prompt)
                worst = max(worst, steady / rows / step, first / rows / both)
                print(f"{name:>14} {str(sync_free):>9} {rows:>5} {prompt:>6} {steady / rows / 2**10:>9.0f}K "
                      f"{step / 2**10:>9.0f}K {steady / rows / step:>6.2f} {first / rows / 2**10:>9.0f}K "
                      f"{both / 2**10:>9.0f}K {first / rows / both:>6.2f}", flush=True)
    print(f"worst measured / reserved: {worst:.2f} (must be <= 1)")
    slots = fit_slots(collab.pair, args.max_len, fraction=MEMORY_FRACTION)
    print(f'max_batch="auto" at --max-len {args.max_len}, memory fraction {MEMORY_FRACTION}: {slots} slots')


if __name__ == "__main__":
    main()
