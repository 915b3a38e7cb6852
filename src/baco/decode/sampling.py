"""Sampling knobs (one validated dataclass) and the sampler that turns log-probs into tokens.

The sampler is deterministic given one uniform number per row: the caller owns the random
streams (one per row and per model, see `decode/loop.py`), so a sample does not depend on
which other rows share its batch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

from baco.errors import InvalidSamplingParams

# Exact top-p needs the full sorted distribution; over a 262k vocabulary a full sort is slow.
# Sort only the top PRECUT tokens and fall back to a full sort for rows whose top PRECUT
# tokens hold less than top_p of the mass (flat distributions at high temperature).
PRECUT = 1024


@dataclass(frozen=True)
class SamplingParams:
    """Generation knobs shared by every method, the CLI and the server.

    temperature: 0 means greedy; top_p in (0, 1]; top_k 0 (or -1) disables it; min_p in [0, 1]
    keeps tokens with prob >= min_p * max prob. Order: temperature, top-k, top-p, min-p.
    seed: None draws a fresh seed (recorded with every sample). stop: extra stop strings.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    max_new_tokens: int = 256
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
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
        if not isinstance(self.stop, (str, list, tuple)):
            fail(f"stop must be a string or a list of strings, got {self.stop!r}")
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        if any(not isinstance(s, str) or not s for s in stop):
            fail(f"stop strings must be non-empty strings, got {self.stop!r}")
        object.__setattr__(self, "stop", stop)

    def to_dict(self) -> dict:
        return {**asdict(self), "stop": list(self.stop)}


def sample(logprobs: torch.Tensor, uniform: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Draw one token per row from `logprobs` (B, V) using one uniform number in [0, 1) per row.

    Inverse-CDF sampling from softmax(logprobs / temperature) after top-k, top-p and min-p.
    """
    if params.temperature == 0:
        return logprobs.argmax(dim=-1)
    scaled = torch.log_softmax(logprobs.float() / params.temperature, dim=-1)
    vocab = scaled.shape[-1]
    if params.top_k <= 0 and params.top_p >= 1.0 and params.min_p == 0.0:
        return _inverse_cdf(scaled.exp(), uniform, None)
    if params.top_k > 0:
        # top-k first; later filters act on the renormalised top-k distribution
        values, indices = torch.topk(scaled, min(params.top_k, vocab), dim=-1)
        values = torch.log_softmax(values, dim=-1)
    else:
        values, indices = torch.topk(scaled, min(PRECUT, vocab), dim=-1)
        if values.shape[-1] < vocab and not _precut_suffices(values, params):
            values, indices = torch.sort(scaled, dim=-1, descending=True)
    if params.top_p < 1.0:
        probs = values.exp()
        mass_before = torch.cumsum(probs, dim=-1) - probs  # the top token always survives
        values = values.masked_fill(mass_before >= params.top_p, -math.inf)
    if params.min_p > 0.0:
        values = values.masked_fill(values < values[:, :1] + math.log(params.min_p), -math.inf)
    return _inverse_cdf(torch.softmax(values, dim=-1), uniform, indices)


def _precut_suffices(values: torch.Tensor, params: SamplingParams) -> bool:
    """True when the sorted precut (normalised log-probs) holds every token top-p and min-p keep."""
    ok = torch.ones(values.shape[0], dtype=torch.bool, device=values.device)
    if params.top_p < 1.0:
        ok &= values.exp().sum(-1) >= params.top_p
    if params.min_p > 0.0:
        ok &= values[:, -1] < values[:, 0] + math.log(params.min_p)
    return bool(ok.all())


def _inverse_cdf(probs: torch.Tensor, uniform: torch.Tensor, indices: torch.Tensor | None) -> torch.Tensor:
    cdf = torch.cumsum(probs, dim=-1)
    target = (uniform.to(cdf.device, cdf.dtype) * cdf[:, -1]).unsqueeze(-1)
    position = torch.searchsorted(cdf, target, right=True)
    # round-off at the CDF's end must not land on a zero-probability token
    last_kept = probs.shape[-1] - 1 - (probs > 0).flip(-1).int().argmax(-1, keepdim=True)
    position = torch.minimum(position, last_kept)
    return position.squeeze(-1) if indices is None else indices.gather(-1, position).squeeze(-1)
