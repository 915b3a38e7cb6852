"""How often a fresh process's first generation differs from its second, with and without baco's VML warm-up.

    python benchmarks/first_call_race.py [--processes 40] [--tokens 2]

Each of `--processes` fresh processes (half with BACO_VML_WARMUP=0, half with the default, alternating, so that a
change in the machine's load hits both arms alike) loads the embedded pair and generates the demo's three prompts
x n=4 twice with the same seed, then compares the two: token ids and each token's base top-1 probability. They
must agree; a process whose first generation differs hit the MKL VML first-call race (pytorch/pytorch#188792, see
`baco.numerics.warm_vector_math`). Printed: per arm, processes whose first generation differed / processes, and
the first differing field of each such process. The race is timing-dependent: measured here on a 2-core Xeon at
about one process in ten without the warm-up (docs/engine.md, "Randomness"); a quiet machine shows it more often
than a busy one.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=40)
    parser.add_argument("--tokens", type=int, default=2, help="new tokens per sample (the race is in the prefill)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.tokens)
    counts = {"0": [0, 0], "1": [0, 0]}
    for index in range(args.processes):
        arm = "0" if index % 2 == 0 else "1"
        out = subprocess.run([sys.executable, __file__, "--child", "--tokens", str(args.tokens)], check=True,
                             capture_output=True, text=True, env={**os.environ, "BACO_VML_WARMUP": arm})
        differs = json.loads(out.stdout.strip().splitlines()[-1])["differs"]
        counts[arm][0] += differs is not None
        counts[arm][1] += 1
        if differs:
            print(f"process {index} (BACO_VML_WARMUP={arm}): first generation differs at {differs}", flush=True)
    for arm, name in (("0", "without warm-up (BACO_VML_WARMUP=0)"), ("1", "with warm-up (default)")):
        print(f"{name}: {counts[arm][0]} of {counts[arm][1]} processes' first generation differed from their second")


if __name__ == "__main__":
    main()
