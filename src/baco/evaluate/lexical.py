"""Lexical diversity over the n responses to one prompt: n-gram counts, BLEU, ROUGE-L, gzip.

Every function takes the list of responses and returns a float, or None when the metric is
undefined: fewer than two responses, or no tokens at all (every response empty). Pairwise
similarities (ROUGE-L, n-gram kernel) count two empty responses as identical. Tokens: `tokens.words`.
"""

from __future__ import annotations

import gzip
import math
from itertools import combinations

import numpy as np

from baco.evaluate.registry import register_metric
from baco.evaluate.tokens import first_sentence, ngram_counts, ngrams, words

# Vocabulary size V for expectation-adjusted distinct: roughly an English word vocabulary.
EAD_VOCAB = 50_000
ENTROPY_ORDERS = (1, 2, 3)
NGRAM_VENDI_ORDERS = (1, 2, 3, 4)  # as vendi-score's ngram_vendi_score


def _comparable(responses: list[str]) -> bool:
    """Diversity needs at least two responses; with one there is nothing to compare."""
    return len(responses) >= 2


def distinct_n(responses: list[str], n: int) -> float | None:
    """Distinct-n (Li et al. 2016): unique n-grams / all n-grams, pooled over the responses."""
    counts = ngram_counts(responses, n)
    total = sum(counts.values())
    if not _comparable(responses) or total == 0:
        return None
    return len(counts) / total


for _n in (1, 2, 3):
    register_metric(f"distinct-{_n}", kind="diversity", higher_is_better=True, library="baco (Python counters)",
                    help=f"unique {_n}-grams / all {_n}-grams, pooled over a prompt's responses")(
        lambda responses, _n=_n: distinct_n(responses, _n))


@register_metric("ead-distinct", kind="diversity", higher_is_better=True, library="baco (numpy)",
                 help=f"expectation-adjusted distinct-1 (Liu et al. 2022), vocabulary V={EAD_VOCAB}")
def ead_distinct(responses: list[str], vocab_size: int = EAD_VOCAB) -> float | None:
    """Unique tokens / their expected number if C tokens were drawn uniformly from V words.

    EAD = N_unique / (V * (1 - ((V - 1) / V) ** C)); unlike distinct-1 it does not fall just because
    the texts are longer.
    """
    counts = ngram_counts(responses, 1)
    total = sum(counts.values())
    if not _comparable(responses) or total == 0:
        return None
    expected = vocab_size * -math.expm1(total * math.log1p(-1.0 / vocab_size))
    return len(counts) / expected


@register_metric("ngram-entropy", kind="diversity", higher_is_better=True, library="baco (numpy)",
                 help="Shannon entropy (bits) of the pooled n-gram distribution, mean over n = 1, 2, 3")
def ngram_entropy(responses: list[str], orders: tuple[int, ...] = ENTROPY_ORDERS) -> float | None:
    """Mean over orders n of H_n = -sum p(g) log2 p(g) over pooled n-grams g (orders without n-grams skipped)."""
    if not _comparable(responses):
        return None
    entropies = []
    for n in orders:
        counts = np.array(list(ngram_counts(responses, n).values()), dtype=np.float64)
        if counts.size:
            p = counts / counts.sum()
            entropies.append(float(-(p * np.log2(p)).sum()) + 0.0)  # + 0.0: no -0.0
    return float(np.mean(entropies)) if entropies else None


@register_metric("self-bleu", kind="diversity", higher_is_better=False, library="sacrebleu",
                 help="mean sentence BLEU (0-1) of each response against all the others as references")
def self_bleu(responses: list[str]) -> float | None:
    """Self-BLEU (Zhu et al. 2018): mean_i BLEU(r_i; {r_j, j != i}) / 100.

    sacrebleu's `sentence_bleu` (exp smoothing, effective order) on baco's tokens joined by spaces
    with `tokenize="none"`, so every language is split the same way as in the other metrics.
    """
    from sacrebleu.metrics import BLEU

    joined = [" ".join(words(r)) for r in responses]
    if not _comparable(responses) or not any(joined):
        return None
    bleu = BLEU(tokenize="none", effective_order=True)
    scores = [bleu.sentence_score(hyp, joined[:i] + joined[i + 1:]).score for i, hyp in enumerate(joined)]
    return float(np.mean(scores)) / 100.0


@register_metric("compression-ratio", kind="diversity", higher_is_better=False, library="gzip (stdlib)",
                 help="bytes of the responses joined by newlines / bytes after gzip (Shaib et al. 2024)")
def compression_ratio(responses: list[str]) -> float | None:
    """Raw size / gzip size of the concatenated responses: repeated text compresses well (higher ratio)."""
    raw = "\n".join(responses).encode("utf-8")
    if not _comparable(responses) or not raw.strip():
        return None
    return len(raw) / len(gzip.compress(raw, compresslevel=9, mtime=0))


def lcs_length(a: tuple[str, ...], b: tuple[str, ...]) -> int:
    """Length of the longest common subsequence of two token sequences, bit-parallel (Hyyrö 2004).

    One machine-independent big-integer pass per token of b: O(len(b)) big-int operations instead
    of the O(len(a) * len(b)) table that rouge-score fills in pure Python.
    """
    if not a or not b:
        return 0
    masks: dict[str, int] = {}
    for i, token in enumerate(a):
        masks[token] = masks.get(token, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for token in b:
        u = v & masks.get(token, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - v.bit_count()


def rouge_l(a: str, b: str) -> float:
    """ROUGE-L F1 = 2 LCS / (|a| + |b|) on baco's tokens; two empty texts are identical (1.0)."""
    ta, tb = words(a), words(b)
    if not ta and not tb:
        return 1.0
    return 2.0 * lcs_length(ta, tb) / (len(ta) + len(tb))


@register_metric("homogenization", kind="diversity", higher_is_better=False,
                 library="baco (bit-parallel LCS; equal to rouge-score's ROUGE-L F1)",
                 help="mean ROUGE-L F1 over all pairs of responses (Padmakumar & He 2024)")
def homogenization(responses: list[str]) -> float | None:
    if not _comparable(responses):
        return None
    return float(np.mean([rouge_l(a, b) for a, b in combinations(responses, 2)]))


def ngram_kernel(responses: list[str], orders: tuple[int, ...] = NGRAM_VENDI_ORDERS) -> np.ndarray:
    """Mean over orders n of the cosine similarity between n-gram count vectors.

    As vendi-score's `ngram_vendi_score`, except for texts with no n-grams of an order (shorter than n
    tokens): such a text is similar to itself (1), and to another such text 1 if they have the same
    tokens, else 0. Two empty answers are the same answer; "Paris" and "London" are not.
    """
    size = len(responses)
    kernel = np.zeros((size, size))
    for n in orders:
        grams = [ngrams(words(r), n) for r in responses]
        index: dict[tuple[str, ...], int] = {}
        rows, cols = [], []
        for row, gs in enumerate(grams):
            for g in gs:
                rows.append(row)
                cols.append(index.setdefault(g, len(index)))
        counts = np.zeros((size, max(len(index), 1)))
        np.add.at(counts, (rows, cols), 1.0)
        norms = np.linalg.norm(counts, axis=1)
        empty = norms == 0
        unit = counts / np.where(empty, 1.0, norms)[:, None]
        k = unit @ unit.T
        short = np.flatnonzero(empty)
        for i in short:
            for j in short:
                k[i, j] = float(words(responses[i]) == words(responses[j]))
        kernel += k
    return kernel / len(orders)


@register_metric("ngram-vendi", kind="diversity", higher_is_better=True, library="baco (numpy/scipy Vendi)",
                 help="Vendi score (Friedman & Dieng 2023) with an n-gram cosine kernel, n = 1..4; 1 to n")
def ngram_vendi(responses: list[str]) -> float | None:
    from baco.evaluate.semantic import vendi_score

    if not _comparable(responses):
        return None
    return vendi_score(ngram_kernel(responses))


@register_metric("first-sentences", kind="diversity", higher_is_better=True, library="baco (regex)",
                 help="share of distinct first sentences (lower case, spaces and end mark normalised)")
def unique_first_sentences(responses: list[str]) -> float | None:
    if not _comparable(responses):
        return None
    return len({first_sentence(r) for r in responses}) / len(responses)
