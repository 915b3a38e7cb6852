"""The cross-tokenizer path with and without penalties: characters per second on the embedded cross-family pair
(Gemma-3-270M base + SmolLM2-135M-Instruct), open-ended prompts x n as one batch, temperature 1, min-p 0.05,
seed 0; penalised: repetition 1.3, presence 0.5 (each model over its own tokens). Rounds alternate the two.

    python benchmarks/cross_penalties.py
    python benchmarks/cross_penalties.py --prompts 2 --n 2 --max-new-tokens 24 --rounds 1   # quicker
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--n", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--router", nargs="+", default=["chared:0.5", "p-punc-words:0.3"])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from baco import Collaboration, SamplingParams
    from baco.models.embedded import BASE_ALIAS, SMOLLM2_ALIAS
    from baco.tasks import load_task

    prompts = [item.prompt for item in load_task("open-ended", limit=args.prompts, seed=0)]
    cross = Collaboration.from_pretrained(BASE_ALIAS, SMOLLM2_ALIAS)
    plain = SamplingParams(temperature=1.0, min_p=0.05, max_new_tokens=args.max_new_tokens, seed=0)
    penalised = replace(plain, repetition_penalty=1.3, presence_penalty=0.5)
    print("| round | method | penalties | chars/s | chars | seconds |\n|---|---|---|---|---|---|")
    for round_ in range(1, args.rounds + 1):
        for router in args.router:
            for name, params in (("off", plain), ("on", penalised)):
                began = time.perf_counter()
                samples = cross.generate(prompts, router=router, n=args.n, sampling=params,
                                         batch_size=len(prompts) * args.n)
                seconds = time.perf_counter() - began
                chars = sum(len(s.text) for s in samples)
                print(f"| {round_} | {router} | {name} | {chars / seconds:.1f} | {chars} | {seconds:.1f} |", flush=True)


if __name__ == "__main__":
    main()
