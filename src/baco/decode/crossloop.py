"""The cross-tokenizer loop: two models with different tokenizers write one text, a piece at a time.

    prefill both models (each on its own rendering of the request, its own tokenizer)
    repeat:
        for each row, as far as it can go without a model forward:
            at a decision point the method picks who writes or what comes next:
                chared  - a W-coin picks the model that writes the next character
                          (temperature 0: the most likely byte of the two models' weighted mixture)
                *-words - the router's rule picks the model that writes the next word
                unite   - a piece of text from the union of both models' top-k next pieces
            the writer draws bytes from its own distribution; the other model follows them
        one batched forward of one model (they take turns) for the rows waiting for it

The unit committed is text: each model advances its KV cache only over whole tokens of its own,
and a partial token is held as pending bytes whose continuation the prefix-conditioned distribution
describes (models/chars.py). Nothing is re-encoded. Provenance is recorded per span (`SpanEvent`):
a character for CharED, a word for the word routers, a chosen piece for UniTE.

Randomness: every row owns three streams (base, aligned, router) seeded from (seed, prompt, sample
index), as in the same-tokenizer loop: a writer draws bytes from its own stream, CharED's coin and
RAND use the router stream, UniTE the aligned stream. Lengths: a row stops ("length") just before the
byte after which either model would need more than `max_new_tokens` of its own tokens to spell the text
(committed ones, re-read ones included, plus the pending bytes as whole tokens), when the method draws
the end of text, or at a stop string.
"""

from __future__ import annotations

import codecs
import random
from dataclasses import dataclass, field
from typing import Iterator

import torch

from baco.decode.loop import Request
from baco.decode.records import stop_at
from baco.decode.sampling import SamplingParams
from baco.models.chars import RAW, SCORED, STOP, CharRows, CrossPair, pick_index, classify
from baco.routers.cross import CHAR, PIECE, WORD, CharView, PieceView, WordView, models_read, unit_of
from baco.routers.registry import Router
from baco.vocab import ends_word

BASE, ALIGNED, MIX = "base", "aligned", "mix"


@dataclass
class SpanEvent:
    """One closed span of one row: the text it added and who wrote it, why, with the models'
    statistics at its start. The row's last span carries `finished` and each model's tokens."""

    row: int
    text: str
    source: str
    reason: str
    base_top1_prob: float
    base_entropy: float
    aligned_top1_prob: float
    chosen_prob: float
    finished: str | None = None
    base_tokens: list[int] = field(default_factory=list)
    aligned_tokens: list[int] = field(default_factory=list)
    data: bytes = b""


@dataclass
class _Span:
    source: str
    reason: str
    stats: tuple[float, float, float]
    prob: float = 1.0
    text: str = ""


class _Row:
    def __init__(self, index: int, request: Request):
        self.index, self.request = index, request
        self.data = bytearray()
        self.text = ""
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.queue: list[int] = []  # bytes chosen, not yet taken in by both models
        self.taken: set[int] = set()  # models (0 base, 1 aligned) that took in queue[0]
        self.span: _Span | None = None
        self.writer = 0
        self.so_far = [1.0, 1.0]  # greedy CharED: each model's probability of the current character's bytes so far
        self.streams = [random.Random(f"{request.seed}:{stream}") for stream in ("base", "aligned", "router")]

    @property
    def mid_character(self) -> bool:
        return bool(self.decoder.getstate()[0])

    def at_word_boundary(self) -> bool:
        return not self.mid_character and not ends_word(self.text)


def crossloop(pair: CrossPair, requests: list[Request], method: Router, params: SamplingParams,
              stop_strings: tuple[str, ...] = ()) -> Iterator[SpanEvent]:
    """Decode all requests as rows of one batch; yield each span as it closes."""
    if not requests:
        return
    unit = unit_of(method)
    if unit is None:
        raise ValueError(f"{method.name} is not a cross-tokenizer method")
    models = [CharRows(pair.base, pair.tables[0], [r.base_ids for r in requests], params, BASE),
              CharRows(pair.aligned, pair.tables[1], [r.aligned_ids for r in requests], params, ALIGNED)]
    rows = [_Row(index, r) for index, r in enumerate(requests)]
    turn = 1
    while rows:
        finished: list[int] = []
        for i, row in enumerate(rows):
            for event in _run(i, row, models, method, unit, params, stop_strings):
                yield event
                if event.finished:
                    finished.append(i)
        if finished:
            keep = [i for i in range(len(rows)) if i not in finished]
            if not keep:
                return
            for model in models:
                model.keep(keep)
            rows = [rows[i] for i in keep]
        # the models take turns, one forward per round: a row waits for one model at a time, so with
        # both models stepped every round each would run about twice per token of its own
        turn = 1 - turn
        if not models[turn].forward() and not models[1 - turn].forward():
            raise RuntimeError("cross-tokenizer loop made no progress (a bug: please report it)")


def _run(i: int, row: _Row, models: list[CharRows], method: Router, unit: str, params: SamplingParams,
         stop_strings: tuple[str, ...]) -> Iterator[SpanEvent]:
    """Advance one row (position i in the batch) until a model needs a forward or the row finishes."""
    while True:
        if any(m.needs_forward(i) for m in models):
            return
        if not row.queue:
            choice = _decide(i, row, models, method, unit, params)
            if choice is _WAIT:
                return
            if choice is None:  # the method ended the text
                yield _close(row, models, i, "stop")
                return
            row.queue = choice
        byte = row.queue.pop(0)
        for m, model in enumerate(models):
            if m not in row.taken:
                model.advance(i, byte)
        row.taken.clear()
        if any(m.spelled(i) > row.request.max_new_tokens for m in models):
            # with this byte a model would need more than its budget of tokens (one more started, or its
            # pending bytes re-read as several): the text ends before it, where every model fits (each
            # byte taken so far passed this check), and nothing already emitted is taken back
            yield _close(row, models, i, "length", dropped={0, 1})
            return
        row.data.append(byte)
        added = row.decoder.decode(bytes([byte]))
        row.text += added
        row.span.text += added
        if added and stop_at(row.text, stop_strings, len(row.text) - len(added)) is not None:  # ends in `added`
            yield _close(row, models, i, "stop")
            return
        if _span_ends(row, unit):
            yield _emit(row)


_WAIT = object()  # a model must run a forward before the row can go on


def _span_ends(row: _Row, unit: str) -> bool:
    if unit == CHAR:
        return not row.mid_character
    if unit == WORD:
        return row.at_word_boundary()
    return not row.queue


def _decide(i: int, row: _Row, models: list[CharRows], method: Router, unit: str, params: SamplingParams):
    """The next byte(s) the row commits, _WAIT, or None for the end of the text; opens a span where one starts.

    CharED and the word routers pick a writer for the span (a character; a word) and draw its bytes from
    the writer's own distribution; the writer moves itself, the other model follows."""
    if unit == PIECE:
        return _decide_piece(i, row, models, method, params)
    if unit == CHAR and params.temperature == 0 and 0 < (method.value or 0) < 1:
        return _decide_greedy_char(i, row, models, method)
    if row.span is None:
        read = models_read(method) if unit == WORD else ()
        if any([_look_ahead(models[m].cursors[i], models[m].table) for m in read]):  # both asked for at once
            return _WAIT
        base, aligned = (models[m].piece_stats(i) if m in read else models[m].stats(i) for m in (0, 1))
        stats = (base[0], base[1], aligned[0])
        if unit == CHAR:  # CharED: drawing a character from W P_base + (1 - W) P_aligned = a W-coin picks the model
            coin = 0.5 if params.temperature == 0 else row.streams[2].random()  # greedy: the heavier model
            route = method(CharView(torch.tensor([coin])))
        else:
            punct, function = classify(aligned[2])
            route = method(WordView(torch.tensor([base[0]]), torch.tensor([base[1]]), torch.tensor([aligned[0]]),
                                    torch.tensor([aligned[1]]), torch.tensor([punct]), torch.tensor([function]),
                                    torch.tensor([row.streams[2].random()])))
        row.writer = 0 if bool(route.use_base[0]) else 1
        row.span = _Span((BASE, ALIGNED)[row.writer], route.reason[0], stats)
    byte, prob = models[row.writer].draw(i, params, row.streams[row.writer])
    if byte is None:
        return _WAIT
    row.taken = {row.writer}
    row.span.prob *= prob
    return None if byte == STOP else [byte]


def _decide_greedy_char(i: int, row: _Row, models: list[CharRows], method: Router):
    """CharED at temperature 0: the next byte is the most likely one under the mixture of the two models' next-byte
    distributions (temperature 1, under the penalties if any; an end branch's continuation read from its lookahead
    forward), as the router weighs them (`chared`); both models then follow it. A span is a character, source "mix",
    its reason which model(s) ranked its first byte first, its probability the mixture's probability of the character."""
    if any([_look_ahead(model.cursors[i], model.table, SCORED) for model in models]):  # both asked for at once
        return _WAIT
    nexts = [model.marginal(i, SCORED) for model in models]
    if row.span is None:
        base, aligned = models[0].stats(i), models[1].stats(i)
        row.span, row.so_far = _Span(MIX, "", (base[0], base[1], aligned[0])), [1.0, 1.0]
    view = CharView(torch.tensor([0.5]), nexts[0][None], nexts[1][None], torch.tensor([row.so_far[0]]),
                    torch.tensor([row.so_far[1]]))
    mix = method(view).mix[0].exp()
    byte = int(mix.argmax())  # ties: the lower byte
    if not row.span.reason:
        row.span.reason = _agreement([int(n.argmax()) == byte for n in nexts], "top1")
    row.so_far = [weight * float(n[byte]) for weight, n in zip(row.so_far, nexts)]
    row.span.prob *= float(mix[byte])
    return None if byte == STOP else [byte]


def _look_ahead(cursor, table, over: str = RAW) -> bool:
    """Ask for the lookahead forward of a token that may end at the word boundary (its pending bytes are a token
    of their own) unless it is there: what follows that token is part of the model's next piece of text."""
    if cursor.pending and cursor.look is None and cursor.end_mass(table, over) > 0:
        cursor.want_look = True
        return True
    return False


def _decide_piece(i: int, row: _Row, models: list[CharRows], method: Router, params: SamplingParams):
    """UniTE: both models' next pieces (an end branch's continuation needs its lookahead forward first).
    Greedy UniTE ranks and scores on the temperature-1 distributions (under the penalties, if any) and takes the
    best mean score (the filtered ones are one-hot at temperature 0, which would leave a tie between the two greedy
    pieces)."""
    over = SCORED if params.temperature == 0 else None
    waiting = False
    for model in models:
        cursor = model.cursors[i]
        if cursor.look is None and cursor.end_mass(model.table, over) > 0:
            cursor.want_look, waiting = True, True
    if waiting:
        return _WAIT
    base, aligned = models[0].stats(i), models[1].stats(i)
    k = int(method.value)
    tops = [models[0].pieces(i, k, over), models[1].pieces(i, k, over)]
    candidates = list(dict.fromkeys([*tops[0], *tops[1]]))
    view = PieceView(candidates, torch.tensor([models[0].score(i, c, over) for c in candidates]),
                     torch.tensor([models[1].score(i, c, over) for c in candidates]),
                     [c in tops[0] for c in candidates], [c in tops[1] for c in candidates])
    probs = method(view).mix[0].exp()
    pick = pick_index(probs, params, row.streams[1])
    row.span = _Span(MIX, _agreement([view.from_base[pick], view.from_aligned[pick]], "top-k"),
                     (base[0], base[1], aligned[0]), float(probs[pick]))
    return None if candidates[pick] is None else list(candidates[pick])


def _agreement(tops: list[bool], what: str) -> str:
    """Which model(s) had the chosen piece in their top-k (UniTE)."""
    return {(True, True): f"both-{what}", (True, False): f"base-{what}",
            (False, True): f"aligned-{what}", (False, False): f"neither-{what}"}[tuple(tops)]


def _emit(row: _Row, finished: str | None = None) -> SpanEvent:
    span, row.span = row.span, None
    return SpanEvent(row.index, span.text, span.source, span.reason, *span.stats, span.prob, finished)


def _close(row: _Row, models: list[CharRows], i: int, reason: str, dropped: set[int] = frozenset()) -> SpanEvent:
    """The row's last span: flush an incomplete character, attach each model's committed tokens."""
    flushed = row.decoder.decode(b"", final=True)
    row.text += flushed
    if row.span is None:
        row.span = _Span(MIX, reason, (0.0, 0.0, 0.0))
    row.span.text += flushed
    event = _emit(row, reason)
    event.base_tokens, event.aligned_tokens = (models[m].written_tokens(i, int(m in dropped)) for m in (0, 1))
    event.data = bytes(row.data)
    return event
