"""Words, n-grams and first sentences for the lexical metrics: one tokenizer for every language.

Words are lower-cased runs of letters/digits (`\\w+`), each punctuation mark is a token of its own,
and every CJK ideograph or kana is a token of its own (those scripts put no spaces between words), as is
every letter of Thai, Lao, Khmer and Myanmar with the marks written on it (spaces there end phrases, not
words: a whole Thai sentence would otherwise be one "word");
an emoji is one token with its variation selector, skin tone and zero-width-joined parts.
Hangul, Cyrillic, Greek, Arabic ... are space-separated and come out as words. Combining marks
(Devanagari vowel signs and viramas, Arabic harakat, a decomposed accent) belong to the word they
follow: Python's `\\w` does not match them, and without this "नमस्ते" would fall apart into pieces.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from functools import lru_cache

# kana, CJK ideographs (with the extension planes) and half-width katakana: one token each
_CJK = "\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f\U00020000-\U0003134f"
# Thai, Lao, Myanmar, Khmer: also written without spaces between words; one token per letter and its marks (a word
# splitter needs a dictionary per language; letters, like CJK characters, keep n-gram metrics comparable)
_UNSPACED = "\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff"
# Unicode combining marks (categories Mn, Mc, Me): all below U+20000 but the variation selectors E0100-E01EF
_MARKS = "".join(re.escape(chr(c)) for c in range(0x20000) if unicodedata.category(chr(c))[0] == "M") + \
    "\U000e0100-\U000e01ef"
# what joins an emoji into one picture: combining marks (the emoji variation selector U+FE0F among them),
# skin tones, and a zero-width joiner with the symbol after it (👨‍👩‍👧)
_SYMBOL = rf"[^\w\s](?:[{_MARKS}\U0001f3fb-\U0001f3ff]|\u200d[^\w\s])*"
# a ZERO WIDTH NON-JOINER between two letters is inside one word (Persian "می‌خواهم", Indic scripts)
_TOKEN = re.compile(rf"[{_CJK}]|[{_UNSPACED}][{_MARKS}]*"
                    rf"|[^\W{_CJK}{_UNSPACED}](?:[^\W{_CJK}{_UNSPACED}]|[{_MARKS}]|\u200c(?=[^\W{_CJK}{_UNSPACED}]))*"
                    rf"|{_SYMBOL}")
_CJK_CHAR = re.compile(f"[{_CJK}{_UNSPACED}]")
# a sentence ends at . ! ? (or their CJK forms) followed by space/end, or at a line break
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[。！？])|\n+")


@lru_cache(maxsize=65536)
def words(text: str) -> tuple[str, ...]:
    """Lower-cased word and punctuation tokens of `text` (cached: every lexical metric reads them)."""
    return tuple(_TOKEN.findall(text.lower()))


def has_cjk(text: str) -> bool:
    """Whether `text` holds a CJK ideograph or kana, or Thai, Lao, Khmer or Myanmar (scripts written without spaces
    between words)."""
    return _CJK_CHAR.search(text) is not None


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
