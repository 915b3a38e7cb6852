"""How often a router per word must look past a model's held token before it decides (one extra forward).

    python benchmarks/cross_lookahead.py                       # the embedded cross-family pair, p-punc-words:0.3
    python benchmarks/cross_lookahead.py --router nudge-words:0.4 rand-words:0.5

At a word boundary a model may hold bytes that are the start of its next token and also a token of their own
(a `.` that may end there). A router that reads that model's next piece of text (P, H, Nudging read the base
model; PUNC, FC the aligned model) then waits for a lookahead forward of that token (docs/cross-tokenizer.md).
This prints, per router, the word decisions and the share at which each model was asked for one. Open-ended and
creative-writing prompts, n samples each, temperature 1 with min-p 0.05, seed 0. It counts by wrapping the
loop's decision function: nothing is timed (`benchmarks/cross_speed.py` times the methods).
"""

from __future__ import annotations

import argparse
from collections import Counter

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--router", nargs="+", default=["p-punc-words:0.3"])
    parser.add_argument("--prompts", type=int, default=6, help="per task (open-ended, creative-writing)")
    parser.add_argument("--n", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--base", default=None, help="default: the embedded Gemma-3-270M")
    parser.add_argument("--aligned", default=None, help="default: the embedded SmolLM2-135M-Instruct")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import baco.decode.crossloop as crossloop
    from baco import Collaboration, SamplingParams
    from baco.models.chars import RAW
    from baco.models.embedded import BASE_ALIAS, SMOLLM2_ALIAS
    from baco.routers.cross import WORD
    from baco.tasks import load_task

    decided: set = set()
    counts: Counter = Counter()
    decide = crossloop._decide

    def counting(i, row, models, method, unit, params):
        key = (id(row), len(row.data))
        if unit == WORD and row.span is None and key not in decided:  # a decision's first visit, before any wait
            decided.add(key)
            counts["decisions"] += 1
            for m, model in enumerate(models):
                cursor = model.cursors[i]
                if m in crossloop.models_read(method) and cursor.pending and cursor.look is None \
                        and cursor.end_mass(model.table, RAW) > 0:
                    counts[m] += 1
        return decide(i, row, models, method, unit, params)

    crossloop._decide = counting
    collab = Collaboration.from_pretrained(base=args.base or BASE_ALIAS, aligned=args.aligned or SMOLLM2_ALIAS)
    prompts = [item.asked for task in ("open-ended", "creative-writing") for item in load_task(task, limit=args.prompts)]
    sampling = SamplingParams(temperature=1.0, min_p=0.05, max_new_tokens=args.max_new_tokens, seed=0)
    print(f"{len(prompts)} prompts x {args.n}, at most {args.max_new_tokens} tokens")
    print(f"{'router':<22} {'word decisions':>15} {'base looks ahead':>17} {'aligned looks ahead':>20}")
    for router in args.router:
        decided.clear()
        counts.clear()
        collab.generate(prompts, router=router, n=args.n, sampling=sampling)
        total = counts["decisions"]
        share = [f"{counts[m]} ({counts[m] / total:.0%})" if total else "-" for m in (0, 1)]
        print(f"{router:<22} {total:>15} {share[0]:>17} {share[1]:>20}")


if __name__ == "__main__":
    main()
