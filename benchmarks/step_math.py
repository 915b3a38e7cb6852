"""The lockstep step without the forwards: routing, the word rule and sampling over a 262k vocabulary.

    python benchmarks/step_math.py [--device cpu|cuda] [--batch 1 8 64] [--vocab 262144] [--threads 2]

Random log-probs (peaked like a trained model's) stand in for the two models' outputs; the step is
`decode.step.route_and_draw`, as the engine calls it: `sync-free` (what a GPU step runs, captured: both
models draw for every row) and `host` (the CPU's path: the other model draws only for blocked rows).
Prints ms per call (median of --repeats, after a warm-up; on CUDA timed to the end of the device's work)
and the number of operators one call runs (torch.profiler), for a hard router (p-punc:0.5), a fixed
writer (aligned alone) and a mixture (eft:0.5), with min-p 0.05 and (`--top-p`) with top-p 0.95, both at
temperature 1 (top-p's sync-free floor comes from a full sort of the vocabulary; the host path sorts the
top 1,024 only).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time

import torch

from baco.decode.sampling import RowKnobs, SamplingParams
from baco.decode.step import route_and_draw
from baco.routers import StepView, get_router
from baco.vocab import TokenTable


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--vocab", type=int, default=262144)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--top-p", action="store_true", help="also time top-p 0.95 sampling")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device, vocab_size = torch.device(args.device), args.vocab
    texts = [f" w{i}" if i % 7 == 0 else (f"{i % 10}" if i % 11 == 0 else f"w{i}") for i in range(vocab_size)]
    vocab = TokenTable.from_texts(texts, control_ids=set(), stop_ids={1}).to(device)
    print(f"route_and_draw, vocab {vocab_size}, device {device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'router':>10} {'sampling':>9} {'batch':>5} {'path':>9} {'ms/call':>8} {'operators':>9}")
    settings = {"min-p": SamplingParams(min_p=0.05)} | ({"top-p": SamplingParams(top_p=0.95)} if args.top_p else {})
    for batch in args.batch:
        generator = torch.Generator().manual_seed(batch)
        base, aligned = (torch.log_softmax(4 * torch.randn(batch, vocab_size, generator=generator), -1).to(device)
                         for _ in range(2))
        uniforms = torch.rand(batch, 3, generator=generator).to(device)
        previous = torch.randint(0, vocab_size, (batch,), generator=generator).to(device)
        previous_base = (torch.rand(batch, generator=generator) > 0.5).to(device)
        for sampling, name in itertools.product(settings, ("p-punc:0.5", "aligned", "eft:0.5")):
            knobs = RowKnobs.of(settings[sampling], batch, device)
            router = get_router(name)
            for path, sync_free in (("sync-free", True), ("host", False)):
                def call():
                    view = StepView(base, aligned, vocab, uniforms[:, 2], 3)
                    return route_and_draw(view, router, uniforms, previous, previous_base, knobs, sync_free=sync_free)

                def timed() -> float:
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    start = time.perf_counter()
                    call()
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    return time.perf_counter() - start

                timed()
                ms = statistics.median(timed() for _ in range(args.repeats)) * 1e3
                with torch.profiler.profile() as profile:
                    call()
                operators = sum(event.count for event in profile.key_averages() if event.key.startswith("aten::"))
                print(f"{name:>10} {sampling:>9} {batch:>5} {path:>9} {ms:>8.2f} {operators:>9}", flush=True)


if __name__ == "__main__":
    main()
