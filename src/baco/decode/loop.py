"""The lockstep loop: both models score the shared continuation, a router picks the writer, one token is drawn.

    prefill both models (each on its own rendering of the request)
    repeat:
        (base_logprobs, aligned_logprobs) = pair distributions for the active rows
        route = router(StepView(...))                   # which rows the base model writes
        apply the word rule                             # a word is finished by the model that began it
        token = sample(chosen model's logprobs, the chosen model's random number for this row and step)
        yield the step (tokens, writers, reasons, per-token statistics, rows that finished)
        append the token to both models' contexts; a finished row's slot takes the next request

The step is `decode.step.route_and_draw`; the slots, caches and scheduling are `decode.engine.Engine`;
`lockstep()` below is the generator every client uses.

Word rule: when the router asks to switch writers while the previous token ended in a word
character (letter, digit or combining mark), the new writer's token is kept only if it starts a new word
(begins with a space, punctuation or a symbol); if it would continue the word, the previous
writer keeps the turn and draws the token instead (reason "word-continuation").

Randomness: every row owns three streams of uniform numbers, seeded from (seed, prompt,
sample index, the prompt's copy number in the list): one for the base model's draws, one for the
aligned model's, one for the router.
A row's output therefore does not depend on its batch neighbours, and routing every token to
one model reproduces that model alone, draw for draw.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch

from baco.decode.sampling import SamplingParams
from baco.models.pair import ModelPair
from baco.prompts import Prompt, as_prompt, conversation_problem, last_turn, prompt_key
from baco.routers import Router


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
    occurrence: int = 0  # the prompt text's copy number in its list: 0 for its first (see `occurrences_of`)
    messages: list[dict] | None = None  # a conversation's messages (`prompt` is its last user turn); else None

    @classmethod
    def of(cls, prompt: Prompt, prompt_index: int, sample_index: int, base_ids: list[int], aligned_ids: list[int],
           seed: int, max_new_tokens: int, occurrence: int = 0) -> "Request":
        """The row of a prompt (a string, or a conversation: `prompts.as_prompt`), its random streams seeded from the
        run's `seed` and the whole prompt (`row_seed` of its `prompt_key`)."""
        return cls(last_turn(prompt), prompt_index, sample_index, base_ids, aligned_ids,
                   row_seed(seed, prompt_key(prompt), sample_index, occurrence), max_new_tokens, occurrence,
                   prompt if isinstance(prompt, list) else None)

    @property
    def prompt_length(self) -> int:
        """The longer of the two renderings, in tokens."""
        return max(len(self.base_ids), len(self.aligned_ids))

    @property
    def length(self) -> int:
        """Tokens a slot must hold for this request: its longer prompt plus its new tokens."""
        return self.prompt_length + self.max_new_tokens


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
    # with Engine(top_logprobs=k), at steps where a row asked: (b, k) log-probs and ids of the k most likely
    # tokens of the distribution each row's token was drawn from (temperature 1, like chosen_prob)
    top_logprobs: torch.Tensor | None = None
    top_ids: torch.Tensor | None = None


def row_seed(seed: int, prompt: str, sample_index: int, occurrence: int = 0) -> int:
    """A 63-bit seed per (seed, prompt text, sample index, occurrence), stable across runs and batchings.
    A conversation's `prompt` is its key (`prompts.prompt_key`), so it depends on every message.

    `occurrence` tells copies of one prompt text in a list apart (`occurrences_of`); the first copy's
    seed does not mix it in, so it is the seed the prompt always had, alone or repeated.
    """
    key = f"{seed}\x00{sample_index}\x00{prompt}" + (f"\x00{occurrence}" if occurrence else "")
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def row_uniforms(seed: int, steps: int) -> torch.Tensor:
    """A row's random numbers, (3, steps): at step t, its draw from the base model, its draw from the aligned model
    and the router's number. Drawn step by step (t's three numbers are the generator's 3t-th to 3t+2-th), so a
    sample's first tokens do not depend on how many it may write: the same seed with a larger max_new_tokens
    continues the same sample, as transformers' `generate` and vLLM do."""
    return torch.rand((steps, 3), generator=torch.Generator().manual_seed(seed)).T


def occurrences_of(prompts: Sequence[Prompt]) -> list[int]:
    """Each prompt's copy number among the equal prompts before it: ["a", "b", "a"] -> [0, 0, 1].

    A prompt repeated to get more samples must not give its copies the same samples; and a copy's
    number is kept when the prompts are reordered (copies in the same relative order) or others added.
    Conversations are equal when all their messages are (`prompts.prompt_key`).
    """
    seen: dict[str, int] = {}
    numbers = []
    for prompt in prompts:
        if isinstance(prompt, (list, tuple)):  # (one that is no conversation counts alone: it is refused later)
            prompt = prompt_key(as_prompt(prompt)) if conversation_problem(prompt) is None else object()
        numbers.append(seen.get(prompt, 0))
        seen[prompt] = numbers[-1] + 1
    return numbers


def lockstep(pair: ModelPair, requests: list[Request], router: Router, params: SamplingParams,
             stop_strings: tuple[str, ...] = (), *, max_batch: int | str | None = None, max_len: int | None = None,
             graphs: str | bool = "auto", memory_fraction: float | None = None) -> Iterator[StepEvent]:
    """Decode `requests` on `pair` with one router and sampling setting; yield one StepEvent per step.

    The requests run on an `Engine` (decode/engine.py) with `max_batch` slots (default: all of them
    at once); with fewer slots than requests, each finished row's slot takes the next request.
    `max_len`: tokens per slot (default: the longest request); a request that does not fit is a
    `BacoError` before anything is decoded. `max_batch="auto"`: as many slots as `memory_fraction` of the
    device's memory holds (`decode.engine.fit_slots`), for prompts as long as the longest here.
    """
    from baco.decode.engine import MEMORY_FRACTION, Engine, check_max_len, fit_slots

    check_max_len(max_len)  # (0 is not "the default", and "auto" sizes slots from it)
    if not requests:
        return
    longest = max(r.length for r in requests)
    max_len = longest if max_len is None else max_len
    slots = max_batch or len(requests)
    if slots == "auto":
        prompt = max(max(len(r.base_ids), len(r.aligned_ids)) for r in requests)
        slots = fit_slots(pair, max_len, prompt_columns=prompt,
                          fraction=MEMORY_FRACTION if memory_fraction is None else memory_fraction)
    if isinstance(slots, int) and not isinstance(slots, bool):
        slots = min(slots, len(requests))  # no cache rows for requests that do not exist (the engine checks the rest)
    engine = Engine(pair, router, max_batch=slots, max_len=max_len, graphs=graphs,
                    stop_strings=stop_strings)
    for request in requests:  # every request is checked before the first step
        engine.add(request, params)
    yield from engine.run()
