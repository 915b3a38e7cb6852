"""What a router sees at one step, and what it answers."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from baco.errors import BacoError
from baco.vocab import TokenTable


@dataclass
class StepView:
    """Both models' next-token distributions for the active rows of one lockstep step.

    Log-probs are the models' own distributions (temperature 1, control tokens masked), shape (B, V).
    `uniform` holds one router-owned random number in [0, 1) per row (for RAND), drawn from the
    row's own stream so a row's routes do not depend on its batch neighbours.
    """

    base_logprobs: torch.Tensor
    aligned_logprobs: torch.Tensor
    vocab: TokenTable
    uniform: torch.Tensor
    step: int = 0
    prompts: list[str] | None = None  # the active rows' prompts (for routers that read text, e.g. JUDGE)
    texts: list[str] | None = None  # the active rows' continuations so far
    anchor_logprobs: torch.Tensor | None = None  # a third model's log-probs (proxy-tuning's small base), if any
    previous: torch.Tensor | None = None  # (B,) each row's last written token (-1: none yet), or None: not known

    @property
    def batch_size(self) -> int:
        return self.base_logprobs.shape[0]

    @cached_property
    def _base_top1(self) -> tuple[torch.Tensor, torch.Tensor]:
        value, index = self.base_logprobs.max(dim=-1)
        return value.exp(), index

    @cached_property
    def _aligned_top1(self) -> tuple[torch.Tensor, torch.Tensor]:
        value, index = self.aligned_logprobs.max(dim=-1)
        return value.exp(), index

    @property
    def base_top1_prob(self) -> torch.Tensor:
        return self._base_top1[0]

    @property
    def base_top1_token(self) -> torch.Tensor:
        return self._base_top1[1]

    @property
    def aligned_top1_prob(self) -> torch.Tensor:
        return self._aligned_top1[0]

    @property
    def aligned_top1_token(self) -> torch.Tensor:
        return self._aligned_top1[1]

    @cached_property
    def base_entropy(self) -> torch.Tensor:
        """H = -sum p log p in nats."""
        return torch.special.entr(self.base_logprobs.exp()).sum(-1)

    @cached_property
    def aligned_entropy(self) -> torch.Tensor:
        return torch.special.entr(self.aligned_logprobs.exp()).sum(-1)


@dataclass
class Route:
    """A router's answer: which rows the base model writes, and why, as an integer code per row.

    `codes[i]` indexes `names` (e.g. 0 = "base-uncertain", 1 = "base-confident"): reasons stay on the
    device as integers, so a step needs no host synchronisation; `reason` builds the strings (host).
    Soft methods (EFT, contrastive guidance) set `mix`: (B, V) log-probs that every row draws from
    instead of either model's own distribution (with the aligned model's random stream); their
    tokens are recorded with source "mix" and `use_base` is ignored.
    """

    use_base: torch.Tensor  # (B,) bool
    codes: torch.Tensor  # (B,) long, indices into names
    names: tuple[str, ...]
    mix: torch.Tensor | None = None
    writer: bool | None = None  # known before the step (`fixed`): True = base for every row; no switch to rule on

    @property
    def reason(self) -> list[str]:
        """The reason string of every row (copies the codes to the host)."""
        return [self.names[c] for c in self.codes.tolist()]

    @classmethod
    def where(cls, use_base: torch.Tensor, if_base: str, if_aligned: str) -> "Route":
        """Rows where `use_base` (a bool tensor, one entry per row) holds go to the base model with reason
        `if_base`, the others to the aligned model with `if_aligned`."""
        problem = mask_problem(use_base)
        if problem:
            raise BacoError(f"Route.where takes a bool tensor with one entry per row (e.g. view.base_top1_prob < "
                            f"threshold), got {problem}")
        return cls(use_base, (~use_base).long(), (if_base, if_aligned))

    @classmethod
    def mixed(cls, logprobs: torch.Tensor, reason: str) -> "Route":
        batch, device = logprobs.shape[0], logprobs.device
        return cls(torch.zeros(batch, dtype=torch.bool, device=device),
                   torch.zeros(batch, dtype=torch.long, device=device), (reason,), logprobs)

    @classmethod
    def fixed(cls, like: torch.Tensor, use_base: bool, reason: str) -> "Route":
        """Every row the same: `like` is any (B, ...) tensor of the step (gives batch size and device)."""
        batch, device = like.shape[0], like.device
        return cls(torch.full((batch,), use_base, dtype=torch.bool, device=device),
                   torch.zeros(batch, dtype=torch.long, device=device), (reason,), writer=use_base)

    @classmethod
    def from_reasons(cls, use_base: torch.Tensor, reasons: list[str]) -> "Route":
        """From one reason string per row (routers that decide on the host, such as JUDGE)."""
        names = tuple(dict.fromkeys(reasons))
        codes = torch.tensor([names.index(r) for r in reasons], dtype=torch.long, device=use_base.device)
        return cls(use_base, codes, names)

    def prefer_aligned(self, rule: torch.Tensor, reason: str) -> "Route":
        """Rows where `rule` holds go to the aligned model with `reason`; the others keep this route."""
        names = self.names if reason in self.names else self.names + (reason,)
        code = torch.full_like(self.codes, names.index(reason))
        return Route(self.use_base & ~rule, torch.where(rule, code, self.codes), names, self.mix)


def mask_problem(use_base) -> str | None:
    """What keeps `use_base` from being a bool tensor (said as what it is instead), or None."""
    if not isinstance(use_base, torch.Tensor):
        return type(use_base).__name__
    return None if use_base.dtype == torch.bool else f"a {use_base.dtype} tensor"


def route_problem(route: Route, view: StepView) -> str | None:
    """What makes `route` unusable for the step of `view` (said after "returned"), or None. Only shapes and
    dtypes are read, never values: checking costs no host synchronisation (a captured GPU step)."""
    rows, vocab = view.batch_size, view.base_logprobs.shape[-1]
    problem = mask_problem(route.use_base)
    if problem:
        return f"use_base as {problem}, not a bool tensor"
    if tuple(route.use_base.shape) != (rows,):
        return f"use_base of shape {tuple(route.use_base.shape)}, not one entry per row of the step ({rows},)"
    if (not isinstance(route.codes, torch.Tensor) or route.codes.dtype.is_floating_point
            or route.codes.dtype == torch.bool or route.codes.is_complex()):
        return "codes that are not an integer tensor (indices into names)"
    if tuple(route.codes.shape) != (rows,):
        return f"codes of shape {tuple(route.codes.shape)}, not one entry per row of the step ({rows},)"
    if not route.names or not all(isinstance(name, str) for name in route.names):
        return f"names {route.names!r}, not a tuple of reason strings"
    if route.mix is not None and (not isinstance(route.mix, torch.Tensor) or tuple(route.mix.shape) != (rows, vocab)):
        shape = tuple(route.mix.shape) if isinstance(route.mix, torch.Tensor) else type(route.mix).__name__
        return f"mix of shape {shape}, not the step's log-probs' ({rows}, {vocab})"
    return None
