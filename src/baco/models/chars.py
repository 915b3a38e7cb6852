"""A model's next-token distribution seen one byte at a time: the character view of cross-tokenizer pairs.

Two models with different tokenizers cannot compare token ids, but both can say how likely each next
*byte* of text is. For one model that has committed the tokens t_1..t_n to its KV cache and holds a
pending byte string s (text already committed to the shared output that is only the start of its next
token), the next byte b has probability

    P(b) = [ sum of p(t) over tokens t whose bytes start with s + b
             + p_end * P_after(b) ] / Z

where p_end is the mass of the tokens whose bytes are exactly s (the token could end here), P_after is
the first-byte distribution of the model after committing that token (a one-token lookahead forward),
and Z is the mass of every token consistent with s. The end-of-text event (a stop token) is class 256.
A model that writes draws the next byte by first choosing "continue the token with byte b" or "the
token ends here" (`draw`): exactly its own token distribution, so with all the weight on one model a
cross-tokenizer method reproduces that model (tested), and the lookahead forward is run only when a
token really ends. A model that follows text the other one wrote takes it by the longest match
(`advance`), re-reading its pending bytes if the text leaves every token it could be in.

Bytes, not characters, are the unit: byte-fallback tokens (`<0xE6>`) and byte-level BPE pieces of a
multi-byte character then need no special case, and for one model a character's probability is the
product of its bytes' (chain rule). Spans of the output are still whole characters (decode/crossloop).

Cost: the vocabulary is sorted once by its byte strings, so the tokens starting with s are one
contiguous range found by bisection; the marginal is a scatter-add over that range, a tensor op,
never per-token Python. The sampling knobs (penalties over the model's own tokens, temperature, top-k,
top-p, min-p) apply to each token distribution when it is computed, as in the same-tokenizer path; when
the shared text leaves a model's filtered support (the other model wrote it), that model follows it with
its temperature-1 distribution. Where the full marginal is needed (UniTE, `marginal`), an end branch holding less than
END_FLOOR of the consistent mass is dropped, to skip a lookahead forward it would need.
"""

from __future__ import annotations

import bisect
import json
import math
import random
import re
from dataclasses import dataclass, field

import torch

from baco.decode.sampling import MIN_TEMPERATURE, RowKnobs, SamplingParams, penalise
from baco.errors import BacoError, TokenizerMismatchError
from baco.models.hf import HFCausalLM, HFSession
from baco.vocab import FUNCTION_WORDS, control_token_ids, is_punct_or_format

STOP = 256  # the end-of-text class after the 256 byte values
OTHER = 257  # masked tokens (control tokens, padding rows, tokens with no text): never drawn
END_FLOOR = 1e-3
_BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


class UnrepresentableText(BacoError):
    """A model's vocabulary has no token that can continue the shared text."""


def _gpt2_byte_alphabet() -> dict[str, int]:
    """Byte-level BPE writes byte v as one printable character: itself when printable latin-1, else chr(256 + k)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shown = {value: chr(value) for value in printable}
    extra = 0
    for value in range(256):
        if value not in shown:
            shown[value] = chr(256 + extra)
            extra += 1
    return {char: value for value, char in shown.items()}


def _decoder_kinds(tokenizer) -> set[str]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return set()
    kinds: set[str] = set()

    def walk(node):
        if isinstance(node, dict):
            if "type" in node:
                kinds.add(node["type"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(backend.to_str()).get("decoder"))
    return kinds


def token_bytes(tokenizer, size: int) -> list[bytes | None]:
    """The UTF-8 bytes each token id writes (None for ids past the tokenizer: padding rows).

    Byte-level BPE (GPT-2, SmolLM, Llama-3): each character of a piece stands for one byte.
    SentencePiece-style (Gemma, Llama-2): `▁` is a space and `<0xNN>` a byte (byte fallback).
    Added tokens are their literal text. Other tokenizers: the token decoded on its own.
    """
    return _read_tokens(tokenizer, size)[0]


def byte_fallback_ids(tokenizer) -> set[int]:
    """The `<0xNN>` byte tokens of a SentencePiece-style tokenizer with byte fallback. Their bytes duplicate
    ordinary pieces (Gemma: `<0x41>` and `A`); the tokenizer writes the ordinary piece, so that one is fed."""
    return _read_tokens(tokenizer, len(tokenizer))[1]


def _read_tokens(tokenizer, size: int) -> tuple[list[bytes | None], set[int]]:
    """`token_bytes` and `byte_fallback_ids` in one pass over the vocabulary (reading the decoder's kinds parses
    the whole tokenizer description: over a second for Gemma's 262k tokens)."""
    kinds = _decoder_kinds(tokenizer)
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    added = {int(i): str(t) for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items()}
    alphabet = _gpt2_byte_alphabet() if "ByteLevel" in kinds else None
    sentencepiece = bool(kinds & {"Metaspace", "Replace", "ByteFallback"})
    out: list[bytes | None] = []
    fallback: set[int] = set()
    for token_id, piece in enumerate(pieces):
        if token_id in added or piece is None:
            out.append(added.get(token_id, "").encode("utf-8"))
        elif alphabet is not None and all(c in alphabet for c in piece):
            out.append(bytes(alphabet[c] for c in piece))
        elif sentencepiece:
            match = _BYTE_TOKEN.match(piece)
            out.append(bytes([int(match.group(1), 16)]) if match else piece.replace("▁", " ").encode("utf-8"))
            if match:
                fallback.add(token_id)
        else:
            text = tokenizer.decode([token_id])
            out.append(None if "\ufffd" in text else text.encode("utf-8"))
    return (out + [None] * size)[:size], fallback


PROBE_TEXT = "Hello, world!\n  Café naïve — 日本の夏 😀 (x=1.5)"


def _check_reading(lm, pieces: list[bytes | None]) -> None:
    """Refuse a tokenizer whose tokens' bytes `token_bytes` cannot read: its encoding of a probe text must join
    back to the text (or to it after the one leading space a SentencePiece dummy prefix adds). A misread
    vocabulary (a slow tokenizer without a decoder description, say) would otherwise write garbled text."""
    text = PROBE_TEXT.encode("utf-8")
    ids = lm.tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"]
    joined = b"".join(pieces[i] or b"" if 0 <= i < len(pieces) else b"" for i in ids)
    if joined not in (text, b" " + text):
        raise TokenizerMismatchError(
            f"cannot read the bytes of the {lm.name!r} tokenizer's tokens (its encoding of a probe text reads back "
            f"as {joined[:40]!r}..., not {text[:40]!r}...): the cross-tokenizer methods need a fast tokenizer "
            f"(tokenizer.json) of the byte-level BPE or SentencePiece kind")


class TokenBytes:
    """A vocabulary sorted by byte strings, prepared once per tokenizer.

    Sorted layout: [text tokens in byte order][stop tokens][masked tokens]. The text tokens that start
    with a byte string s are the contiguous range [lo, hi) (bisection on `sorted_bytes`); those equal
    to s come first in it, `fallback` tokens (byte-fallback duplicates) after the others, so that the first
    is the token the model's tokenizer writes for s. `keys[j, k]` is byte k of sorted token j (0 past its
    end); `group[j]` its first byte, STOP or OTHER.
    """

    def __init__(self, pieces: list[bytes | None], stop_ids: set[int], allowed: list[bool],
                 fallback: set[int] = frozenset()):
        size = len(pieces)
        stops = sorted(i for i in stop_ids if 0 <= i < size)
        text = sorted((i for i in range(size) if allowed[i] and pieces[i] and i not in stop_ids),
                      key=lambda i: (pieces[i], i in fallback))
        other = sorted(set(range(size)) - set(text) - set(stops))
        self.size, self.n_text, self.n_stop = size, len(text), len(stops)
        self.pieces = pieces
        self.order = torch.tensor(text + stops + other, dtype=torch.long)
        self.sorted_bytes = [pieces[i] for i in text]
        longest = max((len(b) for b in self.sorted_bytes), default=1)
        keys = torch.zeros((len(text), longest), dtype=torch.uint8)
        for row, data in enumerate(self.sorted_bytes):
            keys[row, : len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        self.keys = keys
        group = torch.full((size,), OTHER, dtype=torch.long)
        group[: len(text)] = keys[:, 0].long()
        group[len(text): len(text) + len(stops)] = STOP
        self.group = group
        self.mask = torch.full((size,), -math.inf)
        self.mask[text + stops] = 0.0

    @classmethod
    def from_model(cls, lm: HFCausalLM) -> "TokenBytes":
        size = max(lm.output_rows, len(lm.tokenizer))
        pieces, fallback = _read_tokens(lm.tokenizer, size)
        stops = set(lm.stop_token_ids)
        controls = control_token_ids(lm.tokenizer) - stops
        allowed = [i not in controls and pieces[i] is not None for i in range(size)]
        _check_reading(lm, pieces)
        return cls(pieces, stops, allowed, fallback)

    def prefix_range(self, prefix: bytes, lo: int = 0, hi: int | None = None) -> tuple[int, int, int]:
        """(lo, hi, exact): sorted text tokens starting with `prefix`; the first `exact` of them equal it."""
        hi = self.n_text if hi is None else hi
        start = bisect.bisect_left(self.sorted_bytes, prefix, lo, hi)
        end = bisect.bisect_right(self.sorted_bytes, prefix + b"\xff" * 256, start, hi)
        exact = bisect.bisect_right(self.sorted_bytes, prefix, start, end) - start
        return start, end, exact

    def first_byte(self, probs: torch.Tensor) -> torch.Tensor:
        """(n, 258) mass per first byte, STOP and OTHER, for (n, V) probabilities in sorted order."""
        out = torch.zeros((probs.shape[0], OTHER + 1), dtype=probs.dtype)
        return out.index_add_(1, self.group, probs)

    def next_byte(self, probs: torch.Tensor, lo: int, hi: int, depth: int) -> torch.Tensor:
        """(256,) mass per byte at position `depth` of the sorted tokens [lo, hi) (all longer than depth)."""
        out = torch.zeros(256, dtype=probs.dtype)
        if hi > lo:
            out.index_add_(0, self.keys[lo:hi, depth].long(), probs[lo:hi])
        return out


def filtered_logprobs(logprobs: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Temperature, then top-k, top-p and min-p (the sampler's order) as dense (n, V) log-probs; -inf = cut.

    Temperature 0 keeps only the most likely token."""
    if params.temperature == 0:
        out = torch.full_like(logprobs, -math.inf)
        return out.scatter_(1, logprobs.argmax(-1, keepdim=True), 0.0)
    x = torch.log_softmax(logprobs / max(params.temperature, MIN_TEMPERATURE), dim=-1)  # no overflow to NaN
    if 0 < params.top_k < x.shape[-1]:
        kth = torch.topk(x, params.top_k, dim=-1).values[:, -1:]
        x = torch.log_softmax(x.masked_fill(x < kth, -math.inf), dim=-1)
    if params.top_p < 1.0:
        values, indices = torch.sort(x, dim=-1, descending=True)
        probs = values.exp()
        cut = (torch.cumsum(probs, -1) - probs) >= params.top_p  # the top token always survives
        x = torch.log_softmax(x.scatter(1, indices, values.masked_fill(cut, -math.inf)), dim=-1)
    if params.min_p > 0.0:
        x = x.masked_fill(x < x.max(-1, keepdim=True).values + math.log(params.min_p), -math.inf)
        x = torch.log_softmax(x, dim=-1)
    return x


FILTERED, RAW, SCORED = "filtered", "raw", "scored"  # the distributions a Dist holds (its fields of these names)


@dataclass
class Dist:
    """One next-token distribution of one row, in sorted order, three ways: `filtered` (what the model draws its
    own tokens from: penalties, temperature, top-k, top-p, min-p), `raw` (temperature 1, the model's own: what
    routers read, what a model follows text outside its filtered support with) and `scored` (temperature 1 under
    the penalties: what the greedy mixtures rank, `raw` itself when no penalty is on)."""

    filtered: torch.Tensor  # (V,)
    raw: torch.Tensor  # (V,)
    scored: torch.Tensor  # (V,)
    first_filtered: torch.Tensor  # (258,)
    first_raw: torch.Tensor  # (258,)
    first_scored: torch.Tensor  # (258,)
    summary: tuple[float, float, int]  # temperature 1: top-1 prob, entropy (nats), sorted index of the top token

    def probs(self, over: str) -> torch.Tensor:
        return getattr(self, over)

    def first(self, over: str) -> torch.Tensor:
        return getattr(self, f"first_{over}")


@dataclass
class Lookahead:
    """The model after a tentative extra token (the end-branch token), held in one KV-cache column."""

    token: int
    column: int
    dist: Dist


@dataclass
class Cursor:
    """One model's position in one row's shared text: committed tokens, pending bytes, distributions."""

    dist: Dist | None  # None while a committed token waits for its forward
    pending: bytes = b""
    lo: int = 0
    hi: int = 0
    exact: int = 0
    raw: bool = False  # following text outside the filtered support: use temperature-1 probabilities
    look: Lookahead | None = None
    feed: list[int] = field(default_factory=list)  # committed tokens not yet in the cache
    want_look: bool = False  # a lookahead forward is asked for (the end branch was drawn, or UniTE)
    drawn_end: bool = False
    drawn_prob: float = 1.0
    tokens: list[int] = field(default_factory=list)
    _masses: dict = field(default_factory=dict)  # cached (bytes (256,), stop, end, total) per distribution read

    @property
    def own(self) -> str:
        """The distribution the cursor reads: its filtered one, or the raw one while following text outside it."""
        return RAW if self.raw else FILTERED

    def masses(self, table: TokenBytes, over: str | None = None) -> tuple[torch.Tensor, float, float, float]:
        """(mass per next byte in the token, stop mass, end-branch mass, consistent mass), unnormalised, of the
        distribution `over` (RAW, SCORED; None: the cursor's `own`). Cached until the state changes (`forget`):
        the per-word routers ask for the raw distribution's several times per decision."""
        over = over or self.own
        if over == SCORED and self.dist.scored is self.dist.raw:  # no penalty on: the same masses
            over = RAW
        if over not in self._masses:
            self._masses[over] = self._masses_of(table, over)
        return self._masses[over]

    def forget(self) -> None:
        """Drop the cached masses: the distribution, the pending bytes or what the cursor reads changed."""
        self._masses = {}

    def _masses_of(self, table: TokenBytes, over: str) -> tuple[torch.Tensor, float, float, float]:
        if not self.pending:
            first = self.dist.first(over)
            return first[:256], float(first[STOP]), 0.0, float(first[:OTHER].sum())
        probs = self.dist.probs(over)
        longer = table.next_byte(probs, self.lo + self.exact, self.hi, len(self.pending))
        end = float(probs[self.lo: self.lo + self.exact].sum())
        return longer, 0.0, end, float(longer.sum()) + end

    def end_mass(self, table: TokenBytes, over: str | None = None) -> float:
        """The end branch's mass, or 0 when below END_FLOOR of the consistent mass."""
        _, _, end, total = self.masses(table, over)
        return end if total > 0 and end >= END_FLOOR * total else 0.0

    def end_token(self) -> int:
        """The most likely token equal to the pending bytes (duplicates share its continuation), by the
        temperature-1 probabilities when the knobs kept none of them (UniTE's temperature-0 lookahead)."""
        probs = self.dist.probs(self.own)[self.lo: self.lo + self.exact]
        if not float(probs.max()) > 0:
            probs = self.dist.scored[self.lo: self.lo + self.exact]
        return self.lo + int(probs.argmax())  # ties: the first, the tokenizer's own piece (`TokenBytes`)

    def reset(self, table: TokenBytes, dist: Dist | None, pending: bytes) -> None:
        self.dist, self.pending, self.look = dist, pending, None
        self.forget()
        self.want_look = False
        self.lo, self.hi, self.exact = table.prefix_range(pending) if pending else (0, table.n_text, 0)
        self.raw = False
        if dist is not None and self.masses(table)[3] <= 0:
            self.use_raw()

    def use_raw(self) -> None:
        self.raw = True
        self.forget()


class CharRows:
    """One model over a batch of rows: its KV-cache session and a Cursor per row.

    Rows advance at their own pace; a forward step feeds a token to the rows that need one and a
    masked no-op to the others (their new cache column gets attention mask 0 and their position is
    not advanced), so the batch stays one tensor. A lookahead token is fed the same way and, if the
    text does not take that branch, its column is masked out afterwards.
    """

    def __init__(self, lm: HFCausalLM, table: TokenBytes, prompts: list[list[int]], params: SamplingParams,
                 name: str):
        self.lm, self.table, self.params, self.name = lm, table, params, name
        self.prompts = [list(prompt) for prompt in prompts]  # each row's own prompt ids (the repetition penalty's)
        self.session: HFSession = lm.start(prompts)
        dists = self._dists(self.session.logits, [(row, []) for row in range(len(prompts))])
        self.cursors = [Cursor(None) for _ in prompts]
        for cursor, dist in zip(self.cursors, dists):
            cursor.reset(table, dist, b"")

    def _dists(self, logits: torch.Tensor, contexts: list[tuple[int, list[int]]]) -> list[Dist]:
        """The Dists of `logits` (n, V'), one per (row, the tokens written after the row's prompt) of `contexts`."""
        logits = logits.float().cpu()
        size = self.table.size
        if logits.shape[-1] < size:
            logits = torch.nn.functional.pad(logits, (0, size - logits.shape[-1]), value=-math.inf)
        logits = logits[:, :size]
        raw = torch.log_softmax(logits + self.table.mask, dim=-1)
        penalised = self.params.penalised
        scored = torch.log_softmax(self._penalised(logits, contexts) + self.table.mask, -1) if penalised else raw
        filtered = filtered_logprobs(scored, self.params).exp()[:, self.table.order]
        raw = raw.exp()[:, self.table.order]
        first_f, first_r = self.table.first_byte(filtered), self.table.first_byte(raw)
        if penalised:
            scored = scored.exp()[:, self.table.order]
            first_s = self.table.first_byte(scored)
        top, where = raw.max(-1)  # the whole distribution's statistics, for rows at a token boundary
        entropy = torch.special.entr(raw).sum(-1)
        summary = list(zip(top.tolist(), entropy.tolist(), where.tolist()))
        out = []
        for i in range(logits.shape[0]):
            raw_i, first_ri = raw[i], first_r[i]  # without a penalty the scored distribution is this very tensor
            out.append(Dist(filtered[i], raw_i, scored[i] if penalised else raw_i, first_f[i], first_ri,
                            first_s[i] if penalised else first_ri, summary[i]))
        return out

    def _penalised(self, logits: torch.Tensor, contexts: list[tuple[int, list[int]]]) -> torch.Tensor:
        """The logits under the sampling's penalties (`sampling.penalise`, as on the token path), each row's counted
        over this model's own tokens: the ones it has written (its reading of the text so far) and, for the
        repetition penalty, its prompt's."""
        rows, size = len(contexts), logits.shape[-1]
        counts, prompt = torch.zeros((rows, size)), torch.zeros((rows, size), dtype=torch.bool)
        for k, (row, written) in enumerate(contexts):
            if written:
                counts[k].index_add_(0, torch.tensor(written), torch.ones(len(written)))
            prompt[k, [token for token in self.prompts[row] if token < size]] = True
        return penalise(logits, RowKnobs.of(self.params, rows), counts, prompt)

    def needs_forward(self, row: int) -> bool:
        cursor = self.cursors[row]
        return bool(cursor.feed) or (cursor.look is None and cursor.want_look)

    def forward(self) -> bool:
        """Feed every row that needs it (a committed token or a lookahead token); False if none did."""
        fed, lookahead = [], []
        for row, cursor in enumerate(self.cursors):
            if cursor.feed:
                fed.append((row, cursor.feed[0]))
            elif cursor.look is None and cursor.want_look:
                lookahead.append((row, int(self.table.order[cursor.end_token()])))
        if not fed and not lookahead:
            return False
        tokens = torch.full((len(self.cursors),), self.lm.pad_token_id, dtype=torch.long)
        for row, token in fed + lookahead:
            tokens[row] = token
        logits = self.session.step(tokens)
        column = self.session.attention_mask.shape[1] - 1
        active = torch.zeros(len(self.cursors), dtype=torch.bool)
        active[[row for row, _ in fed + lookahead]] = True
        self._retract(~active, column)
        rows = [row for row, _ in fed + lookahead]
        # what each row has written: its committed tokens (a fed token is among them), a lookahead token too
        contexts = [(row, self.cursors[row].tokens) for row, _ in fed]
        contexts += [(row, [*self.cursors[row].tokens, token]) for row, token in lookahead]
        dists = dict(zip(rows, self._dists(logits[torch.tensor(rows, device=logits.device)], contexts)))
        for row, _ in fed:
            cursor = self.cursors[row]
            cursor.feed.pop(0)
            if not cursor.feed:
                self._settle(cursor, dists[row], cursor.pending)
        for row, token in lookahead:
            self.cursors[row].look, self.cursors[row].want_look = Lookahead(token, column, dists[row]), False
        return True

    def _settle(self, cursor: Cursor, dist: Dist, pending: bytes) -> None:
        cursor.reset(self.table, dist, pending)
        if cursor.masses(self.table)[3] <= 0:
            raise UnrepresentableText(f"the {self.name} model's vocabulary cannot continue the text with "
                                      f"{pending!r}")

    def _retract(self, rows: torch.Tensor, column: int) -> None:
        """Mask cache column `column` out for `rows` and give them back the position it took."""
        if bool(rows.any()):
            rows = rows.to(self.session.attention_mask.device)
            with torch.inference_mode():  # the session's tensors are inference tensors
                self.session.attention_mask[rows, column] = 0
                self.session.positions[rows] -= 1

    def marginal(self, row: int, over: str | None = None) -> torch.Tensor:
        """(257,) probability of each next byte and of STOP for this row (the row must be ready: its end
        branch's lookahead done where `end_mass` is not 0), of the distribution `over` (None: the cursor's own)."""
        cursor = self.cursors[row]
        over = over or cursor.own
        longer, stop, all_end, total = cursor.masses(self.table, over)
        out = torch.zeros(STOP + 1, dtype=longer.dtype)
        out[:256], out[STOP] = longer, stop
        end = cursor.end_mass(self.table, over)
        if end > 0:
            out += end * cursor.look.dist.first(over)[:STOP + 1]
        total = total - (all_end - end)
        return out / total if total > 0 else out

    def advance(self, row: int, byte: int) -> None:
        """Follow one byte of text another model drew: stay in the current token while a token of this
        model continues with the byte (longest match, as its tokenizer would), else commit the token
        that ends here; prefer the filtered support, then any token; re-segment as a last resort."""
        cursor = self.cursors[row]
        for raw in ([True] if cursor.raw else [False, True]):
            if raw and not cursor.raw:
                cursor.use_raw()  # the text left this model's filtered support (the other model wrote it)
            longer, _, end, _ = cursor.masses(self.table)
            if float(longer[byte]) > 0:
                self._stay(cursor, row, byte)
                return
            if end > 0:
                self._commit(cursor, row, byte, cursor.look)
                return
        self._resegment(cursor, row, byte)

    def draw(self, row: int, params: SamplingParams, rng: random.Random) -> tuple[int | None, float]:
        """Draw the next byte (or STOP) from this model and move over it: (byte, probability of the
        path drawn), or (None, 0) when the drawn path ends the current token and the next token's
        distribution needs a forward first (call again after it).

        Exact sampling of the model's own tokens, one byte at a time: the next byte continues the
        current token with probability mass(longer tokens with that byte) / Z, or the token ends with
        probability p_end / Z and the byte is the next token's first."""
        cursor = self.cursors[row]
        if cursor.drawn_end:
            if cursor.look is None:
                return None, 0.0
            first = cursor.look.dist.first(FILTERED)[: STOP + 1]
            byte = pick_index(first, params, rng)
            prob, cursor.drawn_end = cursor.drawn_prob * float(first[byte] / first.sum()), False
            if byte == STOP:  # the token ended the text
                cursor.tokens.append(cursor.look.token)
                cursor.pending = b""
                cursor.forget()
            else:
                self._commit(cursor, row, byte, cursor.look)
            return byte, prob
        longer, stop, end, total = cursor.masses(self.table)
        choice = pick_index(torch.cat([longer, torch.tensor([stop, end], dtype=longer.dtype)]), params, rng)
        if choice == STOP + 1:  # the token ends here
            cursor.drawn_end, cursor.drawn_prob, cursor.want_look = True, end / total, cursor.look is None
            return (None, 0.0) if cursor.look is None else self.draw(row, params, rng)
        if choice != STOP:
            self._stay(cursor, row, choice)
        return choice, float(torch.cat([longer, torch.tensor([stop])])[choice]) / total

    def _stay(self, cursor: Cursor, row: int, byte: int) -> None:
        if cursor.look is not None:
            self._retract(self._row_mask(row), cursor.look.column)
            cursor.look = None
        cursor.pending += bytes([byte])
        cursor.lo, cursor.hi, cursor.exact = self.table.prefix_range(cursor.pending, cursor.lo, cursor.hi)
        cursor.forget()

    def _row_mask(self, row: int) -> torch.Tensor:
        mask = torch.zeros(len(self.cursors), dtype=torch.bool)
        mask[row] = True
        return mask

    def _commit(self, cursor: Cursor, row: int, byte: int, look: Lookahead | None) -> None:
        """The token equal to the pending bytes is complete; `byte` starts the next one."""
        token = int(self.table.order[cursor.end_token()]) if look is None else look.token
        cursor.tokens.append(token)
        if look is not None:
            self._settle(cursor, look.dist, bytes([byte]))
        else:
            cursor.reset(self.table, None, bytes([byte]))
            cursor.feed = [token]

    def _resegment(self, cursor: Cursor, row: int, byte: int) -> None:
        """The text left every token this model's cursor could still be in (it held one reading of
        the pending bytes; the other model wrote on): commit the pending bytes as whole tokens, longest
        first, until what is left plus `byte` starts a token of its own."""
        if cursor.look is not None:
            self._retract(self._row_mask(row), cursor.look.column)
            cursor.look = None

        def starts_a_token(rest: bytes) -> bool:
            start, end, _ = self.table.prefix_range(rest + bytes([byte]))
            return end > start

        tokens, rest = self._split(cursor.pending, starts_a_token)
        start, end, _ = self.table.prefix_range(rest + bytes([byte]))
        if end == start:
            raise UnrepresentableText(f"the {self.name} model's vocabulary has no token starting with "
                                      f"{rest + bytes([byte])!r}")
        cursor.tokens += tokens
        if tokens:
            cursor.reset(self.table, None, rest + bytes([byte]))
            cursor.feed = tokens
        else:  # cannot happen with a pending token that still had candidates; kept for safety
            self._settle(cursor, cursor.dist, rest + bytes([byte]))

    def _split(self, data: bytes, enough=lambda rest: False) -> tuple[list[int], bytes]:
        """Whole tokens for the start of `data`, longest first, until `enough(rest)`; (tokens, rest)."""
        tokens, rest = [], data
        while rest and not enough(rest):
            for cut in range(len(rest), 0, -1):
                start, _, exact = self.table.prefix_range(rest[:cut])
                if exact:
                    tokens.append(int(self.table.order[start]))
                    rest = rest[cut:]
                    break
            else:
                raise UnrepresentableText(f"the {self.name} model's vocabulary has no token for {rest!r}")
        return tokens, rest

    def spelled(self, row: int) -> int:
        """How many of this model's tokens spell the row's text if it ends here: the committed ones plus
        the pending bytes read as whole tokens, longest first (what `written_tokens` reports). The budget
        counts these, so a re-reading (`_resegment`) or a pending prefix that no single token equals can
        never take a model past it. A prefix no whole-token reading covers counts as the one token it
        starts (a vocabulary without single-byte tokens; the text goes on into that token)."""
        cursor = self.cursors[row]
        if not cursor.pending or cursor.exact:  # nothing pending, or the pending bytes are one token
            return len(cursor.tokens) + bool(cursor.pending)
        try:
            return len(cursor.tokens) + len(self._split(cursor.pending)[0])
        except UnrepresentableText:
            return len(cursor.tokens) + 1

    def written_tokens(self, row: int, drop: int = 0) -> list[int]:
        """The row's committed tokens, then its pending bytes (less the last `drop`) as whole tokens."""
        cursor = self.cursors[row]
        return cursor.tokens + self._split(cursor.pending[: len(cursor.pending) - drop])[0]

    def stats(self, row: int) -> tuple[float, float, bytes | None]:
        """Temperature-1 distribution over the tokens consistent with the text: (top-1 prob, entropy in
        nats, the top token's remaining bytes, None for a stop token)."""
        cursor = self.cursors[row]
        if cursor.pending:
            window = cursor.dist.raw[cursor.lo:cursor.hi]
            total = float(window.sum())
            if total <= 0:
                return 0.0, 0.0, b""
            q = window / total
            top, entropy, where = float(q.max()), float(torch.special.entr(q).sum()), cursor.lo + int(q.argmax())
        else:
            top, entropy, where = cursor.dist.summary
        if where >= self.table.n_text:
            return top, entropy, None
        return top, entropy, self.table.sorted_bytes[where][len(cursor.pending):]

    def piece_stats(self, row: int, k: int = 8) -> tuple[float, float, bytes | None]:
        """`stats` of the distribution over the row's next piece of text (temperature 1): where its pending bytes
        may be a whole token and the lookahead past that token is there, that token's share goes to what follows
        it, so a piece reached both ways (the rest of ".\\n" after ".", or "." then "\\n") counts once.
        The top-1 piece is the likeliest of the k that `pieces` would rank first, each weighed over both branches; the
        entropy (nats) is of the token paths (a longer token, the end-branch token then one of the lookahead's, a stop).
        Anywhere else it is `stats`: the next token's distribution given the text."""
        cursor = self.cursors[row]
        if not cursor.pending or cursor.look is None:
            return self.stats(row)
        segments, stop, _ = self._segments(row, RAW)
        if len(segments) < 2:  # the held token's share is below END_FLOOR: no branch past it
            return self.stats(row)
        weighted = [weight * probs[lo:hi] for probs, lo, hi, _, weight in segments]
        total = sum(float(w.sum()) for w in weighted) + stop
        if total <= 0:
            return 0.0, 0.0, b""
        entropy = sum(float(torch.special.entr(w / total).sum()) for w in weighted)
        entropy -= stop / total * math.log(stop / total) if stop > 0 else 0.0

        def mass(piece: bytes | None) -> float:
            if piece is None:
                return stop
            found = 0.0
            for probs, lo, hi, prefix, weight in segments:
                start, _, exact = self.table.prefix_range(prefix + piece, lo, hi)
                found += weight * float(probs[start:start + exact].sum())
            return found

        masses = {piece: mass(piece) for piece in self._top_pieces(segments, stop, k)}
        top = max(masses, key=masses.get)
        return masses[top] / total, entropy, top

    def _segments(self, row: int, over: str | None = None) -> tuple[list[tuple], float, float]:
        """The row's next pieces of text as (probs, lo, hi, prefix, weight) ranges of sorted tokens whose
        bytes after `prefix` are the piece; the stop mass; the consistent mass (all unnormalised).
        With an end branch, the lookahead's tokens follow the pending bytes' own token.
        `over`: of that distribution (RAW for the routers per word, SCORED for greedy UniTE; None: the cursor's own)."""
        cursor, table = self.cursors[row], self.table
        over = over or cursor.own
        probs = cursor.dist.probs(over)
        longer, stop, end_full, total = cursor.masses(table, over)
        end = cursor.end_mass(table, over)
        if not cursor.pending:
            return [(probs, 0, table.n_text, b"", 1.0)], stop, total
        segments = [(probs, cursor.lo + cursor.exact, cursor.hi, cursor.pending, 1.0)]
        if end > 0:
            after = cursor.look.dist.probs(over)
            segments.append((after, 0, table.n_text, b"", end))
            stop = end * float(cursor.look.dist.first(over)[STOP])
        return segments, stop, total - (end_full - end)

    def pieces(self, row: int, k: int, over: str | None = None) -> list[bytes | None]:
        """The k most likely next pieces of text (None = end of text), most likely first."""
        segments, stop, _ = self._segments(row, over)
        return self._top_pieces(segments, stop, k)

    def _top_pieces(self, segments: list[tuple], stop: float, k: int) -> list[bytes | None]:
        mass: dict[bytes | None, float] = {None: stop} if stop > 0 else {}
        for probs, lo, hi, prefix, weight in segments:
            if hi <= lo:
                continue
            values, where = torch.topk(probs[lo:hi], min(k, hi - lo))
            for value, j in zip(values.tolist(), where.tolist()):
                if value > 0:
                    piece = self.table.sorted_bytes[lo + j][len(prefix):]
                    mass[piece] = mass.get(piece, 0.0) + weight * value
        return sorted(mass, key=mass.get, reverse=True)[:k]

    def score(self, row: int, piece: bytes | None, over: str | None = None) -> float:
        """UniTE's score of a candidate piece under this model: the probability of its next piece being
        exactly `piece` when it has such a token, else that of the piece's first sub-token in its reading (the
        longest of its tokens that is a proper prefix of the piece; 0 if none), normalised over the text."""
        segments, stop, total = self._segments(row, over)
        if total <= 0:
            return 0.0
        if piece is None:
            return stop / total
        mass = 0.0
        for probs, lo, hi, prefix, weight in segments:
            for cut in range(len(piece), 0, -1):
                start, _, exact = self.table.prefix_range(prefix + piece[:cut], lo, hi)
                if exact:
                    mass += weight * float(probs[start:start + exact].sum())
                    break
        return mass / total

    def keep(self, rows: list[int]) -> None:
        self.session.keep(torch.tensor(rows, dtype=torch.long))
        self.cursors = [self.cursors[r] for r in rows]
        self.prompts = [self.prompts[r] for r in rows]


def pick_index(probs: torch.Tensor, params: SamplingParams, rng: random.Random) -> int:
    """Inverse-CDF draw from unnormalised masses (already filtered per token); the largest at temperature 0."""
    if params.temperature == 0:
        return int(probs.argmax())
    cdf = torch.cumsum(probs.double(), 0)
    position = int(torch.searchsorted(cdf, rng.random() * float(cdf[-1]), right=True))
    return min(position, int(torch.nonzero(probs > 0).max()))


def classify(remainder: bytes | None) -> tuple[bool, bool]:
    """(punctuation / formatting / stop, function word) for a predicted piece of text. A piece that is not whole
    characters (byte-level BPE's part of a CJK character or an emoji) is neither, as the token routers read such
    a token (`TokenTable`): its U+FFFD would otherwise count as a symbol."""
    if remainder is None:
        return True, False
    text = remainder.decode("utf-8", errors="replace")
    if "\ufffd" in text:
        return False, False
    return is_punct_or_format(text), text.strip().lower() in FUNCTION_WORDS


class CrossPair:
    """A base and an aligned model that need not share a tokenizer, each with its byte table."""

    def __init__(self, base: HFCausalLM, aligned: HFCausalLM):
        self.base, self.aligned = base, aligned
        self.tables = (TokenBytes.from_model(base), TokenBytes.from_model(aligned))

    @property
    def context_length(self) -> int:
        return min(self.base.context_length, self.aligned.context_length)
