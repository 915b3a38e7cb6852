"""Run a sweep's cells: load the models once, decode each cell as one lockstep batch, append, resume.

Resuming: samples already in the store are skipped row by row (a sample depends only on its seed,
prompt and index, so the rows generated after a restart are exactly those an uninterrupted run
would have made); nothing stored is rewritten. What is done is read from the samples themselves
(ledger.audit), checked against the plan, under the run directory's lock.
"""

from __future__ import annotations

import sys
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

from baco.api import Collaboration
from baco.models.hf import HFCausalLM, load_tokenizer
from baco.models.pair import ModelPair, SoloPair
from baco.prompts import DEFAULT_BASE_TEMPLATE, PromptFormat
from baco.routers import get_router
from baco.strategies import parse_strategy
from baco.storage import JsonlAppender, append_row, repair_tail
from baco.sweep import ledger
from baco.sweep.config import Cell, Configuration, SweepConfig
from baco.sweep.lock import RunLock
from baco.tasks import load_task


@dataclass
class Engines:
    """The loaded models and the three ways to run them: the pair, base alone, aligned alone."""

    pair: ModelPair
    solo_base: SoloPair
    solo_aligned: SoloPair

    @classmethod
    def load(cls, base: str, aligned: str, *, dtype: str = "auto", device: str = "auto",
             anchor: str | None = None) -> "Engines":
        from baco.vocab import check_compatible

        base_tok, aligned_tok = load_tokenizer(base), load_tokenizer(aligned)
        check_compatible(base_tok, aligned_tok)
        base_lm = HFCausalLM.from_pretrained(base, dtype=dtype, device=device, tokenizer=base_tok)
        aligned_lm = HFCausalLM.from_pretrained(aligned, dtype=dtype, device=device, tokenizer=aligned_tok)
        anchor_lm = HFCausalLM.from_pretrained(anchor, dtype=dtype, device=device) if anchor else None
        return cls(ModelPair(base_lm, aligned_lm, anchor_lm), SoloPair(base_lm, "base"),
                   SoloPair(aligned_lm, "aligned"))

    def collaboration(self, configuration: Configuration) -> Collaboration:
        """Single-model methods run one model per step (their true cost); the rest run the pair."""
        pair = {"base": self.solo_base, "aligned": self.solo_aligned}.get(configuration.router, self.pair)
        fmt = PromptFormat(base_template=configuration.base_template or DEFAULT_BASE_TEMPLATE,
                           system_prompt=configuration.system_prompt)
        return Collaboration(pair, fmt)


def _row(sample, cell: Cell, config: SweepConfig, prompt_id: str, sample_id: str, began: float) -> dict:
    conf = cell.configuration
    row = sample.to_dict()
    # the models this configuration ran (a single-model baseline runs one model, not the pair)
    row.update(models=config.models_of(conf), cell=cell.key, id=sample_id, task=cell.task.name, method=conf.method,
               config=conf.name, item_id=prompt_id, cell_seconds=round(time.perf_counter() - began, 3))
    return row


def cell_prompts(cell: Cell) -> list:
    return load_task(cell.task.path or cell.task.name, limit=cell.task.limit, seed=0)


def plan_sweep(config: SweepConfig) -> tuple[dict, ledger.Plan]:
    """The prompts of every task and the sample ids of every cell (reads the task files, loads no model)."""
    items_of = {t: cell_prompts(Cell(config.configurations[0], t, 0)) for t in config.tasks}
    plan = {c.key: ledger.plan_cell(config, c, [item.prompt for item in items_of[c.task]]) for c in config.cells}
    return items_of, plan


def _warn_about(result: ledger.Audit, config: SweepConfig, log) -> None:
    for problem in result.problems[:10]:
        print(f"baco: warning: {problem} (left in the file, not used)", file=log)
    for cell in (result.cells[c.key] for c in config.cells):
        if cell.duplicates or cell.unplanned:
            print(f"baco: warning: cell {cell.key}: {ledger.describe(cell)}; each sample is used once", file=log)


def run_cells(config: SweepConfig, out_dir: str | Path, engines: Engines | None = None, *,
              progress: bool = True, log=None) -> dict:
    """Generate every missing sample of every cell, holding the run directory's lock; returns counts."""
    with RunLock(out_dir):
        return generate_missing(config, out_dir, engines, progress=progress, log=log)


def generate_missing(config: SweepConfig, out_dir: str | Path, engines: Engines | None = None, *,
                     progress: bool = True, log=None) -> dict:
    """run_cells without taking the lock (the caller holds it): {generated, kept, cells}."""
    from tqdm import tqdm

    log = sys.stderr if log is None else log
    out_dir = Path(out_dir)
    items_of, plan = plan_sweep(config)
    message = repair_tail(out_dir / ledger.SAMPLES)
    if message:
        warnings.warn(message, stacklevel=2)
    ledger.record_plan(out_dir, plan)
    result = ledger.audit(out_dir, plan)
    _warn_about(result, config, log)
    cells = config.cells
    total = sum(result.cells[c.key].expected for c in cells)
    kept = sum(len(result.cells[c.key].stored) for c in cells)
    todo = [c for c in cells if not result.cells[c.key].complete]
    if kept:
        print(f"resuming: {kept} of {total} samples already done, {len(todo)} of {len(cells)} cells to run",
              file=log)
    if todo and engines is None:
        engines = Engines.load(config.base, config.aligned, anchor=config.anchor)
    generated = 0
    with tqdm(total=total, initial=kept, unit="sample", disable=not progress, file=log) as bar, \
            JsonlAppender(out_dir / ledger.SAMPLES, repair=False) as store:
        for cell in todo:
            items = items_of[cell.task]
            conf = cell.configuration
            stored = result.cells[cell.key].stored
            identity = ledger.cell_identity(config, cell)
            bar.set_description(f"{cell.task.name} {conf.name} seed {cell.seed}")
            sampling = replace(conf.sampling, seed=cell.seed)
            collab = engines.collaboration(conf)
            # a multi-pass method (negative prompting, verbalized sampling) goes by name: iter_generate
            # reruns it and yields only what `skip` lacks; a router is built once, to read its own cost
            router = conf.router if parse_strategy(conf.router) else get_router(conf.router)
            before = dict(getattr(router, "stats").to_dict()) if hasattr(router, "stats") else None
            began = time.perf_counter()
            made = 0
            for sample in collab.iter_generate([item.prompt for item in items], router=router, n=config.n,
                                               sampling=sampling, batch_size=conf.batch_size or config.batch_size,
                                               skip=set(stored)):
                prompt = items[sample.prompt_index]
                sid = ledger.sample_id(identity, prompt.prompt, sample.prompt_index, sample.sample_index)
                store.append(_row(sample, cell, config, prompt.id, sid, began))
                generated += 1
                made += 1
                bar.update(1)
            store.sync()
            cost = {"cell": cell.key, "samples": made, "seconds": round(time.perf_counter() - began, 3),
                    "complete": True, "total": len(stored) + made, "planned": len(plan[cell.key])}
            if before is not None:  # a router with its own model (JUDGE): its extra cost, honestly
                after = router.stats.to_dict()
                cost["router_stats"] = {k: round(after[k] - before[k], 3) for k in after}
            append_row(out_dir / ledger.CELLS, cost)
    return {"generated": generated, "kept": kept, "cells": len(cells)}
