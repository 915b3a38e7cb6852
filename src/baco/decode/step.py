"""One BACo step on the rows' next-token distributions: route, apply the word rule, draw. Pure tensor code.

    view  = StepView(base log-probs, aligned log-probs, ...)
    route = router(view)                            # which rows the base model writes, and why (codes)
    token = sample(writer's log-probs, writer's own random number)
    word rule: a switch of writer in the middle of a word stands only if the new writer's token
               starts a new word; otherwise the previous writer keeps the turn and draws instead
    soft methods (route.mix): every row draws from the mixed distribution (aligned stream)

With `sync_free`, nothing here reads a tensor's value on the host: both models draw for every row (each
with its own random stream) and `torch.where` picks the writer's token, or the other's where the word
rule blocks, so the step can be captured as a CUDA graph. Without it (the CPU), the other model draws
only for the rows that need it. The tokens are the same either way. A route whose writer is fixed
(`Route.fixed`: base alone, aligned alone, the mixtures' endpoints) never switches, so only its writer
draws.

Penalties (`sampling.penalise`) change only what is drawn: the caller passes `draw`, a view of the penalised
distributions; the router reads `view` (the models' own), and the recorded statistics and probabilities are the
models' own too. A soft method's mixture is the router's mixture of the penalised distributions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from baco.decode.sampling import RowKnobs, sample
from baco.routers.view import StepView

BASE_STREAM, ALIGNED_STREAM, ROUTER_STREAM = 0, 1, 2
WORD_CONTINUATION = "word-continuation"


@dataclass
class Drawn:
    """The step's outcome for its rows: all (b,) tensors on the models' device."""

    tokens: torch.Tensor
    use_base: torch.Tensor
    codes: torch.Tensor  # reason codes, indices into `names`
    names: tuple[str, ...]
    stats: torch.Tensor  # (4, b): base top-1 prob, base entropy, aligned top-1 prob, chosen prob
    mixed: bool
    top: tuple[torch.Tensor, torch.Tensor] | None = None  # (b, k) log-probs and ids of the writer's k best tokens


def route_and_draw(view: StepView, router, uniforms: torch.Tensor, previous: torch.Tensor,
                   previous_base: torch.Tensor, knobs: RowKnobs, *, sync_free: bool, top: int = 0,
                   draw: StepView | None = None) -> Drawn:
    """Route every row, draw its token. `uniforms` (b, 3): this step's number from each row's base,
    aligned and router streams; `previous`/`previous_base`: the row's last token (-1: none) and writer.
    `top` > 0: also the `top` most likely tokens of the distribution each row's token was drawn from
    (its writer's, or the mixture's; temperature 1, like `chosen_prob`; before penalties). `draw`: the
    distributions to draw from, when they are not the view's (penalised ones)."""
    route = router(view)
    base_lp, aligned_lp = view.base_logprobs, view.aligned_logprobs
    draw_base, draw_aligned = (base_lp, aligned_lp) if draw is None else (draw.base_logprobs, draw.aligned_logprobs)
    if route.mix is not None:  # a soft method: one mixed distribution, no writer to switch
        mix = router(draw).mix if draw is not None else route.mix
        tokens = sample(mix, uniforms[:, ALIGNED_STREAM], knobs, sync_free=sync_free)
        chosen = route.mix.gather(-1, tokens[:, None]).squeeze(-1)
        use_base, codes, names = route.use_base, route.codes, route.names
        writer = route.mix
    else:
        use_base, codes, names = route.use_base.to(base_lp.device), route.codes.to(base_lp.device), route.names
        names = names + (WORD_CONTINUATION,)
        if route.writer is not None:  # one writer for every row at every step: it never switches mid-word
            stream = BASE_STREAM if route.writer else ALIGNED_STREAM
            tokens = sample(draw_base if route.writer else draw_aligned, uniforms[:, stream], knobs,
                            sync_free=sync_free)
            blocked = torch.zeros_like(use_base)
        elif sync_free:  # both models' draws, each row then takes its writer's (or, blocked, the other's)
            from_base = sample(draw_base, uniforms[:, BASE_STREAM], knobs, sync_free=True)
            from_aligned = sample(draw_aligned, uniforms[:, ALIGNED_STREAM], knobs, sync_free=True)
            tokens = torch.where(use_base, from_base, from_aligned)
            blocked = _blocked(view, previous, previous_base, use_base, tokens)
            tokens = torch.where(blocked, torch.where(use_base, from_aligned, from_base), tokens)
        else:  # the writer's draw; the other model draws only for the rows the word rule blocks
            tokens = _draw(draw_base, draw_aligned, use_base, uniforms, knobs, sync_free)
            blocked = _blocked(view, previous, previous_base, use_base, tokens)
            if bool(blocked.any()):
                rows = blocked.nonzero().squeeze(-1)
                tokens = tokens.clone()
                tokens[rows] = _draw(draw_base[rows], draw_aligned[rows], ~use_base[rows], uniforms[rows],
                                     knobs.take(rows), sync_free)
        use_base = torch.where(blocked, ~use_base, use_base)
        codes = torch.where(blocked, torch.full_like(codes, len(names) - 1), codes)
        picked = tokens[:, None]
        chosen = torch.where(use_base, base_lp.gather(-1, picked).squeeze(-1), aligned_lp.gather(-1, picked).squeeze(-1))
        writer = torch.where(use_base[:, None], base_lp, aligned_lp) if top else None
    stats = torch.stack([view.base_top1_prob, view.base_entropy, view.aligned_top1_prob, chosen.exp()])
    best = torch.topk(writer.float(), top, dim=-1) if top else None
    return Drawn(tokens, use_base, codes, names, stats, route.mix is not None,
                 (best.values, best.indices) if best is not None else None)


def _blocked(view: StepView, previous: torch.Tensor, previous_base: torch.Tensor, use_base: torch.Tensor,
             tokens: torch.Tensor) -> torch.Tensor:
    """The word rule: rows whose writer changes in the middle of a word (the previous token ends in a word
    character) with a token that continues that word."""
    return view.vocab.mid_word(previous) & (use_base != previous_base) & view.vocab.continues_word[tokens]


def _draw(base_lp: torch.Tensor, aligned_lp: torch.Tensor, use_base: torch.Tensor, uniforms: torch.Tensor,
          knobs: RowKnobs, sync_free: bool) -> torch.Tensor:
    """Sample each row from its chosen model, with that model's own random number."""
    chosen = torch.where(use_base[:, None], base_lp, aligned_lp)
    u = torch.where(use_base, uniforms[:, BASE_STREAM], uniforms[:, ALIGNED_STREAM])
    return sample(chosen, u, knobs, sync_free=sync_free)
