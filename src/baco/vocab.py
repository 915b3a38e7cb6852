"""The shared vocabulary of a base/aligned pair: token texts, word classes, and the compatibility check.

Token-level routing needs one vocabulary: token id 17 must mean the same string to both models.
`check_compatible` enforces that; `TokenTable` holds per-token facts that routers and the
word-boundary rule read (is it punctuation? a function word? does it continue a word?).
"""

from __future__ import annotations

import functools
import re
import weakref
import unicodedata
from dataclasses import dataclass, replace
from typing import Sequence

import torch

from baco.errors import TokenizerMismatchError

# Closed-class English words (articles, pronouns, prepositions, conjunctions, auxiliaries,
# determiners, common adverbial particles). FC routes these to the aligned model.
FUNCTION_WORDS = frozenset(
    """
    a an the this that these those my your his her its our their mine yours hers ours theirs
    i me we us you he him she it they them myself yourself himself herself itself ourselves themselves
    who whom whose which what where when why how whoever whatever
    and or but nor so yet for if then than because although though while unless until since whether
    as at by from in into of off on onto out over to up upon with within without about above across
    after against along among around before behind below beneath beside between beyond down during
    except inside near outside past through throughout toward towards under underneath via
    am is are was were be been being have has had having do does did doing done
    will would shall should can could may might must ought
    not no yes all any both each either every few many more most much neither none other some such
    own same very too also just only even still here there now again once ever never
    's 't 'll 've 're 'd 'm
    """.split()
)

# Added tokens that are control tokens in all but name (Gemma marks <start_of_image> as not special; Qwen2.5 its
# <|fim_prefix|>, <|repo_name|>, <|box_start|> ...: the <|...|> shape of ChatML-style control tokens).
_CONTROL_LIKE = re.compile(r"^([<\[](unused\d+|(start|end)_of_\w+|image\w*|audio\w*|video\w*|multimodal)[>\]]"
                           r"|<\|[^|<>\s]+\|>)$")
_LIST_MARKER = re.compile(r"^(\d+[.)]|[a-zA-Z][.)]|[-*+•])$")


def _is_cjk(char: str) -> bool:
    return unicodedata.name(char, "").startswith(("CJK", "HIRAGANA", "KATAKANA", "HANGUL"))


# Characters that modify the one before them and so take its class in the word rule, rather than being word
# characters themselves: the variation selectors (an emoji's text or picture form, a CJK ideograph's variant; combining
# marks by category), ZERO WIDTH JOINER (the emoji sequences, an Indic conjunct's half form; a format character) and
# ZERO WIDTH NON-JOINER (inside Persian words, "می‌خواهم", and Indic ones: it keeps two letters of one word apart in
# writing, so the word goes on). "❤" + VS16 is no word, "a" + VS16 still is.
MODIFIERS = frozenset(chr(c) for c in (*range(0xFE00, 0xFE10), *range(0xE0100, 0xE01F0), 0x200D, 0x200C))


@functools.lru_cache(maxsize=65536)  # asked twice per token of a 262k vocabulary, of far fewer distinct characters
def is_word_char(char: str) -> bool:
    """Letters, digits and combining marks (an accent written as a character of its own, a Devanagari vowel sign or
    virama) form words; each CJK character counts as a word of its own. A modifier (`MODIFIERS`) is none: it takes
    the class of the character before it (`ends_word`, `may_continue_word`)."""
    return (char.isalnum() or unicodedata.category(char)[0] == "M") and not _is_cjk(char) and char not in MODIFIERS


def ends_word(text: str) -> bool:
    """Whether `text` ends in a word character, its trailing modifiers read as the character they modify ("a\ufe0f"
    does, "❤\ufe0f" does not); False for a text of modifiers only (or none), whose character is not in it. Reads
    only the text's tail: the cross-tokenizer loop asks it of the whole text at every character."""
    for char in reversed(text):
        if char not in MODIFIERS:
            return is_word_char(char)
    return False


def may_continue_word(text: str) -> bool:
    """Whether `text`, written right after a word character, continues that word: it starts with a word character
    or with a modifier (of that word's last character)."""
    return bool(text) and (text[0] in MODIFIERS or is_word_char(text[0]))


def is_punct_or_format(text: str) -> bool:
    """Punctuation, symbols, whitespace (newlines, indentation) and list markers such as `1.` or `-`."""
    stripped = text.strip()
    if not stripped:
        return bool(text)  # whitespace-only tokens are formatting; the empty string is not
    if _LIST_MARKER.match(stripped):
        return True
    return all(unicodedata.category(c)[0] in "PSZ" for c in stripped)


@dataclass
class TokenTable:
    """Per-token facts over one vocabulary of size `size` (ids beyond the tokenizer are padding rows)."""

    texts: list[str]
    is_punct: torch.Tensor  # (V,) bool: punctuation / formatting / stop tokens
    is_function_word: torch.Tensor  # (V,) bool: starts a word that is a closed-class word (" the")
    is_function_text: torch.Tensor  # (V,) bool: a closed-class word, with or without its leading space ("The")
    continues_word: torch.Tensor  # (V,) bool: text starts with a word character (no space, no punctuation)
    ends_word_char: torch.Tensor  # (V,) bool: text ends with a word character
    allowed: torch.Tensor  # (V,) bool: may be sampled (not a control token, not a padding row)
    stop_ids: frozenset[int]

    @property
    def size(self) -> int:
        return len(self.texts)

    def mid_word(self, previous: torch.Tensor) -> torch.Tensor:
        """(B,) bool: each row's last token (`previous`, -1: none yet) ends in a word character, so a token that
        starts with one would continue that word ("drag" + "on"); after a space, punctuation, a line break or
        nothing, it starts a new one."""
        return (previous >= 0) & self.ends_word_char[previous.clamp(min=0)]

    def to(self, device: torch.device | str) -> "TokenTable":
        """The same table with its tensors on `device` (where the models' logits live)."""
        move = {name: getattr(self, name).to(device)
                for name in ("is_punct", "is_function_word", "is_function_text", "continues_word", "ends_word_char",
                             "allowed")}
        return replace(self, **move)

    @classmethod
    def from_texts(
        cls, texts: Sequence[str], *, control_ids: Sequence[int] = (), stop_ids: Sequence[int] = ()
    ) -> "TokenTable":
        """Build the table from each token's decoded text. Control tokens are masked, stops stay allowed."""
        texts = list(texts)
        size = len(texts)
        stops = frozenset(int(i) for i in stop_ids if 0 <= int(i) < size)
        controls = {int(i) for i in control_ids if 0 <= int(i) < size} - stops
        punct, function, function_text, continues, ends = ([False] * size for _ in range(5))
        for i, text in enumerate(texts):
            if i in controls or i in stops:
                punct[i] = i in stops  # the end-of-turn decision is "formatting"
                continue
            if "\ufffd" in text:
                # a piece of a multi-byte character: never a word boundary, never punctuation
                continues[i] = ends[i] = True
                continue
            punct[i] = is_punct_or_format(text)
            continues[i] = may_continue_word(text)
            ends[i] = ends_word(text)  # a token of modifiers only: False (what it modifies is in the token before:
            # almost always an emoji, a symbol or a CJK ideograph, none of them a word character)
            function_text[i] = bool(text) and text.strip().lower() in FUNCTION_WORDS
            function[i] = function_text[i] and not continues[i]
        allowed = [i not in controls for i in range(size)]
        as_tensor = lambda values: torch.tensor(values, dtype=torch.bool)  # noqa: E731
        return cls(
            texts=texts,
            is_punct=as_tensor(punct),
            is_function_word=as_tensor(function),
            is_function_text=as_tensor(function_text),
            continues_word=as_tensor(continues),
            ends_word_char=as_tensor(ends),
            allowed=as_tensor(allowed),
            stop_ids=stops,
        )


def token_texts(tokenizer, size: int | None = None) -> list[str]:
    """The text each token id adds to a decoded text (ids past the tokenizer, i.e. padding rows, get '').

    That is the token decoded alone, except for tokenizers whose decoder strips the text's first space
    (Llama-2, Mistral v0.1, TinyLlama: `Strip` or a Metaspace decoder with a prepended space): there "▁the"
    alone decodes to "the", which would read as the middle of a word (the word rule, FC's function words, stop
    strings). Those are decoded after an anchor token and the anchor's text cut off: " the"."""
    n = len(tokenizer)
    texts = _decode_each(tokenizer, [[i] for i in range(n)])
    anchor = _strip_anchor(tokenizer)
    if anchor is not None:
        head = tokenizer.decode([anchor], skip_special_tokens=False)
        joined = _decode_each(tokenizer, [[anchor, i] for i in range(n)])
        texts = [both[len(head):] if both.startswith(head) else alone for both, alone in zip(joined, texts)]
    size = n if size is None else size
    return (texts + [""] * size)[:size]


def _decode_each(tokenizer, sequences: list[list[int]]) -> list[str]:
    """`tokenizer.batch_decode(sequences)` (special tokens kept). A fast tokenizer whose decoding is transformers'
    own (no subclass override, no clean-up of spaces) is decoded by its Rust backend directly: the same texts,
    3x faster over a 262k vocabulary."""
    try:
        from transformers.tokenization_utils_tokenizers import TokenizersBackend
    except ImportError:  # (another transformers layout)
        TokenizersBackend = None  # noqa: N806
    kind = type(tokenizer)
    if (TokenizersBackend is not None and isinstance(tokenizer, TokenizersBackend)
            and all(getattr(kind, name) is getattr(TokenizersBackend, name) for name in ("_decode", "decode",
                                                                                          "batch_decode"))
            and not getattr(tokenizer, "clean_up_tokenization_spaces", False)):
        return tokenizer.backend_tokenizer.decode_batch(sequences, skip_special_tokens=False)
    return tokenizer.batch_decode(sequences, skip_special_tokens=False)


def continuation_decoder(tokenizer):
    """`decode(ids)`: the text that token ids add after a prompt (special tokens skipped), as `token_texts` reads
    each token.

    That is `tokenizer.decode`, except for tokenizers whose decoder strips the text's first space (Llama-2,
    Mistral, Phi-3: see `token_texts`), where a continuation starting with "▁the" would read "the", so that a
    stop string " the" the engine found in the token texts would not be found in the decoded text. Those are
    decoded after an anchor token and the anchor's text cut off."""
    anchor = _strip_anchor(tokenizer)

    def plain(ids) -> str:
        return tokenizer.decode(list(ids), skip_special_tokens=True)

    if anchor is None:
        return plain
    head = tokenizer.decode([anchor], skip_special_tokens=True)

    def anchored(ids) -> str:
        both = tokenizer.decode([anchor, *ids], skip_special_tokens=True)
        return both[len(head):] if both.startswith(head) else plain(ids)
    return anchored


_ANCHORS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # tokenizer -> its anchor (or None)


def _strip_anchor(tokenizer) -> int | None:
    """A plain token to decode others after, if decoding tokens one by one loses the spaces between words
    (probed once per tokenizer: every sample's text and every streamed row ask)."""
    try:
        return _ANCHORS[tokenizer]
    except (KeyError, TypeError):  # (TypeError: an object that cannot be weakly referenced)
        pass
    ids = tokenizer("a b", add_special_tokens=False)["input_ids"]
    alone = "".join(tokenizer.batch_decode([[i] for i in ids], skip_special_tokens=False))
    anchor = ids[0] if ids and len(alone) < len(tokenizer.decode(ids, skip_special_tokens=False)) else None
    try:
        _ANCHORS[tokenizer] = anchor
    except TypeError:
        pass
    return anchor


def control_token_ids(tokenizer) -> set[int]:
    """Special tokens (`<bos>`, `<start_of_turn>`, `<unused3>` ...) and control-like added tokens
    (`<start_of_image>`, `[multimodal]`): never sampled, except the stop tokens."""
    ids = set(getattr(tokenizer, "all_special_ids", []))
    for token_id, added in getattr(tokenizer, "added_tokens_decoder", {}).items():
        if getattr(added, "special", False) or _CONTROL_LIKE.match(str(added)):
            ids.add(int(token_id))
    return ids


def check_compatible(base_tokenizer, aligned_tokenizer, *, max_report: int = 5) -> int:
    """Check that two tokenizers give every shared id the same string; return the shared size.

    Tolerated: extra ids at the end of one tokenizer (e.g. chat tokens added to the aligned
    model), and differences between two control tokens (e.g. a reserved token renamed to a chat
    token), because control tokens are never sampled. Anything else raises
    `TokenizerMismatchError` naming the first mismatching ids.
    """
    shared = min(len(base_tokenizer), len(aligned_tokenizer))
    if base_tokenizer is aligned_tokenizer:  # one object (`load_tokenizers`: one source)
        return shared
    base_tokens = base_tokenizer.convert_ids_to_tokens(list(range(shared)))
    aligned_tokens = aligned_tokenizer.convert_ids_to_tokens(list(range(shared)))
    controls = control_token_ids(base_tokenizer) | control_token_ids(aligned_tokenizer)
    mismatches = [
        (i, b, a)
        for i, (b, a) in enumerate(zip(base_tokens, aligned_tokens))
        if b != a and i not in controls
    ]
    if mismatches:
        shown = "; ".join(f"id {i}: base {b!r} vs aligned {a!r}" for i, b, a in mismatches[:max_report])
        detail = f"base and aligned tokenizers disagree on {len(mismatches)} of {shared} token ids (first: {shown})"
        raise TokenizerMismatchError(
            f"{detail}. Token-level routing needs one shared vocabulary: use a base model and "
            f"its own aligned counterpart (same family), or a cross-tokenizer method.", detail)
    return shared
