"""Throughput with and without continuous batching, measured in one run.

    python benchmarks/throughput.py [--prompts 1000 --n 4 --max-batch 64 --lengths 16 128]
    python benchmarks/throughput.py --shape DIR --device cuda       # random weights shaped like DIR

Requests of different lengths: each (prompt, sample) gets its own max_new_tokens, drawn uniformly
from --lengths with a fixed seed, and stop tokens stay on (a row also ends when it writes one).
  static      the engine admits requests only when all --max-batch slots are free: fixed batches, each
              decoded until its longest row ends (finished rows wait for the rest of their batch)
  continuous  the same engine admits a request into a finished row's slot at the next step boundary
              (on a GPU in groups of max_batch // 8, so that prefills are batched)
  --static-prefill  each continuous run again with static prefills (`Engine(static_prefill=True)`: a group's prompts at
              once through fixed buffers per (group, width) bucket, captured as CUDA graphs on a GPU)
  --one-forward on  the aligned side a random LoRA adapter on the base, both sides in one forward; --compile:
              compiled forwards
Prints tokens, seconds, tokens/s for each and the ratios to static (target for continuous >= 1.5 on a GPU).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lockstep_overhead import random_pair_like  # noqa: E402

from baco import Collaboration, SamplingParams  # noqa: E402
from baco.decode.engine import Engine  # noqa: E402
from baco.routers import get_router  # noqa: E402
from baco.tasks import load_task  # noqa: E402


def requests_for(collab: Collaboration, prompts: int, n: int, lengths: tuple[int, int], params: SamplingParams):
    items = load_task("open-ended")
    texts = [items[i % len(items)].prompt + ("" if i < len(items) else f" (variant {i // len(items)})")
             for i in range(prompts)]
    requests = collab.requests(texts, n, params, seed=0)
    draw = random.Random(0)
    for request in requests:
        request.max_new_tokens = draw.randint(*lengths)
    return requests


def decode(collab: Collaboration, requests, params: SamplingParams, max_batch: int, continuous: bool,
           admit_at: int | None = None, static_prefill: bool = False):
    """(tokens written, seconds, engine stats) for all requests, on one engine whose admission policy is
    either continuous (a free slot is refilled at the next step) or static (only when all are free)."""
    longest = max(r.length for r in requests)
    engine = Engine(collab.pair, get_router("p-punc:0.5"), max_batch=max_batch, max_len=longest,
                    admit_at=admit_at if continuous else max_batch, static_prefill=static_prefill)
    for request in requests:
        engine.add(request, params)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    tokens = sum(len(event.rows) for event in engine.run())
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return tokens, time.perf_counter() - start, engine.stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=1000)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--lengths", type=int, nargs=2, default=[16, 128], metavar=("MIN", "MAX"))
    parser.add_argument("--shape", help="random-initialised models with this folder's config and tokenizer")
    parser.add_argument("--peak", type=float, default=4.0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--admit-at", type=int, nargs="+", default=[None], metavar="K",
                        help="continuous runs, one per K: admit waiting requests when K slots are free (default: "
                        "the engine's, max_batch // 8 on a GPU, 1 on the CPU); fewer, larger prefills vs idle slots")
    parser.add_argument("--static-prefill", action="store_true",
                        help="also every run with static prefills (fixed buffers per bucket, captured on a GPU)")
    parser.add_argument("--one-forward", default="off", choices=["on", "off"],
                        help="on: the aligned side is a random LoRA adapter on the base model, both sides stepping "
                        "in one forward (off: two models)")
    parser.add_argument("--compile", action="store_true", help="compiled forwards (compiling is done in the warm-up)")
    args = parser.parse_args()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    one = args.one_forward == "on"
    if args.shape:
        base, aligned = random_pair_like(args.shape, [], tempfile.mkdtemp(prefix="baco-bench-"), args.peak, adapter=one)
        label = f"random weights shaped like {args.shape}"
    else:
        from baco.testing import make_tiny_adapter, make_tiny_pair

        folder = tempfile.mkdtemp(prefix="baco-bench-")
        base, aligned = make_tiny_pair(folder)
        aligned = make_tiny_adapter(f"{folder}/adapter", base, seed=1) if one else aligned
        label = "tiny random pair"
    label += (" + a random LoRA adapter, one forward" if one else "") + (", compiled" if args.compile else "")
    collab = Collaboration.from_pretrained(base, aligned, dtype=args.dtype, device=args.device,
                                           one_forward=args.one_forward, compile=args.compile)
    params = SamplingParams(min_p=0.05, max_new_tokens=args.lengths[1], seed=0)
    requests = requests_for(collab, args.prompts, args.n, tuple(args.lengths), params)
    warm = requests_for(collab, 8, 1, (8, 8), params)
    decode(collab, warm, params, args.max_batch, True)  # load kernels once
    print(f"pair: {label}; device {collab.pair.device}; {len(requests)} requests ({args.prompts} prompts x "
          f"n={args.n}), lengths {args.lengths[0]}-{args.lengths[1]} + stop tokens, max batch {args.max_batch}")
    results = {}
    runs = [("static", False, None, False)] + [(f"continuous (admit at {k or 'default'})", True, k, False)
                                               for k in args.admit_at]
    runs += [(name + ", static prefill", True, k, True) for name, continuous, k, _ in runs
             if continuous and args.static_prefill]
    for name, continuous, admit_at, static_prefill in runs:
        tokens, seconds, stats = decode(collab, requests, params, args.max_batch, continuous, admit_at, static_prefill)
        results[name] = tokens / seconds
        occupancy = stats["occupied_row_steps"] / max(stats["bucket_row_steps"], 1)
        print(f"{name:>10}: {tokens} tokens in {seconds:.1f} s = {tokens / seconds:,.0f} tokens/s; {stats['steps']} "
              f"steps, {occupancy:.0%} of stepped rows live, {stats['prefill_chunks']} prefill chunks", flush=True)
    for name, value in results.items():
        if name != "static":
            print(f"{name} / static = {value / results['static']:.2f}")


if __name__ == "__main__":
    main()
