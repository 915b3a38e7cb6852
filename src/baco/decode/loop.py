"""The lockstep loop: both models score the shared continuation, a router picks the writer, one token is drawn.

    prefill both models (each on its own rendering of the request)
    repeat:
        (base_logprobs, aligned_logprobs) = pair distributions for the active rows
        route = router(StepView(...))                   # which rows the base model writes
        apply the word rule                             # a word is finished by the model that began it
        token = sample(chosen model's logprobs, the chosen model's random number for this row and step)
        yield the step (tokens, writers, reasons, per-token statistics, rows that finished)
        drop finished rows from both caches; append the token to both models' contexts

Word rule: when the router asks to switch writers while the previous token ended in a word
character (letter or digit), the new writer's token is kept only if it starts a new word
(begins with a space, punctuation or a symbol); if it would continue the word, the previous
writer keeps the turn and draws the token instead (reason "word-continuation").

Randomness: every row owns three streams of uniform numbers, seeded from (seed, prompt,
sample index): one for the base model's draws, one for the aligned model's, one for the router.
A row's output therefore does not depend on its batch neighbours, and routing every token to
one model reproduces that model alone, draw for draw.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Iterator

import torch

from baco.decode.sampling import SamplingParams, sample
from baco.models.pair import ModelPair
from baco.routers import Router, StepView

BASE_STREAM, ALIGNED_STREAM, ROUTER_STREAM = 0, 1, 2


@dataclass
class Request:
    """One row of a lockstep batch: sample `sample_index` of prompt `prompt_index`."""

    prompt: str
    prompt_index: int
    sample_index: int
    base_ids: list[int]
    aligned_ids: list[int]
    seed: int
    max_new_tokens: int


@dataclass
class StepEvent:
    """What happened at one step, for the rows active at that step (all tensors are (b,) on CPU)."""

    step: int
    rows: list[int]  # indices into the request list
    tokens: torch.Tensor
    use_base: torch.Tensor
    reasons: list[str]
    base_top1_prob: torch.Tensor
    base_entropy: torch.Tensor
    aligned_top1_prob: torch.Tensor
    chosen_prob: torch.Tensor
    finished: dict[int, str] = field(default_factory=dict)  # request index -> "stop" | "length"
    mixed: bool = False  # a soft method drew every token of this step from a mixed distribution


def row_seed(seed: int, prompt: str, sample_index: int) -> int:
    """A 63-bit seed per (seed, prompt text, sample index), stable across runs and batchings."""
    digest = hashlib.sha256(f"{seed}\x00{sample_index}\x00{prompt}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _uniforms(requests: list[Request], steps: int) -> torch.Tensor:
    """(N, 3, steps) uniform numbers: per row, the base, aligned and router streams (drawn on the CPU,
    so a seed gives the same numbers on every device)."""
    out = torch.empty((len(requests), 3, steps))
    for i, request in enumerate(requests):
        generator = torch.Generator().manual_seed(request.seed)
        out[i] = torch.rand((3, steps), generator=generator)
    return out


def lockstep(pair: ModelPair, requests: list[Request], router: Router, params: SamplingParams,
             stop_strings: tuple[str, ...] = ()) -> Iterator[StepEvent]:
    """Decode all requests as rows of one batch; yield one StepEvent per step until every row stops.

    Distributions, routing and sampling stay on the pair's device; each step copies only the (b,)
    tokens, writers and statistics to the CPU for the event."""
    if not requests:
        return
    vocab, device = pair.vocab, pair.device
    longest = max(r.max_new_tokens for r in requests)
    uniforms = _uniforms(requests, longest).to(device)
    prev_token = torch.full((len(requests),), -1, dtype=torch.long, device=device)
    prev_base = torch.zeros(len(requests), dtype=torch.bool, device=device)
    texts = [""] * len(requests)
    tail = max((len(s) for s in stop_strings), default=0)

    active = list(range(len(requests)))
    session = pair.start([r.base_ids for r in requests], [r.aligned_ids for r in requests])
    base_lp, aligned_lp = session.logprobs()
    for step in range(longest):
        rows = torch.tensor(active, device=device)
        view = StepView(base_lp, aligned_lp, vocab, uniforms[rows, ROUTER_STREAM, step], step,
                        prompts=[requests[i].prompt for i in active], texts=[texts[i] for i in active],
                        anchor_logprobs=session.anchor_logprobs())
        route = router(view)
        use_base, reasons = route.use_base.to(device, copy=True), list(route.reason)
        if route.mix is not None:  # a soft method: one mixed distribution, no writer to switch
            tokens = sample(route.mix, uniforms[rows, ALIGNED_STREAM, step], params)
            chosen_lp = route.mix.gather(-1, tokens[:, None]).squeeze(-1)
        else:
            tokens, use_base = _draw_with_word_rule(base_lp, aligned_lp, use_base, reasons, prev_token[rows],
                                                    prev_base[rows], uniforms[rows, :, step], vocab, params)
            picked = tokens[:, None]
            chosen_lp = torch.where(use_base, base_lp.gather(-1, picked).squeeze(-1),
                                    aligned_lp.gather(-1, picked).squeeze(-1))
        stats = torch.stack([view.base_top1_prob, view.base_entropy, view.aligned_top1_prob, chosen_lp.exp()]).cpu()
        event = StepEvent(
            step=step, rows=list(active), tokens=tokens.cpu(), use_base=use_base.cpu(), reasons=reasons,
            base_top1_prob=stats[0], base_entropy=stats[1], aligned_top1_prob=stats[2], chosen_prob=stats[3],
            mixed=route.mix is not None,
        )
        for request_index, token in zip(active, event.tokens.tolist()):
            texts[request_index] += vocab.texts[token]
            if token in vocab.stop_ids:
                event.finished[request_index] = "stop"
            elif tail and any(s in texts[request_index][-(tail + len(vocab.texts[token])):] for s in stop_strings):
                event.finished[request_index] = "stop"
            elif step + 1 >= requests[request_index].max_new_tokens:
                event.finished[request_index] = "length"
        prev_token[rows], prev_base[rows] = tokens, use_base
        yield event

        keep = [i for i, request_index in enumerate(active) if request_index not in event.finished]
        if not keep:
            return
        if len(keep) < len(active):
            keep_rows = torch.tensor(keep, device=device)
            session.keep(keep_rows)
            tokens = tokens[keep_rows]
            active = [active[i] for i in keep]
        base_lp, aligned_lp = session.step(tokens)


def _draw_with_word_rule(base_lp: torch.Tensor, aligned_lp: torch.Tensor, use_base: torch.Tensor,
                         reasons: list[str], previous: torch.Tensor, previous_base: torch.Tensor,
                         uniforms: torch.Tensor, vocab, params: SamplingParams) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw from each row's writer; a switch mid-word stands only if the new writer starts a new word."""
    mid_word = (previous >= 0) & vocab.ends_word_char[previous.clamp(min=0)]
    switching = mid_word & (use_base != previous_base)
    tokens = _draw(base_lp, aligned_lp, use_base, uniforms, params)
    blocked = switching & vocab.continues_word[tokens]
    if bool(blocked.any()):
        use_base = torch.where(blocked, ~use_base, use_base)
        redo = blocked.nonzero().squeeze(-1)
        tokens[redo] = _draw(base_lp[redo], aligned_lp[redo], use_base[redo], uniforms[redo], params)
        for i in redo.tolist():
            reasons[i] = "word-continuation"
    return tokens, use_base


def _draw(base_lp: torch.Tensor, aligned_lp: torch.Tensor, use_base: torch.Tensor,
          uniforms: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Sample each row from its chosen model, with that model's own random number."""
    chosen = torch.where(use_base[:, None], base_lp, aligned_lp)
    u = torch.where(use_base, uniforms[:, BASE_STREAM], uniforms[:, ALIGNED_STREAM])
    return sample(chosen, u, params)
