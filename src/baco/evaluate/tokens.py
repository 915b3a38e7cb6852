"""Words, n-grams and first sentences for the lexical metrics: one tokenizer for every language.

Words are lower-cased runs of letters/digits (`\\w+`), each punctuation mark is a token of its own,
and every CJK ideograph or kana is a token of its own (those scripts put no spaces between words).
Hangul, Cyrillic, Greek, Arabic ... are space-separated and come out as words. Combining marks
(Devanagari vowel signs and viramas, Arabic harakat, a decomposed accent) belong to the word they
follow: Python's `\\w` does not match them, and without this "नमस्ते" would fall apart into pieces.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from functools import lru_cache

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
# Unicode combining marks (categories Mn, Mc, Me): all below U+20000 but the variation selectors E0100-E01EF
_MARKS = "".join(re.escape(chr(c)) for c in range(0x20000) if unicodedata.category(chr(c))[0] == "M") + \
    "\U000e0100-\U000e01ef"
_TOKEN = re.compile(rf"[{_CJK}]|[^\W{_CJK}](?:[^\W{_CJK}]|[{_MARKS}])*|[^\w\s]")
# a sentence ends at . ! ? (or their CJK forms) followed by space/end, or at a line break
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[。！？])|\n+")


@lru_cache(maxsize=65536)
def words(text: str) -> tuple[str, ...]:
    """Lower-cased word and punctuation tokens of `text` (cached: every lexical metric reads them)."""
    return tuple(_TOKEN.findall(text.lower()))


def ngrams(tokens: tuple[str, ...], n: int) -> list[tuple[str, ...]]:
    return [tokens[i:i + n] for i in range(len(tokens) - n + 1)]


def ngram_counts(texts: list[str], n: int) -> Counter:
    """n-gram counts pooled over texts (n-grams never cross from one text into the next)."""
    counts: Counter = Counter()
    for text in texts:
        counts.update(ngrams(words(text), n))
    return counts


def first_sentence(text: str) -> str:
    """The first sentence, normalised for comparison: lower case, single spaces, no trailing punctuation."""
    stripped = text.strip()
    head = _SENTENCE_END.split(stripped, maxsplit=1)[0] if stripped else ""
    return " ".join(head.lower().split()).rstrip(".!?。！？ ")
