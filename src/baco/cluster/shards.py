"""`baco generate --ray`: the prompts, in shards, decoded by Ray workers that each hold the model pair.

Each shard is decoded with `Collaboration.iter_generate` (on the same ModelPair a local run loads)
and its samples come back with their prompt's index in the whole list. A sample depends only on
(seed, prompt, sample index, the prompt's copy number in the whole list, which each shard is given),
so they are the samples of a local run with the same seed; without
a seed, one is drawn here, once, for every shard. Each sample is yielded once, even when Ray
reruns a shard whose worker died.
"""

from __future__ import annotations

import functools
import math
import os
import random
from dataclasses import dataclass, field, replace
from typing import Container, Iterator, Sequence

from baco.api import DEFAULT_ROUTER, Collaboration, _check_inputs
from baco.cluster.options import RayOptions
from baco.cluster.pool import UnitDone, WorkerPool, connected
from baco.decode.engine import MEMORY_FRACTION, check_fraction, check_max_batch
from baco.decode.loop import occurrences_of
from baco.decode.records import Sample
from baco.decode.sampling import SamplingParams
from baco.errors import BacoError, PromptError
from baco.models.embedded import ALIGNED_ALIAS, BASE_ALIAS
from baco.prompts import PromptFormat
from baco.sweep.run import Engines


@dataclass
class PromptShard:
    """Some of the prompts (with their indices in the whole list) and the samples of theirs to skip."""

    indices: list[int]
    prompts: list[str]
    router: str
    n: int
    sampling: SamplingParams
    batch_size: int | str
    prompt_format: PromptFormat
    skip: set = field(default_factory=set)  # (prompt index in the whole list, sample index)
    max_len: int | None = None
    made: int = 0
    memory_fraction: float = MEMORY_FRACTION  # batch_size "auto": sized on each worker's own device
    occurrences: list[int] | None = None  # each prompt's copy number in the whole list (a repeated prompt's copies)

    def run(self, engines: Engines) -> Iterator[Sample]:
        collab = Collaboration(engines.pair, self.prompt_format)
        local = {(j, k) for j, i in enumerate(self.indices) for k in range(self.n) if (i, k) in self.skip}
        for sample in collab.iter_generate(self.prompts, router=self.router, n=self.n, sampling=self.sampling,
                                           batch_size=self.batch_size, max_len=self.max_len, skip=local,
                                           memory_fraction=self.memory_fraction, occurrences=self.occurrences):
            sample.prompt_index = self.indices[sample.prompt_index]
            self.made += 1
            yield sample

    @property
    def total(self) -> int:
        """The shard's samples held once it has run (what it skipped plus what it made)."""
        return len(self.skip) + self.made


def generate(prompts: Sequence[str], *, base: str | os.PathLike = BASE_ALIAS,
             aligned: str | os.PathLike = ALIGNED_ALIAS, anchor: str | os.PathLike | None = None,
             dtype: str = "auto", device: str = "auto", prompt_format: PromptFormat | None = None,
             router: str = DEFAULT_ROUTER, n: int = 1, sampling: SamplingParams | None = None,
             batch_size: int | str = 32, skip: Container[tuple[int, int]] = (), max_len: int | None = None,
             backend: str = "hf", compile: bool = False, options: RayOptions | None = None,
             memory_fraction: float = MEMORY_FRACTION, one_forward: str = "auto") -> Iterator[Sample]:
    """Collaboration.iter_generate on Ray workers: yield each (prompt, sample) not in `skip` once, as it finishes.

    The models are loaded by the workers (by id or path: every node must reach them), never here, as
    `Collaboration.from_pretrained` loads them (`one_forward` included).
    """
    prompts = _check_inputs(prompts, sampling)
    if not prompts:
        raise PromptError("no prompts given")
    if not isinstance(router, str):
        raise BacoError("on Ray the router is given by name (e.g. 'p-punc:0.5'), not as an object")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise BacoError(f"n must be an integer >= 1, got {n!r}")
    check_max_batch(batch_size)
    check_fraction(memory_fraction)
    sampling = sampling or SamplingParams()
    if sampling.seed is None:  # one seed for every shard, recorded in every sample
        sampling = replace(sampling, seed=random.SystemRandom().randrange(2**31))
    options = options or RayOptions()
    fmt = prompt_format or PromptFormat()
    todo = [i for i in range(len(prompts)) if any((i, k) not in skip for k in range(n))]
    copies = occurrences_of(prompts)  # counted in the whole list: a shard may hold one copy of a prompt
    if not todo:
        return
    build = functools.partial(Engines.load, str(base), str(aligned), dtype=dtype, device=device,
                              anchor=None if anchor is None else str(anchor), backend=backend, compile=compile,
                              one_forward=one_forward)
    with connected(options) as ray:
        count = options.worker_count(ray.cluster_resources())
        size = options.shard_size or math.ceil(len(todo) / (4 * count))
        units = [PromptShard(chunk, [prompts[i] for i in chunk], router, n, sampling, batch_size, fmt,
                             {(i, k) for i in chunk for k in range(n) if (i, k) in skip}, max_len=max_len,
                             memory_fraction=memory_fraction, occurrences=[copies[i] for i in chunk])
                 for chunk in (todo[start:start + size] for start in range(0, len(todo), size))]
        done = set()
        with WorkerPool(ray, build, options, min(count, len(units)), "generate") as pool:
            for unit, item in pool.run(units):
                if isinstance(item, UnitDone):
                    continue
                sample, _ = item
                pair = (sample.prompt_index, sample.sample_index)
                unit.skip.add(pair)  # if the shard must move to another worker
                if pair not in done:
                    done.add(pair)
                    yield sample
