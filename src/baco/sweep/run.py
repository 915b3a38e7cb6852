"""Run a sweep's cells: load the models once, decode each cell as one lockstep batch, append, resume.

Resuming: samples already in the store are skipped row by row (a sample depends only on its seed,
prompt and index, so the rows generated after a restart are exactly those an uninterrupted run
would have made); nothing stored is rewritten.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from baco.api import Collaboration
from baco.models.hf import HFCausalLM, load_tokenizer
from baco.models.chars import CrossPair
from baco.models.pair import ModelPair, SoloPair
from baco.prompts import DEFAULT_BASE_TEMPLATE, PromptFormat
from baco.routers import get_router
from baco.strategies import parse_strategy
from baco.sweep.config import Cell, Configuration, SweepConfig
from baco.sweep.store import SampleStore
from baco.tasks import load_task


@dataclass
class Engines:
    """The loaded models and the three ways to run them: the pair, base alone, aligned alone."""

    pair: ModelPair | CrossPair  # a CrossPair when the tokenizers differ
    solo_base: SoloPair
    solo_aligned: SoloPair

    @classmethod
    def load(cls, base: str, aligned: str, *, dtype: str = "auto", device: str = "auto",
             anchor: str | None = None) -> "Engines":
        from baco.errors import TokenizerMismatchError
        from baco.vocab import check_compatible

        base_tok, aligned_tok = load_tokenizer(base), load_tokenizer(aligned)
        try:
            check_compatible(base_tok, aligned_tok)
            shared = True
        except TokenizerMismatchError:
            if anchor:
                raise
            shared = False
        base_lm = HFCausalLM.from_pretrained(base, dtype=dtype, device=device, tokenizer=base_tok)
        aligned_lm = HFCausalLM.from_pretrained(aligned, dtype=dtype, device=device, tokenizer=aligned_tok)
        anchor_lm = HFCausalLM.from_pretrained(anchor, dtype=dtype, device=device) if anchor else None
        pair = ModelPair(base_lm, aligned_lm, anchor_lm) if shared else CrossPair(base_lm, aligned_lm)
        return cls(pair, SoloPair(base_lm, "base"), SoloPair(aligned_lm, "aligned"))

    def collaboration(self, configuration: Configuration) -> Collaboration:
        """Single-model methods run one model per step (their true cost); the rest run the pair."""
        pair = {"base": self.solo_base, "aligned": self.solo_aligned}.get(configuration.router, self.pair)
        fmt = PromptFormat(base_template=configuration.base_template or DEFAULT_BASE_TEMPLATE,
                           system_prompt=configuration.system_prompt)
        return Collaboration(pair, fmt)


def _store(store: SampleStore, sample, cell: Cell, conf: Configuration, items: list, began: float) -> None:
    row = sample.to_dict()
    row.update(cell=cell.key, task=cell.task.name, method=conf.method, config=conf.name,
               item_id=items[sample.prompt_index].id, cell_seconds=round(time.perf_counter() - began, 3))
    store.append(row)


def _log_cost(out_dir, cost: dict) -> None:
    """One line per finished (part of a) cell in cells.jsonl: samples made, seconds, a router's own cost."""
    with open(Path(out_dir) / "cells.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps(cost) + "\n")


def finished_cells(out_dir) -> set[str]:
    """Cells that ran to their end (a method may make fewer samples than asked, e.g. verbalized sampling)."""
    path = Path(out_dir) / "cells.jsonl"
    if not path.is_file():
        return set()
    keys = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row.get("complete"):
            keys.add(row["cell"])
    return keys


def cell_prompts(cell: Cell) -> list:
    return load_task(cell.task.path or cell.task.name, limit=cell.task.limit, seed=0)


def run_cells(config: SweepConfig, out_dir: str | Path, engines: Engines | None = None, *,
              progress: bool = True, log=sys.stderr) -> dict:
    """Generate every missing sample of every cell; returns counts {generated, kept, cells}."""
    from tqdm import tqdm

    store = SampleStore(Path(out_dir) / "samples.jsonl")
    done = store.done()
    cells = config.cells
    items_of = {t: cell_prompts(Cell(config.configurations[0], t, 0)) for t in config.tasks}
    total = sum(len(items_of[c.task]) * config.n for c in cells)
    kept = sum(len(done.get(c.key, ())) for c in cells)
    complete = finished_cells(out_dir)
    todo = [c for c in cells if c.key not in complete
            and len(done.get(c.key, ())) < len(items_of[c.task]) * config.n]
    if kept:
        print(f"resuming: {kept} of {total} samples already done, {len(todo)} of {len(cells)} cells to run",
              file=log)
    if todo and engines is None:
        engines = Engines.load(config.base, config.aligned, anchor=config.anchor)
    if todo and isinstance(engines.pair, CrossPair):  # before any cell runs: every method must suit the pair
        from baco.api import check_cross_router

        for conf in config.configurations:
            check_cross_router(conf.router, None)
    generated = 0
    with tqdm(total=total, initial=kept, unit="sample", disable=not progress, file=log) as bar:
        for cell in todo:
            items = items_of[cell.task]
            conf = cell.configuration
            skip = done.get(cell.key, set())
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
                                               sampling=sampling, batch_size=config.batch_size, skip=skip):
                _store(store, sample, cell, conf, items, began)
                generated += 1
                made += 1
                bar.update(1)
            cost = {"cell": cell.key, "samples": made, "seconds": round(time.perf_counter() - began, 3),
                    "complete": True}
            if before is not None:  # a router with its own model (JUDGE): its extra cost, honestly
                after = router.stats.to_dict()
                cost["router_stats"] = {k: round(after[k] - before[k], 3) for k in after}
            _log_cost(out_dir, cost)
    return {"generated": generated, "kept": kept, "cells": len(cells)}
