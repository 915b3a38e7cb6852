"""What a router sees at one step, and what it answers."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

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
    """A router's answer: which rows the base model writes, and a short reason per row.

    Soft methods (EFT, contrastive guidance) set `mix`: (B, V) log-probs that every row draws from
    instead of either model's own distribution (with the aligned model's random stream); their
    tokens are recorded with source "mix" and `use_base` is ignored.
    """

    use_base: torch.Tensor  # (B,) bool
    reason: list[str]
    mix: torch.Tensor | None = None

    @classmethod
    def where(cls, use_base: torch.Tensor, if_base: str, if_aligned: str) -> "Route":
        return cls(use_base, [if_base if b else if_aligned for b in use_base.tolist()])

    @classmethod
    def mixed(cls, logprobs: torch.Tensor, reason: str) -> "Route":
        batch = logprobs.shape[0]
        return cls(torch.zeros(batch, dtype=torch.bool), [reason] * batch, logprobs)

    @classmethod
    def fixed(cls, batch_size: int, use_base: bool, reason: str) -> "Route":
        return cls(torch.full((batch_size,), use_base, dtype=torch.bool), [reason] * batch_size)
