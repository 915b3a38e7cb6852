"""Semantically distinct partitions and utility, NoveltyBench-style (Zhang et al. 2025).

`partition(prompt, responses, equivalence)` is greedy and order-dependent, not a transitive closure:
for each response i not yet in a class, open a new class and put into it every LATER unassigned
response j that is equivalent to i (the class's FIRST member). Class ids follow first occurrence.

The equivalence test is pluggable (`same(prompt, anchor, candidates) -> list[bool]`):

| test | equivalent when | threshold |
|---|---|---|
| `EmbeddingEquivalence` (default) | cosine of MiniLM embeddings >= t | 0.75 (docs/evaluation.md) |
| `ClassifierEquivalence` | P(label 1) of an HF sequence-pair classifier > t | 0.102 (NoveltyBench's DeBERTa) |
| `UnigramEquivalence` | ROUGE-1 F1 > t | 0.458 (NoveltyBench's `unigram`) |

Model-based tests first apply NoveltyBench's short-answer shortcut: when both answers have at
most 5 tokens, they are equivalent iff 2 |A & B| >= max(|A|, |B|) over their token sets
(tokens: see `short_answer_tokens`).
"""

from __future__ import annotations

import string
from collections import Counter
from typing import Protocol

import numpy as np

from baco.errors import ModelLoadError
from baco.evaluate.registry import register_metric
from baco.evaluate.tokens import has_cjk, words

SHORT_ANSWER_TOKENS = 5
EMBEDDING_THRESHOLD = 0.75
CLASSIFIER_THRESHOLD = 0.102
UNIGRAM_THRESHOLD = 0.458
PATIENCE = 0.8


class Equivalence(Protocol):
    name: str

    def same(self, prompt: str, anchor: str, candidates: list[str]) -> list[bool]: ...


def short_answer_tokens(text: str) -> list[str]:
    """NoveltyBench's tokens (lower-cased whitespace split) with two changes: punctuation around a word
    is dropped ("Kiwi!" = "kiwi"), and text in a CJK script, written without spaces, is split by `words`."""
    if has_cjk(text):
        return [t for t in words(text) if any(ch.isalnum() for ch in t)]
    stripped = (t.strip(string.punctuation + "“”‘’«»") for t in text.lower().split())
    return [t for t in stripped if t]


def short_answer_rule(a: str, b: str, max_tokens: int = SHORT_ANSWER_TOKENS) -> bool | None:
    """True/False when both answers are short (<= max_tokens tokens), else None (ask the model)."""
    ta, tb = short_answer_tokens(a), short_answer_tokens(b)
    longest = max(len(ta), len(tb))
    if longest > max_tokens:
        return None
    return 2 * len(set(ta) & set(tb)) >= longest


class _WithShortcut:
    """Apply the short-answer rule first; only the remaining pairs reach `_model_same`."""

    short_answer_tokens: int = SHORT_ANSWER_TOKENS

    def same(self, prompt: str, anchor: str, candidates: list[str]) -> list[bool]:
        verdicts = [short_answer_rule(anchor, c, self.short_answer_tokens) if self.short_answer_tokens else None
                    for c in candidates]
        ask = [i for i, v in enumerate(verdicts) if v is None]
        if ask:
            for i, v in zip(ask, self._model_same(prompt, anchor, [candidates[i] for i in ask])):
                verdicts[i] = bool(v)
        return verdicts

    def _model_same(self, prompt: str, anchor: str, candidates: list[str]) -> list[bool]:
        raise NotImplementedError


class EmbeddingEquivalence(_WithShortcut):
    """Equivalent when the cosine similarity of the two responses' embeddings is >= threshold."""

    def __init__(self, embedder, threshold: float = EMBEDDING_THRESHOLD,
                 short_answer_tokens: int = SHORT_ANSWER_TOKENS):
        self.embedder, self.threshold, self.short_answer_tokens = embedder, threshold, short_answer_tokens
        self.name = f"embedding>={threshold:g}"

    def _model_same(self, prompt, anchor, candidates):
        vectors = np.asarray(self.embedder([anchor, *candidates]), dtype=np.float64)
        return list(vectors[1:] @ vectors[0] >= self.threshold)


def rouge1_f(a: str, b: str) -> float:
    """ROUGE-1 F1 over word tokens (punctuation dropped, as rouge-score's default tokenizer does)."""
    ca = Counter(t for t in words(a) if any(ch.isalnum() for ch in t))
    cb = Counter(t for t in words(b) if any(ch.isalnum() for ch in t))
    overlap = sum((ca & cb).values())
    if overlap == 0:
        return 0.0
    return 2.0 * overlap / (sum(ca.values()) + sum(cb.values()))


class UnigramEquivalence:
    """Equivalent when ROUGE-1 F1 > threshold (NoveltyBench `--alg unigram`; no shortcut, no model)."""

    def __init__(self, threshold: float = UNIGRAM_THRESHOLD):
        self.threshold = threshold
        self.name = f"unigram>{threshold:g}"

    def same(self, prompt, anchor, candidates):
        return [rouge1_f(anchor, c) > self.threshold for c in candidates]


class ClassifierEquivalence(_WithShortcut):
    """Any HF sequence-pair classifier: P(positive_label | anchor, candidate) > threshold.

    Input as NoveltyBench builds it: each response truncated to `max_tokens` tokens, then the
    tokenizer's own pair template (e.g. [CLS] a [SEP] b [SEP] with token types 0/1); the prompt is
    not shown to the classifier. NoveltyBench's model is yimingzhang/deberta-v3-large-generation-similarity.
    """

    def __init__(self, model: str, threshold: float = CLASSIFIER_THRESHOLD, *, max_tokens: int = 128,
                 positive_label: int = 1, batch_size: int = 16, device: str = "auto",
                 short_answer_tokens: int = SHORT_ANSWER_TOKENS):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from baco.models.hf import resolve_device

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model)
            self.model = AutoModelForSequenceClassification.from_pretrained(model).eval()
        except Exception as error:  # noqa: BLE001
            raise ModelLoadError(f"could not load the equivalence classifier {model!r}: "
                                 f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error) else ''}"
                                 ) from error
        self.device = resolve_device(device)
        self.model.to(self.device)
        self.torch = torch
        self.threshold, self.max_tokens, self.positive_label = threshold, max_tokens, positive_label
        self.batch_size, self.short_answer_tokens = batch_size, short_answer_tokens
        self.name = f"classifier:{model}>{threshold:g}"

    def _pair(self, a: str, b: str) -> tuple[list[int], list[int]]:
        backend = self.tokenizer.backend_tokenizer
        first = backend.encode(a, add_special_tokens=False)
        second = backend.encode(b, add_special_tokens=False)
        first.truncate(self.max_tokens)
        second.truncate(self.max_tokens)
        if backend.post_processor is not None:
            merged = backend.post_processor.process(first, second, add_special_tokens=True)
            return merged.ids, merged.type_ids
        return first.ids + second.ids, [0] * len(first.ids) + [1] * len(second.ids)

    def probabilities(self, anchor: str, candidates: list[str]) -> list[float]:
        """P(positive_label) for each (anchor, candidate) pair, batched, right-padded."""
        torch = self.torch
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        out: list[float] = []
        for start in range(0, len(candidates), self.batch_size):
            pairs = [self._pair(anchor, c) for c in candidates[start:start + self.batch_size]]
            width = max(len(ids) for ids, _ in pairs)
            ids = torch.full((len(pairs), width), pad, dtype=torch.long)
            types = torch.zeros((len(pairs), width), dtype=torch.long)
            mask = torch.zeros((len(pairs), width), dtype=torch.long)
            for row, (pair_ids, pair_types) in enumerate(pairs):
                ids[row, :len(pair_ids)] = torch.tensor(pair_ids)
                types[row, :len(pair_types)] = torch.tensor(pair_types)
                mask[row, :len(pair_ids)] = 1
            inputs = {"input_ids": ids, "attention_mask": mask}
            if getattr(self.model.config, "type_vocab_size", 0) and self.model.config.type_vocab_size > 1:
                inputs["token_type_ids"] = types
            with torch.inference_mode():
                logits = self.model(**{k: v.to(self.device) for k, v in inputs.items()}).logits.float()
            if logits.shape[-1] == 1:
                probs = torch.sigmoid(logits[:, 0])
            else:
                probs = torch.softmax(logits, dim=-1)[:, self.positive_label]
            out += probs.cpu().tolist()
        return out

    def _model_same(self, prompt, anchor, candidates):
        return [p > self.threshold for p in self.probabilities(anchor, candidates)]


def partition(prompt: str, responses: list[str], equivalence: Equivalence) -> list[int]:
    """Class id of each response: greedy, each response compared with the first member of a class only."""
    classes = [-1] * len(responses)
    count = 0
    for i, anchor in enumerate(responses):
        if classes[i] >= 0:
            continue
        classes[i] = count
        rest = [j for j in range(i + 1, len(responses)) if classes[j] < 0]
        if rest:
            for j, same in zip(rest, equivalence.same(prompt, anchor, [responses[j] for j in rest])):
                if same:
                    classes[j] = count
        count += 1
    return classes


@register_metric("partitions", kind="diversity", higher_is_better=True, needs=("prompt", "partitioner"),
                 group="semantic", library="baco (NoveltyBench algorithm) + the equivalence test's model",
                 help="number of semantically distinct classes among the n responses (NoveltyBench 'distinct')")
def distinct_partitions(responses: list[str], *, prompt: str, partitioner) -> float | None:
    if len(responses) < 2:
        return None
    return float(max(partitioner(prompt, responses)) + 1)


def utility(classes: list[int], gains: list[float | None], patience: float = PATIENCE) -> float | None:
    """NoveltyBench utility: sum_i p^i g_i / sum_i p^i, where g_i is response i's quality gain if i is
    the first member of its class and 0 for a later duplicate (i = 0..n-1, patience p)."""
    if not classes:
        return None
    earned, seen = [], set()
    for cls, gain in zip(classes, gains):
        earned.append(0.0 if cls in seen or gain is None else float(gain))
        seen.add(cls)
    weights = patience ** np.arange(len(classes))
    return float(np.average(earned, weights=weights))


@register_metric("utility", kind="joint", higher_is_better=True, needs=("prompt", "partitioner", "gains", "patience"),
                 group="semantic", library="baco (NoveltyBench formula, numpy)",
                 help="NoveltyBench utility: quality gain of first members of classes only, weights 0.8^i")
def utility_metric(responses: list[str], *, prompt: str, partitioner, gains: list[float | None],
                   patience: float = PATIENCE) -> float | None:
    if not responses:
        return None
    return utility(partitioner(prompt, responses), gains, patience)
