"""Run a sweep's cells: load the models once, decode each cell as one lockstep batch, append, resume.

Resuming: samples already in the store are skipped row by row (a sample depends only on its seed,
prompt and index, so the rows generated after a restart are exactly those an uninterrupted run
would have made); nothing stored is rewritten. What is done is read from the samples themselves
(ledger.audit), checked against the plan, under the run directory's lock.

The pieces are shared with the Ray path (baco.cluster): `pending` reads the run directory and says
what is missing, `CellDecoder` makes one cell's missing samples on loaded `Engines` (here, or in a
Ray actor), and `RunWriter` is the run directory's one writer (rows, ids, the cell log).
"""

from __future__ import annotations

import sys
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

from baco.api import COMPILE_NEEDS_ONE_TOKENIZER, Collaboration
from baco.defaults import MEMORY_FRACTION
from baco.decode.records import SAMPLE_ROW_START, Sample
from baco.errors import BacoError, ModelLoadError, OutputError, TaskError, TokenizerMismatchError
from baco.models.chars import CrossPair
from baco.models.embedded import ALIGNED_ALIAS, BASE_ALIAS
from baco.models.hf import HFCausalLM, load_pair_models, load_tokenizers, looks_like_path
from baco.models.llamacpp import choose_backend, load_llamacpp_models
from baco.models.pair import ModelPair, SoloPair
from baco.numerics import numerics
from baco.prompts import DEFAULT_BASE_TEMPLATE, PromptFormat
from baco.routers import get_router
from baco.strategies import parse_strategy
from baco.storage import JsonlAppender, append_row, foreign_tail, repair_tail, scan_jsonl
from baco.sweep import ledger
from baco.sweep.config import Cell, Configuration, SweepConfig, SweepConfigError, TaskSpec
from baco.sweep.store import is_sample_row
from baco.sweep.lock import RunLock
from baco.tasks import TaskWarning, load_task, select
from baco.vocab import check_compatible


@dataclass
class Engines:
    """The loaded models and the three ways to run them: the pair, base alone, aligned alone."""

    pair: ModelPair | CrossPair  # a CrossPair when the tokenizers differ
    solo_base: SoloPair
    solo_aligned: SoloPair

    @classmethod
    def load(cls, base: str, aligned: str, *, dtype: str = "auto", device: str = "auto",
             anchor: str | None = None, one_forward: str = "auto", backend: str = "hf",
             compile: bool = False) -> "Engines":
        """`compile`: the transformers models' decoding steps run compiled (`torch.compile`; shared-tokenizer pairs)."""
        engines = cls._load(base, aligned, dtype=dtype, device=device, anchor=anchor, one_forward=one_forward,
                            backend=choose_backend(backend, base, aligned, anchor=anchor, device=device,
                                                   compile=compile), compile=compile)
        if compile:
            engines.pair.compile_steps()
        return engines

    @classmethod
    def _load(cls, base: str, aligned: str, *, dtype: str, device: str, anchor: str | None, one_forward: str,
              backend: str, compile: bool) -> "Engines":
        """The engines on `backend` (already chosen: `hf` or `llamacpp`)."""
        if backend == "llamacpp":
            base_lm, aligned_lm = load_llamacpp_models(base, aligned)
            return cls(ModelPair(base_lm, aligned_lm), SoloPair(base_lm, "base"), SoloPair(aligned_lm, "aligned"))
        base_tok, aligned_tok = load_tokenizers(base, aligned)
        try:
            check_compatible(base_tok, aligned_tok)
            shared = True
        except TokenizerMismatchError:
            if anchor:
                raise
            if compile:  # before any weights load
                raise BacoError(COMPILE_NEEDS_ONE_TOKENIZER) from None
            shared = False
        base_lm, aligned_lm = load_pair_models(base, aligned, dtype=dtype, device=device, base_tokenizer=base_tok,
                                               aligned_tokenizer=aligned_tok, one_forward=one_forward)
        anchor_lm = HFCausalLM.from_pretrained(anchor, dtype=dtype, device=device) if anchor else None
        pair = ModelPair(base_lm, aligned_lm, anchor_lm) if shared else CrossPair(base_lm, aligned_lm)
        return cls(pair, SoloPair(base_lm, "base"), SoloPair(aligned_lm, "aligned"))

    def collaboration(self, configuration: Configuration) -> Collaboration:
        """Single-model methods run one model per step (their true cost); the rest run the pair."""
        pair = {"base": self.solo_base, "aligned": self.solo_aligned}.get(configuration.router, self.pair)
        fmt = PromptFormat(base_template=configuration.base_template or DEFAULT_BASE_TEMPLATE,
                           system_prompt=configuration.system_prompt)
        return Collaboration(pair, fmt)


def cell_prompts(cell: Cell) -> list:
    """The task's prompts, each once (the evaluation groups samples by prompt, a text or a whole conversation, and
    measures each prompt over its n samples: a repeated item would give its prompt 2n), then the stratified
    `limit`."""
    items, seen, repeated = [], set(), []
    for item in load_task(cell.task.path or cell.task.name, column=cell.task.column):
        if item.key in seen:
            repeated.append(item.id)
            continue
        seen.add(item.key)
        items.append(item)
    if repeated:
        listed = ", ".join(repeated[:10]) + (", ..." if len(repeated) > 10 else "")
        warnings.warn(f"task {cell.task.name}: skipped {len(repeated)} item(s) repeating an earlier prompt: {listed}",
                      TaskWarning, stacklevel=2)
    return select(items, cell.task.limit, seed=0)


def task_prompts(config: SweepConfig, index: int, task: TaskSpec) -> list:
    """The prompts of `config.tasks[index]`; a task that cannot be read is reported with its field."""
    try:
        return cell_prompts(Cell(config.configurations[0], task, 0))
    except TaskError as error:
        field = config.where(f"tasks[{index}].{'path' if task.path else 'name'}")
        raise TaskError(f"{field}: {error}{_where_paths_are_read(config, task)}") from None


def _where_paths_are_read(config: SweepConfig, task: TaskSpec) -> str:
    """For a relative path that names no file: paths are read from the working directory, and the file may be
    beside the configuration instead."""
    path = Path(task.path or task.name)
    if path.is_absolute() or path.exists() or (task.path is None and not path.suffix):  # a bundled name
        return ""
    hint = f" (task paths are read from the working directory, {Path.cwd()}"
    beside = config.directory / path if config.directory is not None else None
    if beside is not None and beside.exists():
        hint += f"; the configuration's folder holds {beside}: give that path, or run from {config.directory}"
    return hint + ")"


def _first_token_router(config: SweepConfig) -> tuple[Configuration, BacoError] | None:
    """The first configuration that routes token by token, which a cross-tokenizer pair cannot run, with why."""
    from baco.api import check_cross_router

    for conf in config.configurations:
        try:
            check_cross_router(conf.router, None)
        except TokenizerMismatchError as error:
            return conf, error
    return None


def _tokenizers_differ(base: str, aligned: str) -> bool:
    """Whether `Engines.load` would make a cross-tokenizer pair, read from the tokenizers alone (no weights).
    False when a tokenizer cannot be read: loading the models then says why."""
    if base == aligned or {base, aligned} <= {BASE_ALIAS, ALIGNED_ALIAS}:  # the embedded aligned: base + adapter
        return False
    try:
        base_tok, aligned_tok = load_tokenizers(base, aligned)
        check_compatible(base_tok, aligned_tok)
    except TokenizerMismatchError:
        return True
    except ModelLoadError:
        return False
    return False


def check_methods_suit_pair(config: SweepConfig, engines: Engines | None = None) -> None:
    """Refuse a token-level method on a pair whose tokenizers differ (the loaded `engines`, else the config's
    models' tokenizers), naming it: before any cell runs, and in a dry run as in the real one."""
    found = _first_token_router(config)
    if found is None:
        return
    if engines is not None:
        cross = isinstance(engines.pair, CrossPair)
    else:
        cross = config.backend == "hf" and _tokenizers_differ(config.base, config.aligned)
    if cross:
        conf, error = found
        raise TokenizerMismatchError(f"{config.where(f'methods.{conf.method}')}: {error}")


def check_model_paths(config: SweepConfig) -> None:
    """Refuse a model path that names nothing (`models.base: ./chekpoints/base`), naming the key and where relative
    paths are read from: before the plan is written or any model loads, and in a dry run as in the real one. (A hub
    id, `org/name`, is the loader's to find.)"""
    for key in ("base", "aligned", "anchor"):
        name = getattr(config, key)
        if name and looks_like_path(name) and not Path(name).expanduser().exists():
            raise SweepConfigError(f"{config.where(f'models.{key}')}: no model at {name!r} (model paths are read "
                                   f"from the working directory, {Path.cwd()})")


def plan_sweep(config: SweepConfig) -> tuple[dict, ledger.Plan]:
    """The prompts of every task and the sample ids of every cell (reads the task files, and the tokenizers when a
    method routes token by token; loads no model). Bad tasks, model paths that name nothing and methods the pair
    cannot run are refused here."""
    items_of = {task: task_prompts(config, index, task) for index, task in enumerate(config.tasks)}
    check_model_paths(config)
    check_methods_suit_pair(config)
    plan = {c.key: ledger.plan_cell(config, c, [item.key for item in items_of[c.task]]) for c in config.cells}
    return items_of, plan


class CellDecoder:
    """One cell's missing samples, as their rows finish; afterwards `router_stats` holds the cost of a
    router with its own model (JUDGE), else None. Runs wherever the Engines are (here or a Ray actor)."""

    def __init__(self, cell: Cell, prompts: list[str], *, n: int, batch_size: int | str, skip: set,
                 memory_fraction: float = MEMORY_FRACTION):
        self.cell, self.prompts, self.n, self.batch_size, self.skip = cell, prompts, n, batch_size, skip
        self.memory_fraction = memory_fraction
        self.router_stats: dict | None = None
        self.made = 0

    def run(self, engines: Engines) -> Iterator[Sample]:
        conf = self.cell.configuration
        collab = engines.collaboration(conf)
        # a multi-pass method (negative prompting, verbalized sampling) goes by name: iter_generate
        # reruns it and yields only what `skip` lacks; a router is built once, to read its own cost
        router = conf.router if parse_strategy(conf.router) else get_router(conf.router)
        before = dict(router.stats.to_dict()) if hasattr(router, "stats") else None
        for sample in collab.iter_generate(self.prompts, router=router, n=self.n,
                                           sampling=replace(conf.sampling, seed=self.cell.seed),
                                           batch_size=conf.batch_size or self.batch_size, skip=set(self.skip),
                                           memory_fraction=self.memory_fraction):
            self.made += 1
            yield sample
        if before is not None:  # a router with its own model (JUDGE): its extra cost, honestly
            after = router.stats.to_dict()
            self.router_stats = {k: round(after[k] - before[k], 3) for k in after}

    @property
    def total(self) -> int:
        """The cell's samples stored once this run has finished (what was skipped plus what it made)."""
        return len(self.skip) + self.made


@dataclass
class Pending:
    """What a run directory lacks: the prompts, the plan, the audit and the cells still to run."""

    items_of: dict
    plan: ledger.Plan
    audit: ledger.Audit
    todo: list[Cell]
    total: int
    kept: int

    def decoder(self, config: SweepConfig, cell: Cell) -> CellDecoder:
        return CellDecoder(cell, [item.asked for item in self.items_of[cell.task]], n=config.n,
                           batch_size=config.batch_size, skip=set(self.audit.cells[cell.key].stored),
                           memory_fraction=config.memory_fraction)


def _warn_about(result: ledger.Audit, config: SweepConfig, log) -> None:
    for problem in result.problems[:10]:
        print(f"baco: warning: {problem} (left in the file, not used)", file=log)
    for cell in (result.cells[c.key] for c in config.cells):
        if cell.duplicates or cell.unplanned:
            print(f"baco: warning: cell {cell.key}: {ledger.describe(cell)}; each sample is used once", file=log)
    outside = sum(result.cells[c.key].outside for c in config.cells)
    if outside:
        print(f"note: {outside} stored samples are outside this run's plan (made when it asked for more samples per "
              f"prompt): kept in {ledger.SAMPLES}, not used", file=log)


def _check_own_samples(out_dir: Path) -> None:
    """Refuse to drop the unfinished last line of a samples.jsonl that is not a sweep's: one with no sample row
    in a folder where no sweep recorded a plan (a sweep records its plan before its first sample)."""
    if ledger.read_plan(out_dir):  # a sweep's own folder (and its samples file is not parsed twice at each start)
        return
    problem = foreign_tail(scan_jsonl(out_dir / ledger.SAMPLES), is_sample_row, SAMPLE_ROW_START)
    if problem:
        raise OutputError(f"--out {str(out_dir)!r}: {ledger.SAMPLES} is not a sweep's samples file ({problem}); "
                          f"a sweep appends only to its own: choose another --out")


def pending(config: SweepConfig, out_dir: Path, log) -> Pending:
    """Repair a torn last line, record the plan, audit what is stored (the caller holds the lock)."""
    items_of, plan = plan_sweep(config)
    _check_own_samples(out_dir)
    message = repair_tail(out_dir / ledger.SAMPLES)
    if message:
        warnings.warn(message, stacklevel=3)
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
    return Pending(items_of, plan, result, todo, total, kept)


class RunWriter:
    """The run directory's one writer: each sample once (by id), as a row tagged with its cell; the cell log,
    one line per cell that finished in this run."""

    def __init__(self, out_dir: Path, config: SweepConfig, state: Pending):
        self.out_dir, self.config, self.state = out_dir, config, state
        self.written = {(key, pair) for key, cell in state.audit.cells.items() for pair in cell.stored}
        self.finished: set[str] = set()  # keys of the cells logged in cells.jsonl by this run
        self.generated = 0
        self._store = JsonlAppender(out_dir / ledger.SAMPLES, repair=False)

    def add(self, cell: Cell, sample: Sample, seconds: float) -> bool:
        """Append the sample's row unless it is stored already (a retried unit may send it again)."""
        pair = (sample.prompt_index, sample.sample_index)
        if (cell.key, pair) in self.written:
            return False
        conf = cell.configuration
        prompt = self.state.items_of[cell.task][sample.prompt_index]
        row = sample.to_dict()
        # the models this configuration ran (a single-model baseline runs one model, not the pair)
        sid = ledger.sample_id(ledger.cell_identity(self.config, cell), prompt.key, *pair)
        row.update(models=self.config.models_of(conf), cell=cell.key, id=sid,
                   task=cell.task.name, method=conf.method, config=conf.name, item_id=prompt.id,
                   cell_seconds=round(seconds, 3))
        self._store.append(row)
        self.written.add((cell.key, pair))
        self.generated += 1
        return True

    def finish(self, cell: Cell, *, made: int, total: int, seconds: float, router_stats: dict | None = None,
               **extra) -> None:
        """The cell ran to its end: sync the samples, log its cost (`total`: its samples stored now).

        Once per cell and run: a cell whose end is reported again (a unit that Ray ran once more after its
        worker died) is not logged twice, so what is read from cells.jsonl counts each run of a cell once."""
        if cell.key in self.finished:
            return
        self._store.sync()
        cost = {"cell": cell.key, "samples": made, "seconds": round(seconds, 3), "complete": True,
                "total": total, "planned": len(self.state.plan[cell.key])}
        if router_stats is not None:
            cost["router_stats"] = router_stats
        append_row(self.out_dir / ledger.CELLS, {**cost, **extra})
        self.finished.add(cell.key)

    def close(self) -> None:
        self._store.close()

    def __enter__(self) -> "RunWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def run_cells(config: SweepConfig, out_dir: str | Path, engines: Engines | None = None, *,
              progress: bool = True, log=None) -> dict:
    """Generate every missing sample of every cell, holding the run directory's lock; returns counts."""
    with RunLock(out_dir):
        return generate_missing(config, out_dir, engines, progress=progress, log=log)


def progress_bar(state: Pending, progress: bool, log):
    from tqdm import tqdm

    return tqdm(total=state.total, initial=state.kept, unit="sample", disable=not progress, file=log)


def generate_missing(config: SweepConfig, out_dir: str | Path, engines: Engines | None = None, *,
                     progress: bool = True, log=None) -> dict:
    """run_cells without taking the lock (the caller holds it): {generated, kept, cells}."""
    log = sys.stderr if log is None else log
    out_dir = Path(out_dir)
    state = pending(config, out_dir, log)
    if state.todo and engines is None:
        engines = Engines.load(config.base, config.aligned, anchor=config.anchor, backend=config.backend,
                               compile=config.compile)
    if state.todo:  # before any cell runs: every method must suit the pair (engines a caller passed may differ)
        check_methods_suit_pair(config, engines)
    with progress_bar(state, progress, log) as bar, RunWriter(out_dir, config, state) as writer:
        for cell in state.todo:
            bar.set_description(f"{cell.task.name} {cell.configuration.name} seed {cell.seed}")
            decoder = state.decoder(config, cell)
            began = time.perf_counter()
            for sample in decoder.run(engines):
                writer.add(cell, sample, time.perf_counter() - began)
                bar.update(1)
            writer.finish(cell, made=decoder.made, total=decoder.total, seconds=time.perf_counter() - began,
                          router_stats=decoder.router_stats, numerics=numerics(getattr(engines.pair, "device", None)))
    return {"generated": writer.generated, "kept": state.kept, "cells": len(config.cells)}
