"""One choice's text as its tokens arrive: pieces, stop strings, and the content that is safe to show.

The content follows `decode.records.final_text`: the decoded continuation (stop tokens left out), cut
before the first stop string (that ends past the text of the first `min_tokens` tokens), leading whitespace
removed. While tokens arrive, text that could still turn out to be the start of a stop string is held back (within
the first `min_tokens` tokens too: a stop string may begin there and end past them), and a token is released
together with the content it adds, so that the content of every token released joins to exactly the text shown.
Used by the server's streams and by `Collaboration.stream`; a token is a `Token` or any object with a
`token_id` and a `text` to fill in (`api.TokenEvent`).
"""

from __future__ import annotations

from dataclasses import dataclass

from baco.decode.records import PieceDecoder, stop_at


@dataclass
class Token:
    """A generated token as the server reports it."""

    token_id: int
    text: str  # the content this token adds ("" past a stop string, for a stop token, in leading whitespace)
    writer: str  # "base" | "aligned" | "mix"
    reason: str
    base_top1_prob: float
    logprob: float  # of the token under the distribution it was drawn from (temperature 1)
    top: list[tuple[int, float]] | None = None  # (token id, log-prob) of the most likely tokens there


class ChoiceText:
    """The stop-string and hold-back logic for one choice; `add` a token, then `release` what is safe."""

    def __init__(self, tokenizer, stop_ids: frozenset[int], stop_strings: tuple[str, ...], min_tokens: int = 0):
        self.pieces = PieceDecoder(tokenizer, stop_ids) if tokenizer is not None else None  # None: `add_piece` only
        self.stop_strings = tuple(s for s in stop_strings if s)
        self.min_tokens = min_tokens  # a stop string counts only where it ends past the text of this many tokens
        self.raw = ""  # the decoded continuation, stop strings and leading whitespace included
        self.tokens: list[Token] = []
        self.spans: list[tuple[int, int]] = []  # each token's piece in `raw`
        self.released = 0  # tokens[:released] have been handed out
        self.cut: int | None = None  # where the first stop string starts in `raw`

    def add(self, token: Token, *, last: bool) -> bool:
        """Append a token (its `text` is filled in here); True when a stop string has appeared."""
        return self.add_piece(token, self.pieces.add(token.token_id, last=last))

    def add_piece(self, token, piece: str) -> bool:
        """Append a token whose text is known (a cross-tokenizer span); True when a stop string has appeared."""
        start = len(self.raw)
        self.raw += piece
        self.tokens.append(token)
        self.spans.append((start, len(self.raw)))
        if self.cut is None and len(self.tokens) > self.min_tokens:
            self.cut = stop_at(self.raw, self.stop_strings, start)  # a new stop string must end in the new piece
        return self.cut is not None

    def _held_back(self) -> int:
        """Length of the longest end of `raw` that begins a stop string (it may still become one)."""
        for size in range(min(len(self.raw), max((len(s) for s in self.stop_strings), default=0)), 0, -1):
            if any(s.startswith(self.raw[-size:]) for s in self.stop_strings):
                return size
        return 0

    def release(self, *, final: bool) -> list[Token]:
        """The tokens whose content is now settled (all of them when `final`), each with its `text` set."""
        end = self.cut if self.cut is not None else len(self.raw)
        safe = end if final or self.cut is not None else len(self.raw) - self._held_back()
        lead = len(self.raw) - len(self.raw.lstrip())  # leading whitespace is not content
        out = []
        while self.released < len(self.tokens):
            start, stop = self.spans[self.released]
            if not final and stop > safe:
                break
            token = self.tokens[self.released]
            token.text = self.raw[max(start, lead):min(stop, end)]
            out.append(token)
            self.released += 1
        return out

    @property
    def content(self) -> str:
        """The text of the choice so far (final once `release(final=True)` has run)."""
        return "".join(token.text for token in self.tokens[: self.released])
