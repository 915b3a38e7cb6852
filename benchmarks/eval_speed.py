"""How long `baco eval` takes for the lexical and embedding metrics on a typical sweep point.

    python benchmarks/eval_speed.py [--prompts 100] [--n 10] [--words 150]

Writes a synthetic samples JSONL (prompts x n responses of `words` English words drawn Zipf-like
from 5,000 whole words of MiniLM's vocabulary, with punctuation, fixed seed), then times, in one process:
reading + grouping, the MiniLM embedding pass (every distinct response and prompt once, batched),
each lexical metric, each embedding metric, and the whole `--metrics default` run from a cold start.
Results go to docs/benchmarks.md ("Evaluation speed").
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

from baco.evaluate.io import group_records, read_records
from baco.evaluate.registry import list_metrics, resolve_metrics
from baco.evaluate.resources import EvalOptions, Resources
from baco.evaluate.runner import evaluate_files

def english_words(tokenizer, size: int = 5000) -> list[str]:
    """Whole English words of MiniLM's vocabulary (one wordpiece each), in the vocabulary's order."""
    vocab = tokenizer.get_vocab()
    whole = [w for w in vocab if w.isascii() and w.isalpha() and len(w) > 1]
    return sorted(whole, key=vocab.get)[:size]


def synthetic_samples(path: Path, vocab: list[str], prompts: int, n: int, words: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    weights = [1.0 / (rank + 1) for rank in range(len(vocab))]  # Zipf
    with path.open("w", encoding="utf-8") as handle:
        for p in range(prompts):
            prompt = f"Question {p}: " + " ".join(rng.choices(vocab, weights, k=12)) + "?"
            for _ in range(n):
                tokens = rng.choices(vocab, weights, k=words)
                text = " ".join(t + ("." if rng.random() < 0.07 else "," if rng.random() < 0.05 else "")
                                for t in tokens)
                row = {"prompt": prompt, "response": text[0].upper() + text[1:], "method": f"m:{p % 2}"}
                handle.write(json.dumps(row) + "\n")


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--words", type=int, default=150)
    parser.add_argument("--embedding-dtype", default="auto", help="auto | float32 | bfloat16")
    args = parser.parse_args()
    import torch
    import transformers

    from baco.evaluate.tokens import words

    with tempfile.TemporaryDirectory() as tmp:
        options = EvalOptions(embedding_dtype=args.embedding_dtype)
        resources = Resources(options)
        embedder, load_s = timed(lambda: resources.get("embedder"))
        path = Path(tmp) / "samples.jsonl"
        synthetic_samples(path, english_words(embedder.tokenizer), args.prompts, args.n, args.words)
        (records, _), read_s = timed(lambda: read_records([path]))
        groups = group_records(records)
        tokens = sum(len(words(r.response)) for r in records)
        pieces = sum(len(embedder.tokenizer(r.response)["input_ids"]) for r in records[:200]) / 200
        print(f"# {len(groups)} prompt groups x {args.n} samples, {tokens / len(records):.0f} word/punctuation tokens "
              f"and {pieces:.0f} MiniLM wordpieces per response; embeddings in {embedder.dtype}; "
              f"torch {torch.__version__}, transformers {transformers.__version__}, "
              f"{torch.get_num_threads()} threads, {os.cpu_count()} cores")
        print(f"{'step':<26} {'seconds':>8}")
        print(f"{'load MiniLM':<26} {load_s:8.2f}")
        print(f"{'read + group JSONL':<26} {read_s:8.2f}")
        texts = sorted({r.response for r in records} | {r.prompt for r in records}, key=len)
        _, embed_s = timed(lambda: [embedder(texts[i:i + 256]) for i in range(0, len(texts), 256)])
        print(f"{'embed ' + str(len(texts)) + ' texts':<26} {embed_s:8.2f}")

        total = read_s + load_s + embed_s
        for spec in list_metrics("diversity"):
            needs = [n for n in spec.needs if n != "prompt"]

            def run(spec=spec, needs=needs):
                for (*_, prompt), rows in groups.items():
                    kwargs = {n: resources.get(n) for n in needs}
                    if "prompt" in spec.needs:
                        kwargs["prompt"] = prompt
                    spec.fn([r.response for r in rows], **kwargs)

            _, seconds = timed(run)
            total += seconds
            print(f"{spec.name + ' (' + spec.group + ')':<26} {seconds:8.2f}")
        print(f"{'sum of the steps above':<26} {total:8.2f}")

        metrics = resolve_metrics("default")
        _, cold_s = timed(lambda: evaluate_files([path], "default", EvalOptions(embedding_dtype=args.embedding_dtype)))
        print(f"{'baco eval --metrics default':<26} {cold_s:8.2f}   (cold: new embedder; "
              f"{len(metrics)} metrics: 13 diversity, relevance, utility; Pareto)")


if __name__ == "__main__":
    main()
