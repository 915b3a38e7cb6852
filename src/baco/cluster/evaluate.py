"""A sweep's evaluation on Ray: the model-heavy parts (quality scores, sentence embeddings) run on workers.

Before the evaluation runs here, the pairs the score cache lacks are scored by workers, in shards
(each worker loads the judge / fluency / reward / embedding model once), and this process appends
the scores to the run's `quality-scores.jsonl`, the one cache every later evaluation reads; the
texts the semantic metrics need are embedded by workers too and handed to the evaluation as a
table. The evaluation itself (per-prompt diversity, means, Pareto) then runs here on cached scores
and vectors, loading no quality model.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from baco.cluster.options import RayOptions
from baco.cluster.pool import UnitDone, WorkerPool, connected
from baco.evaluate.cache import MISS, ScoreCache, scorer_identity
from baco.evaluate.io import Record
from baco.evaluate.registry import MetricSpec, get_metric
from baco.evaluate.resources import EvalOptions, Resources
from baco.evaluate.runner import texts_to_embed

SCORE_SHARD, EMBED_SHARD = 256, 512


@dataclass
class ScoreShard:
    """(prompt key, response) pairs for one quality metric (as the score cache keys them), and the prompt of
    each (its text, or its conversation: what the scorer reads)."""

    metric: str
    scorer: str
    pairs: list[tuple[str, str]]
    prompts: list

    def run(self, resources: Resources) -> Iterator[list]:
        spec = get_metric(self.metric)
        needs = {name: resources.get(name) for name in spec.needs}
        values = spec.fn(self.prompts, [r for _, r in self.pairs], **needs)
        yield [None if v is None else float(v) for v in values]


@dataclass
class EmbedShard:
    texts: list[str]

    def run(self, resources: Resources) -> Iterator[np.ndarray]:
        yield np.asarray(resources.get("embedder")(self.texts), dtype=np.float32)


class EmbeddingTable:
    """Vectors made on the cluster, called like an Embedder; a text not in it is embedded here."""

    def __init__(self, vectors: dict[str, np.ndarray], options: EvalOptions):
        self.vectors, self.options, self._local = vectors, options, None

    def __call__(self, texts: list[str]) -> np.ndarray:
        missing = [t for t in dict.fromkeys(texts) if t not in self.vectors]
        if missing:
            self._local = self._local or Resources(self.options).get("embedder")
            self.vectors.update(zip(missing, self._local(missing)))
        return np.stack([self.vectors[t] for t in texts]) if texts else np.zeros((0, 384), dtype=np.float32)


def _score_shards(records: list[Record], specs: list[MetricSpec], options: EvalOptions,
                  cache: ScoreCache) -> list[ScoreShard]:
    shards = []
    asked = {r.key: r.asked for r in records}
    for spec in (s for s in specs if s.kind == "quality"):
        scorer = scorer_identity(spec, options)
        todo = list(dict.fromkeys((r.key, r.response) for r in records
                                  if cache.get(scorer, r.key, r.response) is MISS))
        shards += [ScoreShard(spec.name, scorer, chunk, [asked[key] for key, _ in chunk])
                   for chunk in (todo[i:i + SCORE_SHARD] for i in range(0, len(todo), SCORE_SHARD))]
    return shards


def prepare_on_ray(records: list[Record], specs: list[MetricSpec], resources: Resources, options: RayOptions, *,
                   progress: bool = True, log=None) -> dict:
    """Score what the cache lacks and embed every text on Ray workers; `resources` then holds both.

    Needs `resources.options.score_cache` (the one file the scores go to). Returns counts.
    """
    from tqdm import tqdm

    log = sys.stderr if log is None else log
    eval_options = resources.options
    cache = ScoreCache(eval_options.score_cache)
    scoring = _score_shards(records, specs, eval_options, cache)
    texts = list(dict.fromkeys(texts_to_embed(records, specs, eval_options)))
    embedding = [EmbedShard(texts[i:i + EMBED_SHARD]) for i in range(0, len(texts), EMBED_SHARD)]
    units = scoring + embedding
    vectors: dict[str, np.ndarray] = {}
    if units:
        total = sum(len(u.pairs) for u in scoring) + len(texts)
        with connected(options) as ray, tqdm(total=total, unit="item", disable=not progress, file=log,
                                             desc="evaluation models on Ray") as bar:
            count = min(options.worker_count(ray.cluster_resources()), len(units))
            with WorkerPool(ray, functools.partial(Resources, eval_options), options, count, "evaluate") as pool:
                for unit, item in pool.run(units):
                    if isinstance(item, UnitDone):
                        continue
                    values, _ = item
                    if isinstance(unit, ScoreShard):
                        cache.add(unit.scorer, unit.pairs, values)  # this process is the cache's one writer
                        bar.update(len(unit.pairs))
                    else:
                        vectors.update(zip(unit.texts, values))
                        bar.update(len(unit.texts))
    if texts:
        resources.provide("embedder", EmbeddingTable(vectors, eval_options))
    return {"scored": sum(len(u.pairs) for u in scoring), "embedded": len(texts)}
