"""How often a fresh process's first generation differs from its second, with and without baco's VML warm-up.

    python benchmarks/first_call_race.py [--processes 40] [--tokens 2] [--bare]

Each of `--processes` fresh processes (half with BACO_VML_WARMUP=0, half with the default, alternating, so that a
change in the machine's load hits both arms alike) loads the embedded pair and generates the demo's three prompts
x n=4 twice with the same seed, then compares the two: token ids and each token's base top-1 probability. They
must agree; a process whose first generation differs hit the MKL VML first-call race (pytorch/pytorch#188792, see
`baco.numerics.warm_vector_math`). `--bare` (2 s a process instead of ~15) does without the models: after one
float32 matrix product (MKL is initialised), `import baco` and a few threaded products, the first and second calls of cos, sin, exp, log,
sqrt and tanh on 11,520 float32 numbers (the rotary embedding's size in the demo's prefill) on two threads.
Printed: per arm, processes whose first call differed / processes, and what differed in each such process. The
race is timing-dependent (docs/benchmarks.md has the measured rates); a quiet machine shows it more often than a
busy one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

PROMPTS = ["Name a fruit and say why you like it.", "Write a two-line poem about the sea.",
           "Give me an idea for a weekend trip."]


def child(tokens: int) -> None:
    from baco import Collaboration, SamplingParams

    collab = Collaboration.from_pretrained()
    params = SamplingParams(max_new_tokens=tokens, seed=0, min_p=0.05)
    runs = [collab.generate(PROMPTS, router="p-punc:0.5", n=4, sampling=params) for _ in range(2)]
    first, second = ([(s.token_ids, s.base_top1_prob) for s in run] for run in runs)
    differs = next((f"prompt {s.prompt_index} sample {s.sample_index}" for s, a, b in zip(runs[0], first, second)
                    if a != b), None)
    print(json.dumps({"differs": differs}))


def bare() -> None:
    import torch

    torch.set_num_threads(2)
    torch.randn(256, 256) @ torch.randn(256, 256)  # MKL initialised, as model loading leaves it; VML not yet called
    import baco  # noqa: F401  (the warm-up, unless BACO_VML_WARMUP=0)

    for _ in range(3):  # the OpenMP threads started and running, as model loading leaves them
        torch.ones(1 << 20).mul_(2)
    x = torch.linspace(0.01, 0.99, 11520)
    differs = []
    for name in ("cos", "sin", "exp", "log", "sqrt", "tanh"):
        first, second = getattr(torch, name)(x), getattr(torch, name)(x)
        if not torch.equal(first, second):
            where = (first != second).nonzero().flatten()
            differs.append(f"{name} at elements {where.min().item()}..{where.max().item()}, max error "
                           f"{(first - second).abs().max().item():.2g}")
    print(json.dumps({"differs": "; ".join(differs) or None}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=40)
    parser.add_argument("--tokens", type=int, default=2, help="new tokens per sample (the race is in the prefill)")
    parser.add_argument("--bare", action="store_true", help="torch's unary functions alone, without the models")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return bare() if args.bare else child(args.tokens)
    counts = {"0": [0, 0], "1": [0, 0]}
    for index in range(args.processes):
        arm = "0" if index % 2 == 0 else "1"
        out = subprocess.run([sys.executable, __file__, "--child", "--tokens", str(args.tokens)] + ["--bare"] * args.bare,
                             check=True,
                             capture_output=True, text=True, env={**os.environ, "BACO_VML_WARMUP": arm})
        differs = json.loads(out.stdout.strip().splitlines()[-1])["differs"]
        counts[arm][0] += differs is not None
        counts[arm][1] += 1
        if differs:
            print(f"process {index} (BACO_VML_WARMUP={arm}): first call differs: {differs}", flush=True)
    for arm, name in (("0", "without warm-up (BACO_VML_WARMUP=0)"), ("1", "with warm-up (default)")):
        print(f"{name}: {counts[arm][0]} of {counts[arm][1]} processes' first call differed from their second")


if __name__ == "__main__":
    main()
