"""Samples/s of `baco generate --ray` with 1 and with 2 Ray workers, on a local Ray cluster, and the scaling factor.

    python benchmarks/cluster_scaling.py [--prompts 48 --n 4 --max-new-tokens 64 --workers 1 2]
    python benchmarks/cluster_scaling.py --address auto --gpus-per-worker 1 --base B --aligned A --workers 1 2 4 8

By default it starts a local Ray with as many CPUs as the largest --workers and CPU workers of one CPU
each, on the tiny random pair (or --base/--aligned). For each worker count: the workers start and load
their models (timed apart: `load s`), then the same prompt shards are decoded (`generate s`); samples/s
is samples / generate s, and the scaling factor is each count's samples/s over 1 worker's. The
single-process figure (no Ray, one torch thread, the same prompts) is the per-worker baseline.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from baco import Collaboration, SamplingParams
from baco.cluster import RayOptions
from baco.cluster.pool import UnitDone, WorkerPool, connected
from baco.cluster.shards import PromptShard
from baco.prompts import PromptFormat
from baco.sweep.run import Engines
from baco.tasks import load_task
from baco.testing import make_tiny_pair

ROUTER = "p-punc:0.5"


def shards(prompts, args, sampling) -> list[PromptShard]:
    size = args.shard_size
    return [PromptShard(list(range(s, min(s + size, len(prompts)))), prompts[s:s + size], ROUTER, args.n, sampling,
                        args.batch_size, PromptFormat()) for s in range(0, len(prompts), size)]


def on_ray(ray, prompts, args, sampling, workers: int) -> tuple[float, float, int]:
    options = RayOptions(workers=workers, gpus_per_worker=args.gpus_per_worker, cpus_per_worker=1)
    build = functools.partial(Engines.load, args.base, args.aligned, device=args.device)
    began = time.perf_counter()
    with WorkerPool(ray, build, options, workers, "bench") as pool:
        loaded = time.perf_counter()
        samples = sum(not isinstance(item, UnitDone) for _, item in pool.run(shards(prompts, args, sampling)))
        done = time.perf_counter()
    return loaded - began, done - loaded, samples


def single_process(prompts, args, sampling) -> tuple[float, int]:
    torch.set_num_threads(1)  # what one CPU worker gets
    collab = Collaboration(Engines.load(args.base, args.aligned, device=args.device).pair)
    began = time.perf_counter()
    count = 0
    for shard in shards(prompts, args, sampling):
        count += len(collab.generate(shard.prompts, router=ROUTER, n=args.n, sampling=sampling,
                                     batch_size=args.batch_size))
    return time.perf_counter() - began, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base")
    parser.add_argument("--aligned")
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--shard-size", type=int, default=6)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--address", default=None, help="an existing cluster (default: start a local one)")
    parser.add_argument("--gpus-per-worker", type=float, default=0)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if not args.base:
        args.base, args.aligned = map(str, make_tiny_pair(Path(tempfile.mkdtemp()) / "tiny"))
    items = load_task("open-ended")
    prompts = [items[i % len(items)].prompt for i in range(args.prompts)]
    sampling = SamplingParams(max_new_tokens=args.max_new_tokens, min_p=0.05, seed=0)
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} cores; "
          f"{args.prompts} prompts x {args.n} samples, {args.max_new_tokens} new tokens at most, router {ROUTER}")
    seconds, count = single_process(prompts, args, sampling)
    print(f"| single process, 1 thread | - | {seconds:.2f} | {count} | {count / seconds:.2f} | - |")
    if args.address is None:
        import ray

        ray.init(num_cpus=max(args.workers), include_dashboard=False, log_to_driver=False)
    with connected(RayOptions(address=args.address)) as ray:
        first = None
        print("| workers | load s | generate s | samples | samples/s | scaling |")
        print("|---|---|---|---|---|---|")
        for workers in args.workers:
            load, seconds, count = on_ray(ray, prompts, args, sampling, workers)
            rate = count / seconds
            first = first or rate
            print(f"| {workers} | {load:.1f} | {seconds:.2f} | {count} | {rate:.2f} | {rate / first:.2f} |")
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}", file=sys.stderr)


if __name__ == "__main__":
    main()
