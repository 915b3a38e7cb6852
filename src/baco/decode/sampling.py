"""Sampling knobs (one validated dataclass) and the sampler that turns log-probs into tokens.

The sampler is deterministic given one uniform number per row: the caller owns the random
streams (one per row and per model, see `decode/loop.py`), so a sample does not depend on
which other rows share its batch.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, field, fields

import torch

from baco.errors import InvalidSamplingParams
from baco.prompts import unicode_problem

# Top-k and top-p need the head of the sorted distribution; over a 262k vocabulary a full sort is
# slow. Take only the top PRECUT tokens and sort fully only the rows whose top PRECUT tokens hold
# less than top_p of the mass (flat distributions at high temperature).
PRECUT = 1024
# the inverse CDF scans blocks of this many tokens (see `inverse_cdf`)
BLOCK = 1024
# the smallest temperature the sampler divides by: below about 1e-38, log-probs / temperature overflow float32 to
# -inf for every token of a flat row (NaN after the softmax, and a draw from nothing). At 1e-30 a token even 1e-20
# below the best log-prob (float32 log-probs that differ at all differ by far more) has relative probability
# exp(-1e10) = 0, so any smaller temperature draws the same tokens: the best one, or one tied with it.
MIN_TEMPERATURE = 1e-30
# the penalties and the values that turn them off
PENALTIES = {"presence_penalty": 0.0, "frequency_penalty": 0.0, "repetition_penalty": 1.0}
# the knobs left out of a sample's record where they are empty (so that files made before them keep their ids)
OMITTED_EMPTY = ("logit_bias", "stop_token_ids", "min_tokens")
# logit_bias (OpenAI's): at most this many tokens per request (the engine keeps a fixed-width row of them per slot,
# so a step's buffers never change shape), each biased by at most this much either way (-100 bans a token in
# practice, +100 forces it)
LOGIT_BIAS_MAX = 300
LOGIT_BIAS_LIMIT = 100.0
# stop_token_ids (vLLM's): at most this many per request
STOP_TOKEN_IDS_MAX = 64


def plain_number(value):
    """A numpy (or other registered) integer as an int and real number as a float; anything else as it is.

    Notebook code passes `np.int64` seeds and `np.float32` temperatures; kept as they are, they would fail
    the type checks or, stored in a sample, make it unserialisable as JSON. Booleans stay booleans (refused).
    """
    if isinstance(value, bool) or type(value) in (int, float):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    return float(value) if isinstance(value, numbers.Real) else value


@dataclass(frozen=True)
class SamplingParams:
    """Generation knobs shared by every method, the CLI and the server.

    temperature (1.0): 0 means greedy; top_p (1.0) in (0, 1]; top_k (0) 0 or -1 disables it; min_p (0.0)
    in [0, 1] keeps tokens with prob >= min_p * max prob. Order: temperature, top-k, top-p, min-p (transformers'
    `generate`). max_new_tokens (256): vLLM's `max_tokens`. seed (None): None draws a fresh seed (recorded with
    every sample). stop (()): extra stop strings, one string or a list. Numbers may be numpy scalars.

    Penalties, as vLLM applies them before the knobs above (`penalise`): repetition_penalty (1.0 = off) > 0, the
    transformers `generate` one, on every token of the model's own prompt and of the text so far; then
    frequency_penalty and presence_penalty (0.0 = off) in [-2, 2], OpenAI's, on the tokens of the text so far.
    logit_bias ({}): OpenAI's, {token id: bias in [-100, 100]} (at most 300 tokens; JSON's string keys are read as
    ids), added to each model's logits before the penalties (vLLM's order).
    They change what each token is drawn from, not what routers read or the recorded probabilities.
    stop_token_ids (()): vLLM's, token ids that end a sample when drawn (finish reason "stop"), beside the models'
    own end tokens; unlike those, such a token's text stays in the sample's text, as in vLLM (at most 64).
    min_tokens (0): vLLM's, at most max_new_tokens: the models' end tokens and the stop token ids are held back
    (never drawn) until a sample has this many tokens, and a stop string counts only where it ends past their text.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    max_new_tokens: int = 256
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: tuple[tuple[int, float], ...] = field(default_factory=tuple)  # (id, bias) pairs; a dict is read
    stop_token_ids: tuple[int, ...] = field(default_factory=tuple)
    min_tokens: int = 0

    def __post_init__(self) -> None:
        for knob in fields(self):  # numpy scalars as Python numbers, before they are checked and recorded
            object.__setattr__(self, knob.name, plain_number(getattr(self, knob.name)))

        def fail(message: str) -> None:
            raise InvalidSamplingParams(message)

        def number(value) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool)

        if not number(self.temperature) or not math.isfinite(self.temperature) or self.temperature < 0:
            fail(f"temperature must be a finite number >= 0 (0 = greedy), got {self.temperature!r}")
        if not number(self.top_p) or not 0 < self.top_p <= 1:
            fail(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.top_k, int) or isinstance(self.top_k, bool) or self.top_k < -1:
            fail(f"top_k must be an integer >= 0 (0 or -1 disables it), got {self.top_k!r}")
        if not number(self.min_p) or not 0 <= self.min_p <= 1:
            fail(f"min_p must be in [0, 1], got {self.min_p!r}")
        if not isinstance(self.max_new_tokens, int) or isinstance(self.max_new_tokens, bool) or self.max_new_tokens < 1:
            fail(f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0):
            fail(f"seed must be a non-negative integer or None, got {self.seed!r}")
        for knob in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, knob)
            if not number(value) or not -2 <= value <= 2:
                fail(f"{knob} must be in [-2, 2] (0 = off), got {value!r}")
        if not number(self.repetition_penalty) or not 0 < self.repetition_penalty < math.inf:
            fail(f"repetition_penalty must be a finite number > 0 (1 = off), got {self.repetition_penalty!r}")
        if not isinstance(self.stop, (str, list, tuple)):
            fail(f"stop must be a string or a list of strings, got {self.stop!r}")
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        if any(not isinstance(s, str) or not s for s in stop):
            fail(f"stop strings must be non-empty strings, got {self.stop!r}")
        for index, text in enumerate(stop):  # a stop string is compared with text and recorded with each sample
            problem = unicode_problem(text)
            if problem:
                fail(f"stop string {index} is not valid Unicode text ({problem})")
        object.__setattr__(self, "stop", stop)
        object.__setattr__(self, "logit_bias", _logit_bias(self.logit_bias, fail))
        ids = self.stop_token_ids
        if not isinstance(ids, (list, tuple)) or any(type(plain_number(i)) is not int or i < 0 for i in ids):
            fail(f"stop_token_ids must be a list of token ids (integers >= 0), got {ids!r}")
        if len(ids) > STOP_TOKEN_IDS_MAX:
            fail(f"stop_token_ids may name at most {STOP_TOKEN_IDS_MAX} tokens, got {len(ids)}")
        object.__setattr__(self, "stop_token_ids", tuple(sorted({plain_number(i) for i in ids})))
        if not isinstance(self.min_tokens, int) or isinstance(self.min_tokens, bool) or not (
                0 <= self.min_tokens <= self.max_new_tokens):
            fail(f"min_tokens must be an integer in [0, max_new_tokens] (here [0, {self.max_new_tokens}]), "
                 f"got {self.min_tokens!r}")

    @property
    def penalised(self) -> bool:
        """Whether any penalty is on (the engine then keeps each row's token counts)."""
        return bool(self.presence_penalty or self.frequency_penalty or self.repetition_penalty != 1)

    @property
    def reshaped(self) -> bool:
        """Whether tokens are drawn from other logits than the models' own: a penalty, a logit bias or min_tokens
        is set."""
        return self.penalised or bool(self.logit_bias) or self.min_tokens > 0

    @property
    def names_token_ids(self) -> bool:
        """Whether a knob names one vocabulary's token ids or counts one model's tokens (a logit bias, stop token ids,
        min_tokens): what the cross-tokenizer methods, which draw text mixed from two vocabularies, cannot take.
        (They take the penalties: each model's over its own tokens.)"""
        return bool(self.logit_bias) or bool(self.stop_token_ids) or self.min_tokens > 0

    def to_dict(self) -> dict:
        """The knobs as JSON types. A penalty, logit bias or stop token ids are left out where off: samples and sweep
        cells are identified by this dict, and those made before these knobs existed keep their identity (a resumed
        run keeps them). A logit bias is a JSON object {"id": bias}, as OpenAI's API takes it."""
        knobs = {**asdict(self), "stop": list(self.stop), "logit_bias": {str(i): b for i, b in self.logit_bias},
                 "stop_token_ids": list(self.stop_token_ids)}
        return {key: value for key, value in knobs.items()
                if not (key in PENALTIES and value == PENALTIES[key] or key in OMITTED_EMPTY and not value)}


def _logit_bias(value, fail) -> tuple[tuple[int, float], ...]:
    """A logit bias as sorted (id, bias) pairs, from a mapping (keys: ids, or strings of decimal digits, as JSON
    objects have them) or from pairs; `fail(message)` on anything else."""
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, (list, tuple)) and all(isinstance(item, (list, tuple)) and len(item) == 2 for item in value):
        items = [tuple(item) for item in value]
    else:
        fail(f"logit_bias must map token ids to biases, e.g. {{\"1234\": -100}}, got {value!r}")
    if len(items) > LOGIT_BIAS_MAX:
        fail(f"logit_bias may bias at most {LOGIT_BIAS_MAX} tokens, got {len(items)}")
    out = {}
    for key, bias in items:
        key = plain_number(key)  # a numpy integer as an int
        digits = isinstance(key, str) and key.isascii() and key.isdigit()
        token = key if type(key) is int and key >= 0 else int(key) if digits else None
        if token is None:
            fail(f"logit_bias keys must be token ids (integers >= 0), got {key!r}")
        bias = plain_number(bias)
        number = isinstance(bias, (int, float)) and not isinstance(bias, bool)
        if not number or not -LOGIT_BIAS_LIMIT <= bias <= LOGIT_BIAS_LIMIT:
            fail(f"logit_bias values must be numbers in [-100, 100], got {bias!r} for token {token}")
        if token in out:
            fail(f"logit_bias names token {token} twice")
        out[token] = float(bias)
    return tuple(sorted(out.items()))


def check_token_ids(params: SamplingParams, table, knobs: tuple[str, ...] = ("logit_bias", "stop_token_ids")) -> None:
    """Refuse a logit bias or a stop token id (`knobs`) on a token the models' shared vocabulary (`table`, a
    `TokenTable`) does not have, and a stop token id the models never write (a control token the pair masks: it
    would never end a row). A bias on a masked token is taken: it changes nothing, as a ban it is already true."""
    named = {"logit_bias": [token for token, _ in params.logit_bias], "stop_token_ids": params.stop_token_ids}
    for knob in knobs:
        beyond = [token for token in named[knob] if token >= table.size]
        if beyond:
            raise InvalidSamplingParams(f"{knob} names token id {beyond[0]}, but the vocabulary has {table.size} "
                                        f"tokens (ids 0 to {table.size - 1})")
    if "stop_token_ids" in knobs:
        never = [token for token in params.stop_token_ids if not table.allowed[token]]
        if never:
            raise InvalidSamplingParams(f"stop_token_ids names token id {never[0]} ({table.texts[never[0]]!r}), a "
                                        f"control token the models are never allowed to write: it would never stop")


@dataclass(frozen=True)
class RowKnobs:
    """Sampling knobs as per-row tensors (rows of one batch may differ), plus static flags that
    decide which work a step does at all (so a step's shape of work never depends on tensor values)."""

    temperature: torch.Tensor  # (B,) float, 0 = greedy
    top_k: torch.Tensor  # (B,) long, 0 = off
    top_p: torch.Tensor  # (B,) float, 1 = off
    min_p: torch.Tensor  # (B,) float, 0 = off
    presence: torch.Tensor  # (B,) float, 0 = off
    frequency: torch.Tensor  # (B,) float, 0 = off
    repetition: torch.Tensor  # (B,) float, 1 = off
    bias_ids: torch.Tensor  # (B, K) long: the tokens each row's logit bias names (padded with 0, biased by 0)
    bias_values: torch.Tensor  # (B, K) float: their biases
    min_tokens: torch.Tensor  # (B,) long, 0 = off: the row's end tokens are held back until it has this many
    end_ids: torch.Tensor  # (B, E) long: the tokens held back then (the models' end tokens, its stop ids; -1 pads)
    use_top_k: bool = False
    use_top_p: bool = False
    wide_top_k: bool = False  # some row's top_k exceeds the precut: thresholds need a full sort
    all_greedy: bool = False
    unit_temperature: bool = False  # every row at temperature 1 (or greedy): no division by temperatures
    use_counts: bool = False  # some row has a presence or frequency penalty: the rows' token counts are read
    use_repetition: bool = False  # some row has a repetition penalty
    use_bias: bool = False  # some row has a logit bias
    use_min_tokens: bool = False  # some row has min_tokens

    @classmethod
    def of(cls, params: "SamplingParams | list[SamplingParams]", batch: int | None = None,
           device: torch.device | str = "cpu", bias_width: int | None = None, ends: frozenset[int] = frozenset(),
           end_width: int | None = None) -> "RowKnobs":
        """`bias_width`: the width of the logit-bias rows (default: the longest bias among `params`, at least 1; the
        engine keeps `LOGIT_BIAS_MAX`). `ends`: the models' end tokens, which a row with min_tokens holds back with
        its stop token ids, in rows `end_width` wide (default: as wide as the widest row needs, at least 1; the
        engine keeps room for its pair's end tokens and `STOP_TOKEN_IDS_MAX`)."""
        rows = list(params) if isinstance(params, (list, tuple)) else [params] * (batch or 1)
        width = bias_width or max([1, *(len(p.logit_bias) for p in rows)])
        bias_ids = torch.zeros((len(rows), width), dtype=torch.long)
        bias_values = torch.zeros((len(rows), width))
        held = [sorted(set(ends) | set(p.stop_token_ids)) if p.min_tokens else [] for p in rows]
        end_ids = torch.full((len(rows), end_width or max([1, *map(len, held)])), -1, dtype=torch.long)
        for row, p in enumerate(rows):
            if p.logit_bias:
                bias_ids[row, :len(p.logit_bias)] = torch.tensor([token for token, _ in p.logit_bias])
                bias_values[row, :len(p.logit_bias)] = torch.tensor([bias for _, bias in p.logit_bias])
            if held[row]:
                end_ids[row, :len(held[row])] = torch.tensor(held[row])
        top_k = [min(max(p.top_k, 0), 2**62) for p in rows]  # beyond any vocabulary: fits a long
        temperature = [max(p.temperature, MIN_TEMPERATURE) if p.temperature > 0 else 0.0 for p in rows]
        tensor = lambda values, dtype: torch.tensor(values, dtype=dtype, device=device)  # noqa: E731
        floats = lambda name: tensor([getattr(p, name) for p in rows], torch.float32)  # noqa: E731
        return cls(tensor(temperature, torch.float32), tensor(top_k, torch.long), floats("top_p"), floats("min_p"),
                   floats("presence_penalty"), floats("frequency_penalty"), floats("repetition_penalty"),
                   bias_ids.to(device), bias_values.to(device), tensor([p.min_tokens for p in rows], torch.long),
                   end_ids.to(device), *cls.flags(rows))

    @staticmethod
    def flags(rows: "list[SamplingParams]") -> tuple[bool, ...]:
        """The static flags (use_top_k, use_top_p, wide_top_k, all_greedy, unit_temperature, use_counts,
        use_repetition, use_bias, use_min_tokens) of these rows."""
        return (any(p.top_k > 0 for p in rows), any(p.top_p < 1.0 for p in rows),
                any(p.top_k > PRECUT for p in rows), all(p.temperature == 0 for p in rows),
                all(p.temperature in (0, 1) for p in rows),
                any(p.presence_penalty or p.frequency_penalty for p in rows),
                any(p.repetition_penalty != 1 for p in rows), any(p.logit_bias for p in rows),
                any(p.min_tokens for p in rows))

    def rows(self) -> tuple[torch.Tensor, ...]:
        """The per-row tensors: temperature, top_k, top_p, min_p, presence, frequency, repetition, bias_ids,
        bias_values, min_tokens, end_ids."""
        return (self.temperature, self.top_k, self.top_p, self.min_p, self.presence, self.frequency, self.repetition,
                self.bias_ids, self.bias_values, self.min_tokens, self.end_ids)

    def flag_values(self) -> tuple[bool, ...]:
        """The static flags, in `flags`' order."""
        return (self.use_top_k, self.use_top_p, self.wide_top_k, self.all_greedy, self.unit_temperature,
                self.use_counts, self.use_repetition, self.use_bias, self.use_min_tokens)

    @property
    def penalised(self) -> bool:
        """Some row has a penalty: the rows' token counts are read and kept."""
        return self.use_counts or self.use_repetition

    @property
    def reshaped(self) -> bool:
        """Some row draws from other logits than the models' own (a penalty, a logit bias, min_tokens: `penalise`)."""
        return self.penalised or self.use_bias or self.use_min_tokens

    def take(self, rows: torch.Tensor) -> "RowKnobs":
        """The knobs of `rows` (an index tensor), with the same static flags."""
        return RowKnobs(*(tensor[rows] for tensor in self.rows()), *self.flag_values())


def penalise(logits: torch.Tensor, knobs: RowKnobs, counts: torch.Tensor | None,
             prompt: torch.Tensor | None, written: torch.Tensor | None = None) -> torch.Tensor:
    """The logits (B, W) a row's token is drawn from under its logit bias, min_tokens and penalties, in float32, in
    vLLM's order:

        logit bias (OpenAI's): each named token's logit plus its bias
        min_tokens (vLLM's): while the row has written (`written`, (B,) long) fewer tokens, its end tokens -inf
        repetition (transformers' RepetitionPenaltyLogitsProcessor): a logit of a token in the model's own prompt or
            in the text so far is divided by the penalty if positive, multiplied by it if not
        frequency and presence (OpenAI's): logit - frequency x count - presence x (count > 0)

    `counts` (B, >= W): how often each token is in the row's text so far; `prompt` (B, >= W) bool: the tokens of
    the model's own prompt (both may be None where no penalty is on). A row whose bias and penalties are off gets
    its logits back unchanged. A bias on an id past W (a model whose logits are narrower than the shared
    vocabulary: that token is never drawn from it) is dropped. Presence and frequency shift logits by per-token
    constants, so they act on log-probs the same way; the repetition penalty depends on each logit's sign, so it
    needs the raw logits."""
    z = logits.float()
    width = z.shape[-1]
    if knobs.use_bias:
        inside = knobs.bias_ids < width
        z = z.scatter_add(1, knobs.bias_ids.clamp(max=width - 1), torch.where(inside, knobs.bias_values, 0.0))
    if knobs.use_min_tokens:  # -inf added to a held end token, 0 to the rest (and to the padding's stand-in, 0)
        held = (knobs.end_ids >= 0) & (knobs.end_ids < width) & (written < knobs.min_tokens)[:, None]
        z = z.scatter_add(1, knobs.end_ids.clamp(0, width - 1), torch.where(held, -math.inf, 0.0))
    if not knobs.penalised:
        return z
    count = counts[:, :width]
    present = count > 0
    if knobs.use_repetition:
        theta = knobs.repetition[:, None]
        z = torch.where(prompt[:, :width] | present, torch.where(z > 0, z / theta, z * theta), z)
    if knobs.use_counts:
        z = z - knobs.frequency[:, None] * count - knobs.presence[:, None] * present
    return z


def sample(logprobs: torch.Tensor, uniform: torch.Tensor, params: "SamplingParams | RowKnobs",
           *, sync_free: bool = False) -> torch.Tensor:
    """Draw one token per row from `logprobs` (B, V) using one uniform number in [0, 1) per row.

    Greedy rows (temperature 0) take the argmax (the lowest id among tied tokens, as `torch.argmax` and
    transformers' greedy search do); the others draw from `kept_probs` by inverse CDF in vocabulary order,
    so no full sort is needed unless top-p's floor lies beyond the top-PRECUT tokens.
    `sync_free`: never branch on tensor values on the host (a graph-captured or GPU step); the
    result is the same, the work is not: top-p thresholds then always come from a full sort (top-k's
    from the top PRECUT tokens, as on the host, unless some row's k is wider).
    """
    knobs = params if isinstance(params, RowKnobs) else RowKnobs.of(params, logprobs.shape[0], logprobs.device)
    greedy_tokens = logprobs.argmax(dim=-1)
    if knobs.all_greedy:
        return greedy_tokens
    probs = kept_probs(logprobs, knobs, sync_free=sync_free)
    return torch.where(knobs.temperature == 0, greedy_tokens, inverse_cdf(probs, uniform.to(probs.device, probs.dtype)))


def kept_probs(logprobs: torch.Tensor, params: "SamplingParams | RowKnobs", *, sync_free: bool = False) -> torch.Tensor:
    """The distribution each row of `logprobs` (B, V) is sampled from, unnormalised (B, V): softmax(logprobs /
    temperature) on the tokens that top-k, top-p and min-p keep, in that order (transformers' warpers' order),
    0 elsewhere. Each filter is a floor on the scaled log-prob, so tokens tied with a floor stay. Greedy rows
    are scaled as at temperature 1 (`sample` takes their argmax instead)."""
    knobs = params if isinstance(params, RowKnobs) else RowKnobs.of(params, logprobs.shape[0], logprobs.device)
    if knobs.unit_temperature:  # x / 1 is x: the same numbers without a pass over the vocabulary
        scaled = torch.log_softmax(logprobs.float(), dim=-1)
    else:
        temperature = torch.where(knobs.temperature == 0, torch.ones_like(knobs.temperature), knobs.temperature)
        scaled = torch.log_softmax(logprobs.float() / temperature[:, None], dim=-1)
    floor = scaled.amax(dim=-1) + torch.log(knobs.min_p)  # min-p; log(0) = -inf keeps everything
    if knobs.use_top_k or knobs.use_top_p:
        full = knobs.wide_top_k or (sync_free and knobs.use_top_p)  # top-k alone needs the k best only
        floor = torch.maximum(floor, _rank_floor(scaled, knobs, full=full, sync_free=sync_free))
    return torch.where(scaled >= floor[:, None], scaled.exp(), 0.0)


def _search(cdf: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """First index whose cumulative mass exceeds `target` (B, 1), never past where the CDF reaches
    its total (round-off must not land on a zero-probability entry at the end)."""
    position = torch.searchsorted(cdf, target, right=True)
    return torch.minimum(position, torch.searchsorted(cdf, cdf[:, -1:].contiguous()))


def inverse_cdf(probs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """The token i (vocabulary order) with CDF(i-1) <= u * total < CDF(i), for unnormalised `probs` (B, V).

    In two levels, so no scan runs over the whole vocabulary: the cumulative mass of blocks of
    BLOCK tokens picks the block, a scan inside that one block picks the token."""
    batch, vocab = probs.shape
    blocks = -(-vocab // BLOCK)
    if blocks * BLOCK != vocab:  # (Gemma's 262,144 tokens are 256 whole blocks: no copy)
        probs = torch.nn.functional.pad(probs, (0, blocks * BLOCK - vocab))
    padded = probs.reshape(batch, blocks, BLOCK)
    block_cdf = torch.cumsum(padded.sum(-1), dim=-1)  # (B, blocks)
    target = uniform[:, None] * block_cdf[:, -1:]
    block = _search(block_cdf, target)  # (B, 1)
    before = torch.where(block > 0, block_cdf.gather(-1, (block - 1).clamp(min=0)), 0.0)
    inside = padded.gather(1, block[:, :, None].expand(batch, 1, BLOCK)).squeeze(1)  # (B, BLOCK)
    position = _search(before + torch.cumsum(inside, dim=-1), target)
    return (block * BLOCK + position).squeeze(-1).clamp(max=vocab - 1)


def _rank_floor(scaled: torch.Tensor, knobs: RowKnobs, *, full: bool, sync_free: bool) -> torch.Tensor:
    """Per row, the lowest scaled log-prob that top-k and top-p keep (-inf where both are off).

    Top-k keeps the k best tokens and every token tied with the k-th; top-p then keeps the smallest head
    of that renormalised distribution whose mass reaches top_p: the token where the cumulative mass
    crosses top_p is the floor (as transformers' TopKLogitsWarper and TopPLogitsWarper do, except that a
    floor keeps all the tokens tied with the crossing one). Only the sorted head is needed: the top
    PRECUT tokens, or all of them (`full`).
    """
    vocab = scaled.shape[-1]
    values = (torch.sort(scaled, dim=-1, descending=True).values if full
              else torch.topk(scaled, min(PRECUT, vocab), dim=-1).values)
    width = values.shape[-1]
    k = knobs.top_k.clamp(max=width)
    floor = torch.full_like(scaled[:, 0], -math.inf)
    kth = values.gather(-1, (k - 1).clamp(min=0)[:, None]).squeeze(-1)
    if knobs.use_top_k:
        floor = torch.where(k > 0, kth, floor)
    if not knobs.use_top_p:
        return floor
    in_top_k = (values >= kth[:, None]) | (k[:, None] == 0)  # a prefix of the sorted head, ties included
    head = values.masked_fill(~in_top_k, -math.inf)
    head = torch.where(k[:, None] > 0, torch.log_softmax(head, dim=-1), head)  # renormalised over top-k
    probs = head.exp()
    mass_before = torch.cumsum(probs, dim=-1) - probs  # the top token always survives
    # at least the top token: a top_p below float32's smallest number (5e-324) reads as 0 here
    count = ((mass_before < knobs.top_p[:, None]) & in_top_k).sum(-1).clamp(min=1)
    crossing = values.gather(-1, (count - 1)[:, None]).squeeze(-1)
    on = knobs.top_p < 1.0
    floor = torch.where(on, torch.maximum(floor, crossing), floor)
    if not full and width < vocab and not sync_free:
        # the crossing lies beyond the head (it holds less mass than top_p), or the tokens tied with the k-th run
        # past its end (top-k's renormalisation needs them all): sort these rows fully
        short = on & torch.where(k == 0, probs.sum(-1) < knobs.top_p, values[:, -1] >= kth)
        if bool(short.any()):
            rows = short.nonzero().squeeze(-1)
            floor[rows] = _rank_floor(scaled[rows], knobs.take(rows), full=True, sync_free=False)
    return floor
