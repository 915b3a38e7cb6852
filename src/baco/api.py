"""The Python API: `Collaboration.from_pretrained(base=..., aligned=...).generate(prompts, router=...)`."""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass
from typing import Callable, Container, Iterator, Sequence

from baco.decode.engine import MEMORY_FRACTION, check_fraction, check_max_batch
from baco.decode.loop import Request, lockstep, occurrences_of, row_seed
from baco.decode.records import Sample, collect, collect_spans
from baco.decode.sampling import SamplingParams
from baco.errors import BacoError, InvalidSamplingParams, PromptError, TokenizerMismatchError
from baco.models.embedded import ALIGNED_ALIAS, BASE_ALIAS
from baco.models.hf import HFCausalLM, load_pair_models, load_tokenizer
from baco.models.chars import CrossPair
from baco.models.pair import ModelPair, SoloPair
from baco.prompts import PromptFormat, encode_request
from baco.routers import Router, get_router
from baco.routers.cross import is_single_model, token_alternatives, unit_of

DEFAULT_ROUTER = "p-punc:0.5"
COMPILE_NEEDS_ONE_TOKENIZER = ("compile applies to the lockstep engine of a pair that shares a tokenizer; "
                               "cross-tokenizer methods run eagerly")


@dataclass
class TokenEvent:
    """One streamed token of one sample (for a cross-tokenizer method: one span of text, token_id -1)."""

    sample_index: int
    token_id: int
    text: str  # the new text this token adds (may be "" while a multi-byte character is incomplete)
    source: str  # "base" | "aligned"
    reason: str
    finish_reason: str | None = None


def _check_inputs(prompts, sampling) -> None:
    """Types at the door: a prompt or a list of prompts, and a SamplingParams or None."""
    if sampling is not None and not isinstance(sampling, SamplingParams):
        raise InvalidSamplingParams(f"sampling must be a SamplingParams or None, got {type(sampling).__name__} "
                                    f"(e.g. SamplingParams(temperature=0.7, max_new_tokens=64))")
    if not isinstance(prompts, (str, list, tuple)):
        raise PromptError(f"prompts must be a string or a list of strings, got {type(prompts).__name__}")


class Collaboration:
    """A base model and its aligned counterpart decoding together, token by token."""

    def __init__(self, pair: ModelPair | CrossPair, prompt_format: PromptFormat | None = None):
        self.pair = pair
        self.prompt_format = prompt_format or PromptFormat()
        self._cross: CrossPair | None = pair if isinstance(pair, CrossPair) else None
        self._solo: dict[str, Collaboration] = {}

    @classmethod
    def from_pretrained(cls, base: str | os.PathLike = BASE_ALIAS, aligned: str | os.PathLike = ALIGNED_ALIAS, *,
                        dtype: str = "auto", device: str = "auto", prompt_format: PromptFormat | None = None,
                        anchor: str | os.PathLike | None = None, router: str | None = None,
                        one_forward: str = "auto", backend: str = "hf", compile: bool = False) -> "Collaboration":
        """Load both models by HF id, local path or adapter directory; tokenizers are checked first.

        With no arguments: the embedded pair, Gemma-3-270M base and the project's aligned adapter.
        `anchor`: an optional third model for proxy-tuning (`router="proxy:B"`): the aligned model's
        own untuned base, when the base model is a different (e.g. larger) model of the same family.
        Models whose tokenizers differ make a cross-tokenizer pair, which runs the cross-tokenizer
        methods (`chared:W`, `unite:K`, routers per word such as `p-punc-words:G`) and base / aligned
        alone; `router`, if given, is checked against the pair before any weights load.
        `one_forward`: when `aligned` is a LoRA adapter on `base` itself, load the weights once and step
        both sides as rows of one forward (`on`; `auto`: on the CPU) or merge it into a copy (`off`).
        `backend`: `hf` (transformers), `llamacpp` (GGUF files or the embedded pair on llama.cpp,
        `pip install 'baco[gguf]'`) or `auto` (llama.cpp where it is installed and can run the pair on the CPU).
        `compile`: the engine's decoding steps run the models through `torch.compile` (transformers, same-
        tokenizer pairs): compiling takes seconds to a minute per bucket of rows, then each step is faster.
        """
        from baco.models.llamacpp import choose_backend

        if not isinstance(compile, bool):
            raise BacoError(f"compile must be True or False, got {compile!r}")
        chosen = choose_backend(backend, base, aligned, anchor=anchor, device=device, one_forward=one_forward,
                                router=router, compile=compile)
        collab = cls._load(base, aligned, dtype, device, prompt_format, anchor, router, one_forward, chosen, compile)
        if compile:
            collab.pair.compile_steps()
        return collab

    @classmethod
    def _load(cls, base, aligned, dtype, device, prompt_format, anchor, router, one_forward, backend,
              compile) -> "Collaboration":
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
        base_tokenizer, aligned_tokenizer = load_tokenizer(base), load_tokenizer(aligned)
        anchor_tokenizer = load_tokenizer(anchor) if anchor is not None else None
        from baco.vocab import check_compatible  # fail fast, before loading any weights

        try:
            check_compatible(base_tokenizer, aligned_tokenizer)
        except TokenizerMismatchError as mismatch:
            if anchor is not None:
                raise
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

    def requests(self, prompts: Sequence[str], n: int, sampling: SamplingParams, seed: int,
                 occurrences: Sequence[int] | None = None) -> list[Request]:
        """Render and encode every prompt once; n rows per prompt. Raises PromptError on bad prompts.

        A prompt text repeated in the list gets other rows for each copy (`decode.loop.occurrences_of`;
        given, `occurrences` numbers the copies in a longer list these prompts were taken from).
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        if not prompts:
            raise BacoError("no prompts given")
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise BacoError(f"n (samples per prompt) must be an integer >= 1, got {n!r}")
        copies = list(occurrences) if occurrences is not None else occurrences_of(prompts)
        if len(copies) != len(prompts) or not all(isinstance(c, int) and c >= 0 for c in copies):
            raise BacoError(f"occurrences must be one integer >= 0 per prompt ({len(prompts)}), got {copies!r}")
        context = self.pair.context_length
        out = []
        for index, (prompt, copy) in enumerate(zip(prompts, copies)):
            base_ids, aligned_ids = encode_request(prompt, index, self.prompt_format, self.pair.base.tokenizer,
                                                   self.pair.aligned.tokenizer, context,
                                                   only=getattr(self.pair, "reads", None))  # SoloPair: one side
            room = context - max(len(base_ids), len(aligned_ids))
            budget = min(sampling.max_new_tokens, room)
            out += [Request(prompt, index, k, base_ids, aligned_ids, row_seed(seed, prompt, k, copy), budget, copy)
                    for k in range(n)]
        return out

    def _prepare(self, prompts, router, n, sampling, occurrences=None):
        """Validate everything before any model runs: sampling, router, prompts; fix the seed."""
        sampling = sampling or SamplingParams()
        route = get_router(router)
        seed = sampling.seed if sampling.seed is not None else random.SystemRandom().randrange(2**31)
        requests = self.requests(prompts, n, sampling, seed, occurrences)
        return sampling, route, requests, self.stop_strings + sampling.stop, seed

    def iter_generate(self, prompts: Sequence[str], *, router: str | Router = DEFAULT_ROUTER, n: int = 1,
                      sampling: SamplingParams | None = None, batch_size: int | str = 32, max_len: int | None = None,
                      on_sample: Callable[[Sample], None] | None = None,
                      skip: Container[tuple[int, int]] = (),
                      memory_fraction: float = MEMORY_FRACTION,
                      occurrences: Sequence[int] | None = None) -> Iterator[Sample]:
        """Yield samples as their rows finish; at most `batch_size` rows decode at once, and a finished
        row's place goes to the next request at the next step (continuous batching). `batch_size="auto"`:
        as many rows as `memory_fraction` of the device's memory holds (weights and all else in use count
        against it; at most 256), like vLLM's gpu_memory_utilization.

        `skip` holds (prompt_index, sample_index) pairs not to generate (a resumed sweep's finished
        samples); every other sample is exactly what a full run would give (per-row random streams).

        A prompt text repeated in `prompts` gets other samples for each copy: the c-th copy's rows
        have their own random streams (`Sample.occurrence` = c), and the first copy's are those of the
        prompt given alone. `occurrences`: the copy numbers, when `prompts` is part of a longer list
        (a shard of it: `baco.cluster`); by default they are counted in `prompts`.
        """
        _check_inputs(prompts, sampling)
        check_max_batch(batch_size)
        check_fraction(memory_fraction)
        from baco.strategies import parse_strategy

        strategy = parse_strategy(router) if isinstance(router, str) else None
        if strategy is None and self._cross_route(router) is not None:
            yield from self._iter_cross(prompts, router, n, sampling, batch_size, on_sample, skip, memory_fraction,
                                        occurrences)
            return
        if strategy is not None:  # a multi-pass method (negative prompting, verbalized sampling)
            spec, value = strategy
            sampling = sampling or SamplingParams()
            self.requests(prompts, n, sampling, 0, occurrences)  # the same prompt checks as every router
            prompts = [prompts] if isinstance(prompts, str) else list(prompts)
            for sample in spec.fn(self.pair.aligned, prompts, n=n, value=value, sampling=sampling,
                                  fmt=self.prompt_format, batch_size=batch_size, memory_fraction=memory_fraction,
                                  occurrences=occurrences):
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
        for sample in collect(events, requests, self.tokenizer, router=route.name, stop_strings=stops,
                              stop_ids=self.pair.vocab.stop_ids, token_texts=self.pair.vocab.texts,
                              started=time.perf_counter(), extra=extra):
            if on_sample is not None:
                on_sample(sample)
            yield sample

    def _cross_route(self, router) -> Router | None:
        """The router as a cross-tokenizer method to run on the cross pair, or None for the token path.
        Raises TokenizerMismatchError for a token-level router on a pair whose tokenizers differ."""
        route = get_router(router, build=False) if isinstance(router, str) else router
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
            self._solo[side] = Collaboration(SoloPair(lm, side), self.prompt_format)
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
        sampling, route, requests, stops, seed = self._prepare(prompts, router, n, sampling, occurrences)
        requests = [r for r in requests if (r.prompt_index, r.sample_index) not in skip]
        pair = self._cross
        extra = {"sampling": {**sampling.to_dict(), "seed": seed},
                 "models": {"base": pair.base.name, "aligned": pair.aligned.name}}
        for start in range(0, len(requests), batch_size):
            chunk = requests[start:start + batch_size]
            began = time.perf_counter()
            events = crossloop(pair, chunk, route, sampling, stops)
            for sample in collect_spans(events, chunk, router=route.name, stop_strings=stops, started=began,
                                        extra=extra):
                if on_sample is not None:
                    on_sample(sample)
                yield sample

    def generate(self, prompts: Sequence[str] | str, *, router: str | Router = DEFAULT_ROUTER, n: int = 1,
                 sampling: SamplingParams | None = None, batch_size: int | str = 32,
                 max_len: int | None = None, memory_fraction: float = MEMORY_FRACTION) -> list[Sample]:
        """All samples, ordered by (prompt_index, sample_index)."""
        samples = list(self.iter_generate(prompts, router=router, n=n, sampling=sampling, batch_size=batch_size,
                                          max_len=max_len, memory_fraction=memory_fraction))
        return sorted(samples, key=lambda s: (s.prompt_index, s.sample_index))

    def stream(self, prompt: str, *, router: str | Router = DEFAULT_ROUTER, n: int = 1,
               sampling: SamplingParams | None = None) -> Iterator[TokenEvent]:
        """Stream the n samples of one prompt token by token (the same loop as `generate`)."""
        _check_inputs([prompt], sampling)
        if self._cross_route(router) is not None:
            yield from self._stream_cross(prompt, router, n, sampling)
            return
        sampling, route, requests, stops, _ = self._prepare([prompt], router, n, sampling)
        ids: list[list[int]] = [[] for _ in requests]
        shown = [""] * len(requests)
        stop_ids = self.pair.vocab.stop_ids
        for event in lockstep(self.pair, requests, route, sampling, stops):
            for i, row in enumerate(event.rows):
                token = int(event.tokens[i])
                ids[row].append(token)
                finish = event.finished.get(row)
                if token in stop_ids:
                    text = ""
                else:
                    full = self.tokenizer.decode(ids[row], skip_special_tokens=True)
                    text = "" if full.endswith("\ufffd") and finish is None else full[len(shown[row]):]
                    shown[row] += text
                yield TokenEvent(row, token, text, "base" if bool(event.use_base[i]) else "aligned",
                                 event.reasons[i], finish)

    def _stream_cross(self, prompt, router, n, sampling) -> Iterator[TokenEvent]:
        """Stream a cross-tokenizer method span by span (token_id -1: the pair shares no ids)."""
        from baco.decode.crossloop import crossloop

        if is_single_model(router):
            yield from self._single(router).stream(prompt, router=router, n=n, sampling=sampling)
            return
        sampling, route, requests, stops, _ = self._prepare([prompt], router, n, sampling)
        for event in crossloop(self._cross, requests, route, sampling, stops):
            yield TokenEvent(event.row, -1, event.text, event.source, event.reason, event.finished)


def check_cross_router(router: str, mismatch: Exception | None) -> None:
    """A token-level router cannot run on a pair whose tokenizers differ: say what can."""
    from baco.strategies import parse_strategy

    if parse_strategy(router) is not None:
        return
    route = get_router(router, build=False)
    if unit_of(route) is None and not is_single_model(route):
        detail = f" ({mismatch})" if mismatch is not None else ""
        raise TokenizerMismatchError(f"router {route.name!r} routes token by token, which needs one shared "
                                     f"vocabulary, but the base and aligned tokenizers differ{detail}. Instead, "
                                     f"{token_alternatives()}")
