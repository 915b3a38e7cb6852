"""`baco sweep --ray`: the sweep's missing cells run on Ray workers; this process writes the run directory.

The driver does what a local sweep does (lock, plan, audit, `resuming: ...`) and sends each
unfinished cell, with the samples it already holds, to a free worker (a `CellDecoder`, the same
object a local sweep runs). Samples stream back one by one and are appended by the one writer
(`RunWriter`), so `samples.jsonl`, `plan.jsonl` and `cells.jsonl` hold what a local run writes,
with the same ids; `cells.jsonl` also names the worker (host, pid, whether Ray had restarted it).
A sample that comes twice (Ray reran a unit after its worker died) is written once.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

from baco.cluster.options import RayOptions
from baco.cluster.pool import UnitDone, WorkerPool, connected
from baco.sweep import ledger
from baco.sweep.config import SweepConfig
from baco.sweep.run import Engines, RunWriter, pending, progress_bar


def generate_missing_on_ray(config: SweepConfig, out_dir: str | Path, options: RayOptions, *,
                            progress: bool = True, log=None) -> dict:
    """Like sweep.run.generate_missing (the caller holds the lock), with the cells run on Ray workers."""
    log = sys.stderr if log is None else log
    out_dir = Path(out_dir)
    state = pending(config, out_dir, log)
    units = [state.decoder(config, cell) for cell in state.todo]
    build = functools.partial(Engines.load, config.base, config.aligned, anchor=config.anchor, backend=config.backend,
                              compile=config.compile)
    with progress_bar(state, progress, log) as bar, RunWriter(out_dir, config, state) as writer:
        if units:
            with connected(options) as ray:
                count = min(options.worker_count(ray.cluster_resources()), len(units))
                bar.set_description(f"{len(units)} cells on {count} Ray workers")
                with WorkerPool(ray, build, options, count, "generate") as pool:
                    for unit, item in pool.run(units):
                        if isinstance(item, UnitDone):
                            writer.finish(unit.cell, made=item.made, total=item.total, seconds=item.seconds,
                                          router_stats=item.router_stats, worker=item.worker, numerics=item.numerics)
                            continue
                        sample, seconds = item
                        unit.skip.add((sample.prompt_index, sample.sample_index))  # if it must move on
                        if writer.add(unit.cell, sample, seconds):
                            bar.update(1)
    _check_complete(out_dir, state.plan, log)
    return {"generated": writer.generated, "kept": state.kept, "cells": len(config.cells)}


def _check_complete(out_dir: Path, plan: ledger.Plan, log) -> None:
    """Say so if a sample is still missing (a rerun on a device whose reruns differ); the next run makes it."""
    result = ledger.audit(out_dir, plan)
    missing = sum(cell.missing for cell in result.cells.values())
    if missing:
        print(f"baco: warning: {missing} samples are still missing after the cluster run; run the same "
              f"command again to make them", file=log)
