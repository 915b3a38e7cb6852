"""Is the adapter "aligned" in the sense BACo needs? Base vs adapter on 50 held-out prompts.

    python scripts/eval_aligned.py --settings aligned base-chat base-qa --out docs/adapter_eval.json

Each setting decodes one model alone (SoloPair, the project's own engine) on the 50 prompts of
scripts/sft_prompts.py (never used in training), 8 samples each, temperature 1 (no top-p/top-k/min-p),
at most 128 new tokens, seed 0:
  aligned     Gemma-3-270M + adapter, Gemma chat template
  base-chat   Gemma-3-270M base, the same chat template (like for like)
  base-qa     Gemma-3-270M base, baco's plain base template "Question: ...\\nAnswer:"
Metrics: clean ending (stopped by <end_of_turn>/<eos>, or for base-qa by the template's stop string,
within 128 tokens), mean tokens, prompt-response cosine and mean pairwise cosine between the 8
samples of a prompt (all-MiniLM-L6-v2), distinct-2 over the 8 samples of a prompt.
Results merge into --out, one entry per setting.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from sft_prompts import EVAL_PROMPTS  # noqa: E402

from baco import Collaboration, SamplingParams  # noqa: E402
from baco.evaluate.embeddings import default_embedder  # noqa: E402
from baco.models import HFCausalLM, SoloPair  # noqa: E402
from baco.models.embedded import ALIGNED_ALIAS, BASE_ALIAS  # noqa: E402

SETTINGS = {"aligned": (ALIGNED_ALIAS, "aligned"), "base-chat": (BASE_ALIAS, "aligned"),
            "base-qa": (BASE_ALIAS, "base")}


def distinct_2(texts: list[str]) -> float:
    grams = [g for t in texts for g in zip(t.split(), t.split()[1:])]
    return len(set(grams)) / len(grams) if grams else 0.0


def measure(samples, prompts: list[str]) -> dict:
    embed = default_embedder()
    by_prompt = {i: [s for s in samples if s.prompt_index == i] for i in range(len(prompts))}
    prompt_vectors = embed(prompts)
    on_topic, pairwise, distinct = [], [], []
    for i, group in by_prompt.items():
        vectors = embed([s.text for s in group])
        on_topic += list(vectors @ prompt_vectors[i])
        pairs = list(itertools.combinations(range(len(group)), 2))
        pairwise.append(float(np.mean([vectors[a] @ vectors[b] for a, b in pairs])))
        distinct.append(distinct_2([s.text for s in group]))
    return {
        "clean_end": round(float(np.mean([s.finish_reason == "stop" for s in samples])), 4),
        "mean_tokens": round(float(np.mean([s.num_tokens for s in samples])), 1),
        "prompt_response_cosine": round(float(np.mean(on_topic)), 4),
        "pairwise_cosine": round(float(np.mean(pairwise)), 4),
        "distinct_2": round(float(np.mean(distinct)), 4),
        "samples": len(samples),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--prompts", type=int, default=len(EVAL_PROMPTS))
    parser.add_argument("--out", type=Path, default=Path("docs/adapter_eval.json"))
    parser.add_argument("--adapter", default=ALIGNED_ALIAS,
                        help="adapter directory for the `aligned` setting (default: the committed one)")
    parser.add_argument("--samples-out", type=Path, default=None, help="also write the samples (JSONL)")
    args = parser.parse_args()
    prompts = EVAL_PROMPTS[: args.prompts]
    params = SamplingParams(temperature=1.0, max_new_tokens=args.max_new_tokens, seed=0)
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    for name in args.settings:
        model, reads = SETTINGS[name]
        model = args.adapter if name == "aligned" else model
        started = time.time()
        collab = Collaboration(SoloPair(HFCausalLM.from_pretrained(model), reads=reads))
        samples = collab.generate(prompts, router=reads, n=args.n, sampling=params, batch_size=100)
        results[name] = {**measure(samples, prompts), "seconds": round(time.time() - started, 1),
                         "examples": [s.text for s in samples if s.sample_index == 0][:4]}
        print(name, json.dumps({k: v for k, v in results[name].items() if k != "examples"}), flush=True)
        if args.samples_out:
            from baco.decode.records import write_jsonl

            with open(args.samples_out.with_suffix(f".{name}.jsonl"), "w", encoding="utf-8") as handle:
                write_jsonl(samples, handle)
    results["settings"] = {"prompts": len(prompts), "n": args.n, "temperature": 1.0,
                           "max_new_tokens": args.max_new_tokens, "seed": 0,
                           "command": "python " + " ".join(sys.argv)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
