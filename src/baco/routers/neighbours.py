"""The baselines that share BACo's engine: Nudging (a hard router) and soft mixtures over one vocabulary.

- `nudge:G` (Fei et al., 2024): the base model writes; where its top-1 prob < G the aligned model
  writes, and by the word rule it finishes the word it began; then the base model continues.
  This is BACo-P with the roles reversed. G = 0 is base alone.
- `eft:B` (emulated fine-tuning / proxy-tuning arithmetic on one model size): draw from
  softmax((1 - B) log p_base + B log p_aligned) = p_base^(1-B) p_aligned^B, renormalised.
  B = 0 is base alone, B = 1 aligned alone, B > 1 extrapolates past the aligned model.
- `proxy:B` (proxy-tuning, Liu et al. 2024): draw from softmax(log p_base + B (log p_aligned - log p_anchor)),
  where the anchor is an optional third model, the aligned model's own untuned base (e.g. a small
  base + small aligned pair steering a large base: `Collaboration.from_pretrained(large_base,
  small_aligned, anchor=small_base)`). Without an anchor, the anchor is the base model itself and
  `proxy:B` is `eft:B`. B = 0 is base alone.
- `contrast:W` (contrastive guidance, STEER / DExperts style): draw from
  softmax((1 + W) log p_aligned - W log p_base): the aligned distribution pushed away from what the
  base model would say. W = 0 is aligned alone.

Soft methods weigh log-probs, so they are computed on the models' temperature-1 distributions
(control tokens masked) and the sampling knobs (temperature, top-p, min-p) apply to the result.
At the end points they hand the step to the single model, so `eft:0`, `eft:1` and `contrast:0`
reproduce base alone / aligned alone token for token.
"""

from __future__ import annotations

import math

import torch

from baco.routers.registry import register, split_spec
from baco.routers.view import Route, StepView

# log-probs below this are treated as this (exp(-1e4) is 0 in float32): keeps 0 * -inf out of the mix
FLOOR = -1e4
# The largest mixture weight: a weight multiplies log-probs down to FLOOR, and past ~1e34 that overflows float32
# (inf - inf: NaN, an empty sample). Far below it the mixture is already its direction's argmax.
MAX_WEIGHT = 1e6


def _or(logprobs: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """`logprobs`, with `other`'s value where it is -inf: a token one model does not have (a row past its logits,
    e.g. an end-of-turn token added to the aligned model's vocabulary) is scored by the model that has it, so a
    mixture neither gives it all the mass (contrast: -w x -inf) nor none (EFT). Masked ids are -inf in both."""
    return torch.where(logprobs == -math.inf, other, logprobs)


def log_mix(view: StepView, base_weight: float, aligned_weight: float) -> torch.Tensor:
    """log softmax(base_weight * log p_base + aligned_weight * log p_aligned); masked ids stay -inf."""
    base = _or(view.base_logprobs, view.aligned_logprobs).clamp(min=FLOOR)
    aligned = _or(view.aligned_logprobs, view.base_logprobs).clamp(min=FLOOR)
    logits = base_weight * base + aligned_weight * aligned
    logits = logits.masked_fill(~view.vocab.allowed, -math.inf)
    return torch.log_softmax(logits, dim=-1)


@register("nudge", param="threshold", default=0.3, low=0.0,
          help="Nudging: base writes; aligned writes the next word where base top-1 prob < threshold")
def nudge_router(view: StepView, threshold: float) -> Route:
    return Route.where(view.base_top1_prob >= threshold, "base-confident", "nudge")


@register("eft", param="beta", default=0.5, low=0.0, high=MAX_WEIGHT,
          help="EFT/proxy mixture: p_base^(1-beta) * p_aligned^beta (0 = base, 1 = aligned)")
def eft_router(view: StepView, beta: float) -> Route:
    if beta == 0:
        return Route.fixed(view.base_logprobs, True, "eft-endpoint")
    if beta == 1:
        return Route.fixed(view.base_logprobs, False, "eft-endpoint")
    return Route.mixed(log_mix(view, 1.0 - beta, beta), f"eft:{beta:g}")


@register("proxy", param="beta", default=1.0, low=0.0, high=MAX_WEIGHT,
          help="proxy-tuning: p_base * (p_aligned / p_anchor)^beta, anchor = a third model (or the base)")
def proxy_router(view: StepView, beta: float) -> Route:
    if view.anchor_logprobs is None:
        return eft_router(view, beta)
    if beta == 0:
        return Route.fixed(view.base_logprobs, True, "proxy-endpoint")
    base = _or(view.base_logprobs, view.aligned_logprobs).clamp(min=FLOOR)
    aligned = _or(view.aligned_logprobs, view.base_logprobs).clamp(min=FLOOR)
    offset = aligned - _or(view.anchor_logprobs, aligned).clamp(min=FLOOR)
    logits = (base + beta * offset).masked_fill(~view.vocab.allowed, -math.inf)
    return Route.mixed(torch.log_softmax(logits, dim=-1), f"proxy:{beta:g}")


def reads_anchor(router: str) -> bool:
    """Whether a router (`name[:value]`) reads the anchor, proxy-tuning's third model: `proxy` alone."""
    return split_spec(router)[0] == "proxy"


@register("contrast", param="weight", default=0.5, low=0.0, high=MAX_WEIGHT,
          help="contrastive guidance: p_aligned^(1+w) / p_base^w (0 = aligned)")
def contrast_router(view: StepView, weight: float) -> Route:
    if weight == 0:
        return Route.fixed(view.base_logprobs, False, "contrast-endpoint")
    return Route.mixed(log_mix(view, -weight, 1.0 + weight), f"contrast:{weight:g}")
