"""Characters per second of the cross-tokenizer path, and its overhead over the same-tokenizer path.

    python benchmarks/cross_speed.py                  # the embedded pairs (Gemma + adapter; Gemma + SmolLM2)
    python benchmarks/cross_speed.py --n 2 --max-new-tokens 32 --prompts 2   # quicker

Part 1 runs the same-family pair (one tokenizer) through both paths: the token path's p-punc and
aligned alone against the cross path's p-punc-words and chared:0 (aligned alone, character by
character), so the ratio is the cost of the byte-level machinery itself. Part 2 runs the methods on
the cross-family demo pair. Each row: the same prompts and seed, one batch, wall time including
prefill; characters are those of the final texts.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch


def measure(collab, router, prompts, n, params) -> tuple[float, float, int]:
    began = time.perf_counter()
    samples = collab.generate(prompts, router=router, n=n, sampling=params, batch_size=len(prompts) * n)
    seconds = time.perf_counter() - began
    chars = sum(len(s.text) for s in samples)
    return chars / seconds, seconds, chars


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--n", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    from baco import Collaboration, SamplingParams
    from baco.models.embedded import ALIGNED_ALIAS, BASE_ALIAS, SMOLLM2_ALIAS
    from baco.tasks import load_task

    hf_logging.disable_progress_bar()
    prompts = [item.prompt for item in load_task("open-ended", limit=args.prompts, seed=0)]
    params = SamplingParams(temperature=1.0, min_p=0.05, max_new_tokens=args.max_new_tokens, seed=0)
    print(f"{len(prompts)} prompts x {args.n} samples (one batch of {len(prompts) * args.n}), "
          f"max {args.max_new_tokens} new tokens, min-p 0.05, torch {torch.__version__}, {args.threads} threads\n")
    same = Collaboration.from_pretrained(BASE_ALIAS, ALIGNED_ALIAS)
    print("| same-family pair (one tokenizer) | path | chars/s | seconds | chars |\n|---|---|---|---|---|")
    rates = {}
    for router, path in (("aligned", "token"), ("chared:0", "cross"), ("p-punc:0.3", "token"),
                         ("p-punc-words:0.3", "cross"), ("chared:0.5", "cross")):
        rate, seconds, chars = measure(same, router, prompts, args.n, params)
        rates[router] = rate
        print(f"| {router} | {path} | {rate:.1f} | {seconds:.1f} | {chars} |")
    print(f"\noverhead of the cross path: aligned alone {rates['aligned'] / rates['chared:0']:.2f}x, "
          f"P-PUNC {rates['p-punc:0.3'] / rates['p-punc-words:0.3']:.2f}x (token-path chars/s / cross-path chars/s)\n")
    del same
    cross = Collaboration.from_pretrained(BASE_ALIAS, SMOLLM2_ALIAS)
    print("| cross-family pair (Gemma-3-270M + SmolLM2-135M-Instruct) | path | chars/s | seconds | chars |\n"
          "|---|---|---|---|---|")
    greedy = dataclasses.replace(params, temperature=0.0)  # CharED's greedy mixture: both models read at each byte
    for router, knobs in (("base", params), ("aligned", params), ("chared:0.5", params), ("chared:0.5", greedy),
                          ("p-punc-words:0.3", params), ("nudge-words:0.4", params), ("unite:3", params)):
        rate, seconds, chars = measure(cross, router, prompts, args.n, knobs)
        path = "token (one model)" if router in ("base", "aligned") else "cross"
        name = f"{router} (temperature 0)" if knobs.temperature == 0 else router
        print(f"| {name} | {path} | {rate:.1f} | {seconds:.1f} | {chars} |")


if __name__ == "__main__":
    main()
