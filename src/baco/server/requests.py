"""From a validated request body to a job for the stepping thread: prompts, sampling, router, limits.

Everything a request can get wrong is found here, before any row runs, and raised as a BacoError
(HTTP 400). A chat's messages are the library's conversation prompt (`Collaboration.generate` takes the same):
leading system (or developer) messages are its system prompt, earlier user/assistant turns follow the format's
few-shot examples (the base model reads them as earlier questions and answers), and the last user message is what
is answered.
"""

from __future__ import annotations

import random
from contextlib import contextmanager
from dataclasses import dataclass

from baco.api import Collaboration
from baco.decode.loop import Request
from baco.decode.sampling import SamplingParams, check_token_ids
from baco.errors import BacoError, InvalidSamplingParams, PromptError, PromptTooLongError, UnknownRouterError
from baco.prompts import Prompt, PromptFormat, as_prompt, prompt_problem, roles_problem, unicode_problem
from baco.routers import get_router, list_routers
from baco.routers.cross import unit_of
from baco.server.schemas import Limits


class ContextError(PromptTooLongError):
    """A prompt (plus the tokens asked for) does not fit a slot (OpenAI's code: context_length_exceeded, as for a
    prompt the models' context cannot hold, the library's PromptTooLongError)."""


@contextmanager
def about(field: str):
    """A BacoError raised inside is about the request's `field`: the 400 names it as its `param` (OpenAI's shape).

    The checks called inside (routers, prompts) know nothing of requests; which field they were given is known
    here."""
    try:
        yield
    except BacoError as error:
        error.param = field
        raise


@dataclass
class Plan:
    """A request ready to run: its rows (one per choice, prompt-major) and what the response reports."""

    requests: list[Request]
    sampling: SamplingParams
    router: str
    seed: int
    prompt_tokens: int


def conversation(messages) -> Prompt:
    """A chat's messages as the library's prompt (what `Collaboration.generate` takes, so that a chat gives the
    samples the library gives for its messages): system messages, then alternating user/assistant turns ending
    with user. Checked here, each problem named by what the client sent: the order of roles, the last user
    message, the text of the others."""
    problem = roles_problem([m.role for m in messages])
    if problem:
        raise PromptError(f"messages {problem}")
    listed = [{"role": m.role, "content": m.text} for m in messages]
    problem = prompt_problem(listed[-1]["content"])
    if problem:
        raise PromptError(f"the last user message {problem}")
    for number, message in enumerate(listed[:-1]):  # named by their place in the client's list
        problem = unicode_problem(message["content"])
        if problem:
            raise PromptError(f"message {number} ({message['role']}) is not valid Unicode text ({problem})")
    return as_prompt(listed)


def router_name(spec: str) -> str:
    """The canonical name of a router the engine runs; multi-pass methods are not served."""
    from baco.strategies import parse_strategy

    try:
        strategy = parse_strategy(spec)
    except BacoError as error:
        raise UnknownRouterError(str(error)) from None
    if strategy is not None:
        raise UnknownRouterError(f"router {spec!r} is a multi-pass method; the server runs per-token routers and "
                                 f"baselines only (see `baco routers`)")
    served = [router.name for router in list_routers() if unit_of(router.name) is None]  # what an unknown's error lists
    name = get_router(spec, build=False, known=served).name
    if unit_of(name) is not None:  # the engine would run it token by token: not the method `baco generate` runs
        raise UnknownRouterError(f"router {spec!r} is a cross-tokenizer method (per character or word); the server "
                                 f"runs per-token routers and baselines only: use `baco generate` for it "
                                 f"(see `baco routers`)")
    return name


def plan(collab: Collaboration, fmt: PromptFormat, prompts: list[Prompt], body, *, limits: Limits, max_len: int,
         default_router: str, default_min_p: float, prompt_field: str) -> Plan:
    """Validate and encode one request: n rows per prompt, each with its own token budget.

    prompt_field: the body's field the prompts came from ("prompt", or "messages" for a chat)."""
    with about("router"):
        router = router_name(body.router if body.router is not None else default_router)
    seed = body.seed if body.seed is not None else random.SystemRandom().randrange(2**31)
    asked = getattr(body, "max_completion_tokens", None) or body.max_tokens
    most = asked or limits.default_max_tokens
    if body.min_tokens > most:  # (vLLM refuses it too)
        with about("min_tokens"):
            raise InvalidSamplingParams(f"min_tokens ({body.min_tokens}) must be at most max_tokens ({most}"
                                        f"{'' if asked else ', the default'})")
    sampling = SamplingParams(temperature=body.temperature, top_p=body.top_p, top_k=body.top_k,
                              min_p=body.min_p if body.min_p is not None else default_min_p,
                              max_new_tokens=most, seed=seed, stop=body.stop_strings(),
                              presence_penalty=body.presence_penalty, frequency_penalty=body.frequency_penalty,
                              repetition_penalty=body.repetition_penalty, logit_bias=body.logit_bias or {},
                              stop_token_ids=body.stop_token_ids or (), min_tokens=body.min_tokens)
    for knob in ("logit_bias", "stop_token_ids"):
        with about(knob):
            check_token_ids(sampling, collab.pair.vocab, (knob,))
    # what one prompt is called (a list's are named by their index): a chat's last user message was checked by
    # `conversation`, so what is left to say of it is the whole conversation's templated length
    alone = "the conversation" if prompt_field == "messages" else "the prompt"
    with about(prompt_field):
        requests = Collaboration(collab.pair, fmt).requests(prompts, body.n, sampling, seed,
                                                            names=[alone] if len(prompts) == 1 else None)
        prompt_tokens = 0
        slot = min(max_len, collab.pair.context_length)  # a slot longer than the models' context cannot be filled
        for request in requests:
            longest = request.prompt_length
            if request.sample_index == 0:
                prompt_tokens += len(request.aligned_ids)
            where = f"prompt {request.prompt_index}" if len(prompts) > 1 else alone
            if longest > limits.max_prompt_tokens:
                raise ContextError(f"{where} is {longest} tokens once templated; this server accepts at most "
                                   f"{limits.max_prompt_tokens}")
            room = slot - longest
            if room < 1 or (asked and asked > room):
                holds = f"a slot holds {max_len}" if slot == max_len else f"the models' context holds {slot}"
                raise ContextError(f"{where} is {longest} tokens once templated and {asked or 1} more were asked for, "
                                   f"but {holds} tokens; shorten the prompt or lower max_tokens")
            request.max_new_tokens = min(request.max_new_tokens, room)
    return Plan(requests, sampling, router, seed, prompt_tokens)
