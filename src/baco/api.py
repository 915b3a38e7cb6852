"""The Python API: `Collaboration.from_pretrained(base=..., aligned=...).generate(prompts, router=...)`."""

from __future__ import annotations

import os
import random
import sys
import threading
import time
import warnings
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable, Container, Iterable, Iterator, Mapping, Sequence

from baco.decode.choice import ChoiceText
from baco.decode.engine import MEMORY_FRACTION, check_fraction, check_max_batch, check_max_len
from baco.decode.loop import Request, lockstep, occurrences_of
from baco.decode.records import Sample, collect, collect_spans
from baco.decode.sampling import SamplingParams, plain_number
from baco.errors import (BacoError, InvalidSamplingParams, ModelLoadError, PromptError, TokenizerMismatchError,
                         UnknownRouterError)
from baco.models.embedded import ALIGNED_ALIAS, BASE_ALIAS
from baco.models.hf import HFCausalLM, load_pair_models, load_tokenizers
from baco.models.chars import CrossPair
from baco.models.pair import ModelPair, SoloPair, check_sources_can_step
from baco.prompts import Prompt, PromptFormat, PromptWarning, as_prompt, encode_request
from baco.routers import Router, get_router
from baco.routers.cross import is_single_model, token_alternatives, unit_of
# (importing strategies also keeps the multi-pass methods' names from routers)
from baco.strategies import check_method_knobs, method_names, parse_strategy

if TYPE_CHECKING:
    import torch

DEFAULT_ROUTER = "p-punc:0.5"
COMPILE_NEEDS_ONE_TOKENIZER = ("compile applies to the lockstep engine of a pair that shares a tokenizer; "
                               "cross-tokenizer methods run eagerly")


@dataclass
class TokenEvent:
    """One streamed token of one sample (for a cross-tokenizer method: one span of text, token_id -1)."""

    sample_index: int
    token_id: int
    text: str  # the text this token adds to the sample's `text` ("" for a stop token, leading whitespace, a token
    # past a stop string; a character split over tokens comes with the token that completes it)
    source: str  # "base" | "aligned"
    reason: str
    finish_reason: str | None = None
    seed: int | None = None  # the call's seed, on every event: SamplingParams(seed=...) streams the same tokens again


def _check_inputs(prompts, sampling) -> list[str]:
    """Types at the door: a SamplingParams or None, and one prompt or any iterable of prompts (a list, a
    tuple, a generator, a numpy array of strings), returned as a list (a generator is read once, here)."""
    if sampling is not None and not isinstance(sampling, SamplingParams):
        example = ("SamplingParams(**your_dict) takes the same knobs" if isinstance(sampling, Mapping)
                   else "e.g. SamplingParams(temperature=0.7, max_new_tokens=64)")
        raise InvalidSamplingParams(f"sampling must be a SamplingParams or None, got {type(sampling).__name__} "
                                    f"({example})")
    return prompt_list(prompts)


def prompt_list(prompts) -> list[Prompt]:
    """One prompt (a string, or a conversation: a list of {"role", "content"} messages, as vLLM's `LLM.chat` takes)
    or any iterable of prompts, as a list (`prompts.as_prompt` each). Types that are neither are named later."""
    if isinstance(prompts, str) or (isinstance(prompts, (list, tuple)) and prompts
                                    and all(isinstance(m, Mapping) for m in prompts)):
        prompts = [prompts]
    if isinstance(prompts, (bytes, bytearray, Mapping)) or not isinstance(prompts, Iterable):
        raise PromptError(f"prompts must be a string, a conversation (a list of messages) or a list (any iterable) "
                          f"of them, got {type(prompts).__name__}")
    return [str(p) if isinstance(p, str) else as_prompt(p) for p in prompts]  # numpy's str_ as str


def _check_call(router, n, on_sample=None, skip=()) -> int:
    """The other arguments of a generation call, checked before any model runs; returns n as an int."""
    if not isinstance(router, str):
        get_router(router, build=False)  # a Router object (or a named callable), else a clear error
    n = _check_n(plain_number(n))
    if on_sample is not None and not callable(on_sample):
        raise BacoError(f"on_sample must be a function of one Sample, or None, got {type(on_sample).__name__}")
    if not isinstance(skip, Container):
        raise BacoError(f"skip must be a set of (prompt_index, sample_index) pairs, got {type(skip).__name__}")
    return n


def _check_n(n) -> int:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise BacoError(f"n (samples per prompt) must be an integer >= 1, got {n!r}")
    return n


def _check_source(name, argument: str) -> None:
    """A model is named by a hub id or a local path; an object already loaded cannot be named so."""
    if isinstance(name, (str, os.PathLike)):
        return
    hint = ""
    if getattr(name, "name_or_path", None):  # a transformers model or tokenizer
        hint = f"; baco loads the models itself: pass the id or folder it came from ({name.name_or_path!r})"
    raise ModelLoadError(f"{argument} must be a hub id or a local directory (str or path), "
                         f"got {type(name).__name__}{hint}")


def _check_format(prompt_format) -> None:
    if prompt_format is not None and not isinstance(prompt_format, PromptFormat):
        raise PromptError(f"prompt_format must be a PromptFormat or None, got {type(prompt_format).__name__}")


_DONE = object()


class Collaboration:
    """A base model and its aligned counterpart decoding together, token by token.

    Calls may come from several threads: their decoding steps take turns (one step at a time on the shared
    models), so each call gives the samples it gives alone, and the calls together run no faster than one
    after another. For concurrent requests decoded as rows of one batch, use `baco serve`.
    """

    _clamp_warnings = True  # (off for verbalized sampling's inner call: its outer call warned with the user's numbers)

    def __init__(self, pair: ModelPair | CrossPair, prompt_format: PromptFormat | None = None):
        _check_format(prompt_format)
        self.pair = pair
        self.prompt_format = prompt_format or PromptFormat()
        self._cross: CrossPair | None = pair if isinstance(pair, CrossPair) else None
        self._solo: dict[str, Collaboration] = {}
        self._lock = threading.RLock()  # held for one decoding step at a time: see `_in_turn`

    def __repr__(self) -> str:
        """What a notebook shows: the models by role (and an anchor or llama.cpp backend), and where they run."""
        names = (self.pair.model_names() if hasattr(self.pair, "model_names")
                 else {"base": self.pair.base.name, "aligned": self.pair.aligned.name})
        fields = [f"{role}={str(name)!r}" for role, name in names.items()]
        device = getattr(self.pair.base, "device", None)
        if device is not None:
            fields.append(f"device={str(device)!r}")
        if self._cross is not None and self._cross is self.pair:
            fields.append("tokenizers='different'")
        return f"Collaboration({', '.join(fields)})"

    def _in_turn(self, steps: Iterator) -> Iterator:
        """`steps` (a decoding loop) advanced one step at a time under this object's lock. The models, and a
        one-forward pair's per-forward adapter rows, are shared by every call: steps of calls from several
        threads must not overlap. The lock is never held while a step's result is out with the caller, so
        generators that one thread interleaves (two streams read in turn) never wait on each other."""
        try:
            while True:
                with self._lock:
                    item = next(steps, _DONE)
                if item is _DONE:
                    return
                yield item
        finally:
            with self._lock:
                steps.close()

    @classmethod
    def from_pretrained(cls, base: str | os.PathLike = BASE_ALIAS, aligned: str | os.PathLike = ALIGNED_ALIAS, *,
                        dtype: str | torch.dtype = "auto", device: str | torch.device = "auto",
                        prompt_format: PromptFormat | None = None, anchor: str | os.PathLike | None = None,
                        router: str | Router | None = None,
                        one_forward: str = "auto", backend: str = "hf", compile: bool = False,
                        shared_tokenizer: bool = False) -> "Collaboration":
        """Load both models by HF id, local path or adapter directory; tokenizers are checked first.

        With no arguments: the embedded pair, Gemma-3-270M base and the project's aligned adapter.
        Models are named (a str or a path), not passed loaded: baco loads them its own way (tokenizers
        checked before any weights, an adapter pair's weights once).
        `dtype` ("auto"): "float32" / "fp32", "bfloat16" / "bf16", "float16" / "fp16" or a torch.dtype;
        "auto" is bfloat16 on a GPU and float32 on the CPU (the embedded pair: bfloat16).
        `device` ("auto": cuda, then mps, then cpu): "cpu", "cuda", "cuda:N", "mps" or a torch.device.
        `prompt_format` (None: `PromptFormat()`): the base model's template, a system prompt, few-shot examples.
        `anchor`: an optional third model for proxy-tuning (`router="proxy:B"`): the aligned model's
        own untuned base, when the base model is a different (e.g. larger) model of the same family.
        Models whose tokenizers differ make a cross-tokenizer pair, which runs the cross-tokenizer
        methods (`chared:W`, `unite:K`, routers per word such as `p-punc-words:G`) and base / aligned
        alone; `router`, if given, is checked against the pair before any weights load.
        `one_forward`: when `aligned` is a LoRA adapter on `base` itself, load the weights once and step
        both sides as rows of one forward (`on`; `auto`: on the CPU) or merge it into a copy (`off`).
        `backend`: `hf` (transformers), `llamacpp` (GGUF files or the embedded pair on llama.cpp,
        `pip install -e '.[gguf]'`) or `auto` (llama.cpp where it is installed and can run the pair on the CPU).
        `compile`: the engine's decoding steps run the models through `torch.compile` (transformers, same-
        tokenizer pairs): compiling takes seconds to a minute per bucket of rows, then each step is faster.
        `shared_tokenizer`: refuse a pair whose tokenizers differ (TokenizerMismatchError) before any weights
        load, for a caller that runs the lockstep engine on it (`baco serve`, `baco.server.create_app`).
        """
        from baco.models.llamacpp import choose_backend

        if not isinstance(compile, bool):
            raise BacoError(f"compile must be True or False, got {compile!r}")
        _check_source(base, "base")
        _check_source(aligned, "aligned")
        if anchor is not None:
            _check_source(anchor, "anchor")
        _check_format(prompt_format)  # before anything loads
        if router is not None:
            check_router_name(router)
        chosen = choose_backend(backend, base, aligned, anchor=anchor, device=device, one_forward=one_forward,
                                router=router, compile=compile)
        collab = cls._load(base, aligned, dtype, device, prompt_format, anchor, router, one_forward, chosen, compile,
                           shared_tokenizer)
        if compile:
            collab.pair.compile_steps()
        return collab

    @classmethod
    def _load(cls, base, aligned, dtype, device, prompt_format, anchor, router, one_forward, backend,
              compile, shared_tokenizer=False) -> "Collaboration":
        if backend == "llamacpp":
            from baco.models.llamacpp import load_llamacpp_models

            if router is not None:
                get_router(router, build=False)
            try:
                return cls(ModelPair(*load_llamacpp_models(base, aligned)), prompt_format)
            except TokenizerMismatchError as mismatch:  # the cross-tokenizer loop runs transformers' sessions
                raise TokenizerMismatchError(f"{mismatch} On llama.cpp only a same-tokenizer pair runs: the cross-"
                                             f"tokenizer methods need the models' transformers directories "
                                             f"(--backend hf)") from None
        base_tokenizer, aligned_tokenizer, anchor_tokenizer = load_tokenizers(base, aligned, anchor)
        from baco.vocab import check_compatible  # fail fast, before loading any weights

        try:
            check_compatible(base_tokenizer, aligned_tokenizer)
        except TokenizerMismatchError as mismatch:
            if anchor is not None:
                raise
            if shared_tokenizer:
                from baco.decode.engine import lockstep_refusal

                raise lockstep_refusal(mismatch.detail) from None
            if router is not None:
                check_cross_router(router, mismatch)
            if compile:  # before any weights load
                raise BacoError(COMPILE_NEEDS_ONE_TOKENIZER) from None
            return cls(CrossPair(HFCausalLM.from_pretrained(base, dtype=dtype, device=device, tokenizer=base_tokenizer),
                                 HFCausalLM.from_pretrained(aligned, dtype=dtype, device=device,
                                                            tokenizer=aligned_tokenizer)), prompt_format)
        if anchor_tokenizer is not None:
            try:
                check_compatible(base_tokenizer, anchor_tokenizer)
            except TokenizerMismatchError as mismatch:  # proxy-tuning adds log-probs id by id: no cross method
                first = str(mismatch).split("(first: ", 1)[-1].split(")", 1)[0].replace("aligned", "anchor")
                raise TokenizerMismatchError(
                    f"the anchor {str(anchor)!r} and the base model {str(base)!r} have different tokenizers "
                    f"(first: {first}): proxy-tuning adds the three models' log-probs token by token, so the "
                    f"anchor must share the base's vocabulary (the aligned model's own untuned base)") from None
        check_sources_can_step((base, aligned, anchor), dtype)  # before any weights load
        base_lm, aligned_lm = load_pair_models(base, aligned, dtype=dtype, device=device, base_tokenizer=base_tokenizer,
                                               aligned_tokenizer=aligned_tokenizer, one_forward=one_forward)
        anchor_lm = (HFCausalLM.from_pretrained(anchor, dtype=dtype, device=device, tokenizer=anchor_tokenizer)
                     if anchor is not None else None)
        pair = ModelPair(base_lm, aligned_lm, anchor_lm)
        return cls(pair, prompt_format)

    @property
    def tokenizer(self):
        return self.pair.aligned.tokenizer

    @property
    def stop_strings(self) -> tuple[str, ...]:
        return self.prompt_format.stop_strings

    def requests(self, prompts: Sequence[Prompt], n: int, sampling: SamplingParams, seed: int,
                 occurrences: Sequence[int] | None = None, names: Sequence[str] | None = None) -> list[Request]:
        """Render and encode every prompt once; n rows per prompt. Raises PromptError on bad prompts. A budget is
        cut to the room the models' context leaves after its prompt (`generate` and `stream` warn:
        `_warn_if_clamped`).

        A prompt text repeated in the list gets other rows for each copy (`decode.loop.occurrences_of`;
        given, `occurrences` numbers the copies in a longer list these prompts were taken from).
        `names` (default "prompt 0", "prompt 1", ...): what errors call each prompt.
        """
        prompts = prompt_list(prompts)
        if not prompts:
            raise BacoError("no prompts given")
        _check_n(n)
        copies = list(occurrences) if occurrences is not None else occurrences_of(prompts)
        if len(copies) != len(prompts) or not all(isinstance(c, int) and c >= 0 for c in copies):
            raise BacoError(f"occurrences must be one integer >= 0 per prompt ({len(prompts)}), got {copies!r}")
        context = self.pair.context_length
        out = []
        for index, (prompt, copy) in enumerate(zip(prompts, copies)):
            base_ids, aligned_ids = encode_request(prompt, index, self.prompt_format, self.pair.base.tokenizer,
                                                   self.pair.aligned.tokenizer, context,
                                                   only=getattr(self.pair, "reads", None),  # SoloPair: one side
                                                   name=names[index] if names else None)
            room = context - max(len(base_ids), len(aligned_ids))
            budget = min(sampling.max_new_tokens, room)
            out += [Request.of(prompt, index, k, base_ids, aligned_ids, seed, budget, copy) for k in range(n)]
        return out

    def _prepare(self, prompts, router, n, sampling, occurrences=None):
        """Validate everything before any model runs: sampling, router, prompts; fix the seed."""
        sampling = sampling or SamplingParams()
        route = get_router(router)
        seed = sampling.seed if sampling.seed is not None else random.SystemRandom().randrange(2**31)
        requests = self.requests(prompts, n, sampling, seed, occurrences)
        self._warn_if_clamped(sampling, requests)
        return sampling, route, requests, self.stop_strings + sampling.stop, seed

    def _warn_if_clamped(self, sampling: SamplingParams, requests: list[Request]) -> None:
        """A PromptWarning, once per call and from the caller's line, when the models' context leaves fewer new
        tokens than `sampling.max_new_tokens` after some prompts (as transformers' generate warns; their samples
        end early with finish_reason "length"). `baco serve` refuses such a request instead, as vLLM does."""
        if not self._clamp_warnings:
            return
        context = self.pair.context_length
        rooms = [context - r.prompt_length for r in requests if r.sample_index == 0]
        short = [room for room in rooms if room < sampling.max_new_tokens]
        if short:
            which = ("the prompt" if len(rooms) == 1 else f"each of the {len(rooms)} prompts"
                     if len(short) == len(rooms) else f"{len(short)} of the {len(rooms)} prompts")
            most = f"{min(short)}" if len(set(short)) == 1 else f"{min(short)}-{max(short)}"
            warnings.warn(f"max_new_tokens={sampling.max_new_tokens} is more than the models' context of {context} "
                          f"tokens leaves after {which}: their samples get at most {most} new tokens (then "
                          f"finish_reason 'length')", PromptWarning, stacklevel=_caller_level())

    def iter_generate(self, prompts: Iterable[Prompt] | Prompt, sampling: SamplingParams | None = None, *,
                      router: str | Router = DEFAULT_ROUTER, n: int = 1, batch_size: int | str = 32,
                      max_len: int | None = None, on_sample: Callable[[Sample], None] | None = None,
                      skip: Container[tuple[int, int]] = (),
                      memory_fraction: float = MEMORY_FRACTION,
                      occurrences: Sequence[int] | None = None) -> Iterator[Sample]:
        """Yield samples as their rows finish (in that order: check `prompt_index` / `sample_index`); the
        arguments are `generate`'s. At most `batch_size` rows decode at once, and a finished row's place goes
        to the next request at the next step (continuous batching).

        on_sample (None): a function called with each sample before it is yielded.
        skip (()): (prompt_index, sample_index) pairs not to generate (a resumed sweep's finished samples);
            every other sample is exactly what a full run would give (per-row random streams).
        occurrences (None): the copy numbers of the prompts (see `generate`), when `prompts` is part of a
            longer list (a shard of it: `baco.cluster`); by default they are counted in `prompts`.
        Every argument is checked when the first sample is asked for, before any model runs.
        """
        prompts = _check_inputs(prompts, sampling)
        n = _check_call(router, n, on_sample, skip)
        batch_size, max_len = plain_number(batch_size), plain_number(max_len)
        check_max_batch(batch_size)
        check_max_len(max_len)
        check_fraction(memory_fraction)
        strategy = parse_strategy(router) if isinstance(router, str) else None
        if strategy is None and self._cross_route(router) is not None:
            yield from self._iter_cross(prompts, router, n, sampling, batch_size, on_sample, skip, memory_fraction,
                                        occurrences)
            return
        if strategy is not None:  # a multi-pass method (negative prompting, verbalized sampling)
            spec, value = strategy
            sampling = sampling or SamplingParams()
            check_method_knobs(router, sampling)
            if sampling.seed is None:  # drawn here, as for the routers, and recorded in every sample
                sampling = replace(sampling, seed=random.SystemRandom().randrange(2**31))
            checked = self.requests(prompts, n, sampling, 0, occurrences)  # the same prompt checks as every router
            self._warn_if_clamped(sampling, checked)
            samples = spec.fn(self.pair.aligned, prompts, n=n, value=value, sampling=sampling,
                              fmt=self.prompt_format, batch_size=batch_size, memory_fraction=memory_fraction,
                              occurrences=occurrences)
            for sample in self._in_turn(samples):
                if (sample.prompt_index, sample.sample_index) not in skip:
                    if on_sample is not None:
                        on_sample(sample)
                    yield sample
            return
        sampling, route, requests, stops, seed = self._prepare(prompts, router, n, sampling, occurrences)
        requests = [r for r in requests if (r.prompt_index, r.sample_index) not in skip]
        extra = {"sampling": {**sampling.to_dict(), "seed": seed},
                 "models": self.pair.model_names()}
        # one engine with `batch_size` slots: a finished row's slot takes the next request (continuous batching)
        events = lockstep(self.pair, requests, route, sampling, stops, max_batch=batch_size, max_len=max_len,
                          memory_fraction=memory_fraction)
        for sample in collect(self._in_turn(events), requests, self.tokenizer, router=route.name, stop_strings=stops,
                              stop_ids=self.pair.vocab.stop_ids, token_texts=self.pair.vocab.texts,
                              started=time.perf_counter(), extra=extra, min_tokens=sampling.min_tokens):
            if on_sample is not None:
                on_sample(sample)
            yield sample

    def _cross_route(self, router) -> Router | None:
        """The router as a cross-tokenizer method to run on the cross pair, or None for the token path.
        Raises TokenizerMismatchError for a token-level router on a pair whose tokenizers differ."""
        route = get_router(router, build=False, known=method_names()) if isinstance(router, str) else router
        if unit_of(route) is not None:
            if self._cross is None:  # a same-tokenizer pair: the cross path works on it too
                self._cross = CrossPair(self.pair.base, self.pair.aligned)
            return route
        if isinstance(self.pair, CrossPair):
            if is_single_model(route):
                return route
            check_cross_router(route.name, None)
        return None

    def _single(self, router) -> "Collaboration":
        """One model of a cross pair alone, on its own tokens (the `base` / `aligned` routers)."""
        side = str(getattr(router, "name", router)).strip().lower()
        if side not in self._solo:
            lm = self._cross.base if side == "base" else self._cross.aligned
            solo = Collaboration(SoloPair(lm, side), self.prompt_format)
            solo._lock = self._lock  # the same models: their steps take turns with this pair's
            self._solo[side] = solo
        return self._solo[side]

    def _iter_cross(self, prompts, router, n, sampling, batch_size, on_sample, skip,
                    memory_fraction, occurrences) -> Iterator[Sample]:
        from baco.decode.crossloop import crossloop

        if is_single_model(router):
            yield from self._single(router).iter_generate(prompts, router=router, n=n, sampling=sampling,
                                                          batch_size=batch_size, on_sample=on_sample, skip=skip,
                                                          memory_fraction=memory_fraction, occurrences=occurrences)
            return
        if batch_size == "auto":
            raise BacoError(f"batch size 'auto' sizes the engine's slot caches from memory; router {router} runs the "
                            f"cross-tokenizer loop, which has none: give a number")
        if sampling is not None:
            check_method_knobs(router, sampling)
        sampling, route, requests, stops, seed = self._prepare(prompts, router, n, sampling, occurrences)
        requests = [r for r in requests if (r.prompt_index, r.sample_index) not in skip]
        pair = self._cross
        extra = {"sampling": {**sampling.to_dict(), "seed": seed},
                 "models": {"base": pair.base.name, "aligned": pair.aligned.name}}
        for start in range(0, len(requests), batch_size):
            chunk = requests[start:start + batch_size]
            began = time.perf_counter()
            events = self._in_turn(crossloop(pair, chunk, route, sampling, stops))
            for sample in collect_spans(events, chunk, router=route.name, stop_strings=stops, started=began,
                                        extra=extra):
                if on_sample is not None:
                    on_sample(sample)
                yield sample

    def generate(self, prompts: Iterable[Prompt] | Prompt, sampling: SamplingParams | None = None, *,
                 router: str | Router = DEFAULT_ROUTER, n: int = 1, batch_size: int | str = 32,
                 max_len: int | None = None, memory_fraction: float = MEMORY_FRACTION) -> list[Sample]:
        """Generate n samples for each prompt; return them all, ordered by (prompt_index, sample_index).

        prompts: one prompt or several (a list, tuple, generator, numpy array of strings);
            `Sample.prompt_index` is a prompt's place among them. A prompt is a string, or a conversation to
            continue: a list of {"role", "content"} messages (system messages first, then user and assistant
            turns in alternation, ending with a user turn; as vLLM's `LLM.chat` takes them). Each model reads its
            earlier turns as it reads few-shot examples; `Sample.prompt` is its last user turn and
            `Sample.messages` the whole conversation. A prompt repeated among them gets other
            samples for each copy (`Sample.occurrence` = c for the c-th copy; the first copy's are the prompt's
            own, as given alone).
        sampling (None: `SamplingParams()`): temperature, top_p, top_k, min_p, max_new_tokens, seed, stop and
            the repetition, presence and frequency penalties, logit_bias, stop_token_ids and min_tokens (these six
            not for cross-tokenizer methods); may be given
            second, as vLLM's `LLM.generate(prompts, sampling_params)`. A fixed seed gives the same samples at
            every call, batch size, and in `iter_generate` / `stream`.
        router ("p-punc:0.5"): who writes each token: a name with its knob ("p:0.3", "h-punc:2",
            `baco.list_routers()`), a multi-pass method ("negative:0.5", "verbalized:5"), a router of your own
            registered with `baco.register`, or a `Router` object (`baco.get_router("p:0.3")`).
        n (1): samples per prompt, each from its own random streams (`Sample.sample_index` 0..n-1).
        batch_size (32): rows decoded at once; "auto": as many as `memory_fraction` (0.9) of the device's
            memory holds (weights and all else in use count against it; at most 256), like vLLM's
            gpu_memory_utilization.
        max_len (None: the longest request): tokens of prompt + continuation per row of the engine's caches.
        Bad arguments raise a `BacoError` naming the argument before any model runs.
        """
        samples = list(self.iter_generate(prompts, sampling, router=router, n=n, batch_size=batch_size,
                                          max_len=max_len, memory_fraction=memory_fraction))
        return sorted(samples, key=lambda s: (s.prompt_index, s.sample_index))

    def stream(self, prompt: Prompt, sampling: SamplingParams | None = None, *, router: str | Router = DEFAULT_ROUTER,
               n: int = 1) -> Iterator[TokenEvent]:
        """Stream the n samples of one prompt token by token (the same loop as `generate`, and for a fixed seed
        the same tokens): a `TokenEvent` per token of each sample, in the order they are written; the
        arguments are `generate`'s (one prompt: a string or a conversation). A sample's events' texts join to its
        `Sample.text`: cut before the first stop string, leading whitespace left out; text that may still begin a
        stop string is held back, so such a token's event comes once that is settled (as OpenAI-style servers
        stream). Every event carries the call's seed (drawn when `sampling.seed` is None, as `generate` records it
        in each Sample): passing it back repeats the stream."""
        one = _check_inputs(prompt, sampling)
        if len(one) != 1 or not isinstance(one[0], (str, list)):
            raise PromptError(f"stream takes one prompt, a string or a conversation, got {type(prompt).__name__} "
                              f"(for several, use iter_generate)")
        prompt = one[0]
        n = _check_call(router, n)
        strategy = parse_strategy(router) if isinstance(router, str) else None
        if strategy is not None:  # by name it is no router: `get_router` would call it unknown while listing it
            raise UnknownRouterError(f"{strategy[0].name} is a multi-pass method: it makes whole samples (from earlier "
                                     f"samples or one long response), not a stream of tokens; use generate or "
                                     f"iter_generate")
        if self._cross_route(router) is not None:
            yield from self._stream_cross(prompt, router, n, sampling)
            return
        sampling, route, requests, stops, seed = self._prepare([prompt], router, n, sampling)
        stop_ids = frozenset(self.pair.vocab.stop_ids)
        texts = [ChoiceText(self.tokenizer, stop_ids, stops, sampling.min_tokens) for _ in requests]
        for event in self._in_turn(lockstep(self.pair, requests, route, sampling, stops)):
            for i, row in enumerate(event.rows):
                token = TokenEvent(row, int(event.tokens[i]), "", "base" if bool(event.use_base[i]) else "aligned",
                                   event.reasons[i], None, seed)
                yield from _settled(texts[row], token, event.finished.get(row))

    def _stream_cross(self, prompt, router, n, sampling) -> Iterator[TokenEvent]:
        """Stream a cross-tokenizer method span by span (token_id -1: the pair shares no ids)."""
        from baco.decode.crossloop import crossloop

        if is_single_model(router):
            yield from self._single(router).stream(prompt, sampling, router=router, n=n)
            return
        sampling, route, requests, stops, seed = self._prepare([prompt], router, n, sampling)
        texts = [ChoiceText(None, frozenset(), stops) for _ in requests]
        for event in self._in_turn(crossloop(self._cross, requests, route, sampling, stops)):
            span = TokenEvent(event.row, -1, "", event.source, event.reason, None, seed)
            yield from _settled(texts[event.row], span, event.finished, piece=event.text)


def _settled(text: ChoiceText, event: TokenEvent, finish: str | None, piece: str | None = None) -> list[TokenEvent]:
    """Add a streamed token (its text decoded here; a cross-tokenizer span's `piece` given) to its sample's text;
    the events whose text is now settled, the last carrying `finish` when the sample ends."""
    if piece is None:
        text.add(event, last=finish is not None)
    else:
        text.add_piece(event, piece)
    released = text.release(final=finish is not None)
    if finish is not None:
        released[-1].finish_reason = finish
    return released


def _caller_level() -> int:
    """The `stacklevel` of the first frame outside baco (the user's call of generate, stream, a sweep's ...), for a
    warning raised this many frames deep in the package: the line a user reads is theirs."""
    package = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package + os.sep):
        frame, level = frame.f_back, level + 1
    return level


def check_router_name(router) -> None:
    """A router or multi-pass method (`negative:0.5`), checked by name without loading anything."""
    if not (isinstance(router, str) and parse_strategy(router) is not None):
        get_router(router, build=False, known=method_names())


def check_cross_router(router: str, mismatch: Exception | None) -> None:
    """A token-level router cannot run on a pair whose tokenizers differ: say what can."""
    if parse_strategy(router) is not None:
        return
    route = get_router(router, build=False)
    if unit_of(route) is None and not is_single_model(route):
        differ = getattr(mismatch, "detail", None) or "the base and aligned tokenizers differ"  # not its advice too
        raise TokenizerMismatchError(f"router {route.name!r} routes token by token, which needs one shared "
                                     f"vocabulary, but {differ}. Instead, {token_alternatives()}")
