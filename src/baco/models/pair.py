"""A base/aligned pair over one vocabulary: the loop asks it for both next-token distributions at once."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

from baco.errors import ModelLoadError
from baco.models.hf import HFCausalLM, HFSession, resolve_source
from baco.models.slots import config_refusal, slot_refusal
from baco.vocab import TokenTable, check_compatible, control_token_ids, token_texts


def check_engine_can_step(lm) -> None:
    """Refuse, when a pair is made, a transformers model that the slot engine (every same-vocabulary router
    runs on it) would step into other tokens than transformers' own: ALiBi, recurrent or chunked layers."""
    if lm is None or hasattr(lm, "engine_unit"):  # llama.cpp steps its own caches
        return
    _refuse(lm.name, slot_refusal(lm.model))


def check_sources_can_step(names, dtype="auto") -> None:
    """`check_engine_can_step` from each named model's config.json, before any weights load (a 7B ALiBi model
    would load for minutes first). A config that cannot be read here is left to the load, which says why."""
    from transformers import AutoConfig, AutoModelForCausalLM

    for name in names:
        if name is None:
            continue
        try:
            config = AutoConfig.from_pretrained(resolve_source(name, dtype)[0])
            stateful = getattr(AutoModelForCausalLM._model_mapping[type(config)], "_is_stateful", False)
        except Exception:  # noqa: BLE001 - an unknown or unreadable config: the load reports it
            continue
        _refuse(os.fspath(name), config_refusal(config, stateful=stateful))


def _refuse(name: str, why: str | None) -> None:
    if why is not None:
        raise ModelLoadError(f"{name!r} cannot run on baco's decoding engine: {why}; use a model of another "
                             f"architecture (docs/backends.md lists those tested)")


class ModelPair:
    """Two causal LMs sharing a tokenizer vocabulary (checked at construction).

    The shared vocabulary spans the wider of the two logit matrices; ids a model lacks get
    -inf from it. Control tokens, padding rows and ids whose strings differ between the two
    tokenizers are never sampled; the stop tokens of both models stay allowed.
    """

    def __init__(self, base: HFCausalLM, aligned: HFCausalLM, anchor: HFCausalLM | None = None):
        """`anchor`: an optional third model (proxy-tuning's small base), read with the base model's prompt."""
        self.base, self.aligned, self.anchor = base, aligned, anchor
        for lm in (base, aligned, anchor):
            check_engine_can_step(lm)
        shared = check_compatible(base.tokenizer, aligned.tokenizer)
        if anchor is not None:
            shared = min(shared, check_compatible(base.tokenizer, anchor.tokenizer))
        self.vocab_size = max(base.output_rows, aligned.output_rows, anchor.output_rows if anchor else 0)
        longer = aligned.tokenizer if len(aligned.tokenizer) >= len(base.tokenizer) else base.tokenizer
        self.stop_ids = base.stop_token_ids | aligned.stop_token_ids
        beyond_shared = set(range(shared, self.vocab_size)) - self.stop_ids
        controls = control_token_ids(base.tokenizer) | control_token_ids(aligned.tokenizer) | beyond_shared
        # routing and sampling run where the base model's logits are, so no (B, V) tensor leaves the device
        self.device = base.device
        self.vocab = TokenTable.from_texts(token_texts(longer, self.vocab_size), control_ids=controls,
                                           stop_ids=self.stop_ids).to(self.device)
        self._mask = torch.where(self.vocab.allowed, 0.0, -math.inf)

    @property
    def context_length(self) -> int:
        return min(self.base.context_length, self.aligned.context_length)

    @property
    def sides(self) -> list[tuple[HFCausalLM, str]]:
        """The models the engine runs each step, with the rendering each reads ("base" or "aligned")."""
        sides = [(self.base, "base"), (self.aligned, "aligned")]
        return sides + ([(self.anchor, "base")] if self.anchor is not None else [])

    def compile_steps(self) -> None:
        """Run every side's decoding steps through `torch.compile` (`HFCausalLM.compiled`, read by the engine)."""
        for lm, _ in self.sides:
            lm.compiled = True

    def model_names(self) -> dict[str, str]:
        """The models that ran, by role (provenance for every sample)."""
        names = {"base": self.base.name, "aligned": self.aligned.name}
        names |= {"backend": self.base.backend} if hasattr(self.base, "backend") else {}  # llama.cpp
        return names | ({"anchor": self.anchor.name} if self.anchor is not None else {})

    def split(self, logprobs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(base, aligned, anchor or None) log-probs from the sides' log-probs, in `sides` order."""
        return logprobs[0], logprobs[1], (logprobs[2] if self.anchor is not None else None)

    def start(self, base_prompts: list[list[int]], aligned_prompts: list[list[int]]) -> "PairSession":
        """Prefill both models: each reads its own rendering of the same requests."""
        anchor = self.anchor.start(base_prompts) if self.anchor is not None else None
        return PairSession(self, self.base.start(base_prompts), self.aligned.start(aligned_prompts), anchor)

    def logprobs(self, logits: torch.Tensor) -> torch.Tensor:
        """Pad logits to the shared width, mask what may not be sampled, log-softmax (on the pair's device), in
        float32: adding the float32 mask to bf16/fp16 logits computes in float32 (one pass, no separate cast)."""
        logits = logits.to(self.device)
        if logits.dtype not in (torch.bfloat16, torch.float16, torch.float32):
            logits = logits.float()
        if logits.shape[-1] < self.vocab_size:
            logits = torch.nn.functional.pad(logits, (0, self.vocab_size - logits.shape[-1]), value=-math.inf)
        return torch.log_softmax(logits + self._mask, dim=-1)


@dataclass
class PairSession:
    pair: ModelPair
    base: HFSession
    aligned: HFSession
    anchor: HFSession | None = None

    def logprobs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(base, aligned) next-token log-probs of the active rows, each (B, V) over the shared vocabulary."""
        return self.pair.logprobs(self.base.logits), self.pair.logprobs(self.aligned.logits)

    def anchor_logprobs(self) -> torch.Tensor | None:
        return None if self.anchor is None else self.pair.logprobs(self.anchor.logits)

    def step(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append the same token per row to every model's context; return the new (base, aligned) distributions."""
        for session in (self.base, self.aligned, self.anchor):
            if session is not None:
                session.step(tokens)
        return self.logprobs()

    def keep(self, rows: torch.Tensor) -> None:
        for session in (self.base, self.aligned, self.anchor):
            if session is not None:
                session.keep(rows)


class SoloPair(ModelPair):
    """One model on both sides, run once per step: single-model baselines on the same engine and cost.

    `reads` picks the rendering it is given: "aligned" (the chat template) or "base" (plain text).
    Use it with the router of the same name, so that draws come from that side's random stream.
    """

    def __init__(self, lm: HFCausalLM, reads: str = "aligned"):
        if reads not in ("aligned", "base"):
            raise ValueError(f"reads must be 'aligned' or 'base', got {reads!r}")
        super().__init__(lm, lm)
        self.reads = reads

    @property
    def sides(self) -> list[tuple[HFCausalLM, str]]:
        return [(self.base, self.reads)]

    def model_names(self) -> dict[str, str]:
        return {self.reads: self.base.name}

    def split(self, logprobs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, None]:
        return logprobs[0], logprobs[0], None

    def start(self, base_prompts: list[list[int]], aligned_prompts: list[list[int]]) -> "SoloSession":
        return SoloSession(self, self.base.start(aligned_prompts if self.reads == "aligned" else base_prompts))


@dataclass
class SoloSession:
    pair: SoloPair
    session: HFSession

    def logprobs(self) -> tuple[torch.Tensor, torch.Tensor]:
        logprobs = self.pair.logprobs(self.session.logits)
        return logprobs, logprobs

    def anchor_logprobs(self) -> None:
        return None

    def step(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.session.step(tokens)
        return self.logprobs()

    def keep(self, rows: torch.Tensor) -> None:
        self.session.keep(rows)
