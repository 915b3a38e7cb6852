"""The paper's routers as pure functions of a StepView (../docs/routers.md explains each choice).

Conventions: `p`, `h` and `rand` look at the base model, whose uncertainty marks places where
many continuations are plausible, so diversity is cheap there. `punc` and `fc` look at the
*aligned* model's top-1 prediction: the aligned model knows the answer's format (list markers,
newlines, when to end its turn), and the base model never predicts a chat turn's end.
Combined routers apply the content rule first, then the threshold.
"""

from __future__ import annotations

import torch

from baco.routers.registry import register
from baco.routers.view import Route, StepView


@register("base", help="always the base model (base alone)")
def base_only(view: StepView) -> Route:
    return Route.fixed(view.base_logprobs, True, "base")


@register("aligned", help="always the aligned model (aligned alone)")
def aligned_only(view: StepView) -> Route:
    return Route.fixed(view.base_logprobs, False, "aligned")


@register("p", param="threshold", default=0.5, low=0.0,
          help="BACo-P: base when the base model's top-1 prob < threshold")
def p_router(view: StepView, threshold: float) -> Route:
    return Route.where(view.base_top1_prob < threshold, "base-uncertain", "base-confident")


@register("h", param="threshold", default=2.0, low=0.0,
          help="BACo-H: base when the base model's entropy (nats) > threshold")
def h_router(view: StepView, threshold: float) -> Route:
    return Route.where(view.base_entropy > threshold, "high-entropy", "low-entropy")


def predicts_punct(view: StepView) -> torch.Tensor:
    """The aligned model's top-1 token is punctuation, formatting or a stop token."""
    return view.vocab.is_punct[view.aligned_top1_token]


def predicts_function_word(view: StepView) -> torch.Tensor:
    """The aligned model's top-1 token starts a closed-class (function) word: with its leading space (" the"), or,
    where the view knows each row's last token, without one after a line break, punctuation or at the start of
    the answer ("The" as the first word of a line)."""
    token, vocab = view.aligned_top1_token, view.vocab
    starts = vocab.is_function_word[token]
    previous = getattr(view, "previous", None)
    if previous is not None:
        starts = starts | (vocab.is_function_text[token] & ~vocab.mid_word(previous))
    return starts


def _aligned_first(rule: torch.Tensor, rule_reason: str, otherwise: Route) -> Route:
    """Rows where `rule` holds go to the aligned model; the rest follow `otherwise`."""
    return otherwise.prefer_aligned(rule, rule_reason)


@register("punc", help="BACo-PUNC: aligned writes predicted punctuation/formatting, base the rest")
def punc_router(view: StepView) -> Route:
    return Route.where(~predicts_punct(view), "not-punct", "punct")


@register("fc", help="BACo-FC: aligned writes predicted function words, base the content words")
def fc_router(view: StepView) -> Route:
    return Route.where(~predicts_function_word(view), "content-word", "function-word")


@register("p-punc", param="threshold", default=0.5, low=0.0,
          help="BACo-P-PUNC: punctuation -> aligned, else base when base top-1 prob < threshold")
def p_punc_router(view: StepView, threshold: float) -> Route:
    return _aligned_first(predicts_punct(view), "punct", p_router(view, threshold))


@register("h-punc", param="threshold", default=2.0, low=0.0,
          help="BACo-H-PUNC: punctuation -> aligned, else base when base entropy > threshold")
def h_punc_router(view: StepView, threshold: float) -> Route:
    return _aligned_first(predicts_punct(view), "punct", h_router(view, threshold))


@register("p-fc", param="threshold", default=0.5, low=0.0,
          help="BACo-P-FC: function words -> aligned, else base when base top-1 prob < threshold")
def p_fc_router(view: StepView, threshold: float) -> Route:
    return _aligned_first(predicts_function_word(view), "function-word", p_router(view, threshold))


@register("rand", param="prob", default=0.5, low=0.0, high=1.0,
          help="RAND ablation: base with probability prob at each word")
def rand_router(view: StepView, prob: float) -> Route:
    return Route.where(view.uniform < prob, "random-base", "random-aligned")
