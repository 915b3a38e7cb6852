"""What a run directory should hold, and what it holds: sample ids, the plan, and the audit behind `baco check`.

- Each sample has a stable id: a hash of its cell key, the cell's settings (router, sampling with
  the seed, system prompt, base template, the models it runs), its prompt text and its (prompt,
  sample) index. The same sample gets the same id in every run; a changed setting, prompt set or
  model gives new ids.
- `plan.jsonl` records, per cell, the ids it is to produce. A sweep appends its cells' plans before
  generating, for every cell whose plan differs from the one recorded last (new, grown or shrunk: the
  latest line of a cell is what the latest run asked for); a cell planned before with different ids
  for the same (prompt, sample) means the configuration changed under the same output directory,
  which is refused (results made with two settings would be mixed in one cell).
- `cells.jsonl` logs each finished cell with `total`, the number of its samples stored when it
  finished (a method may make fewer than asked: verbalized sampling), and `planned`, the size of
  its plan then (a grown plan, e.g. a larger n, makes the cell unfinished again), and `numerics`, what
  its rounding depended on (`baco.numerics`: library versions, thread count, CPU, GPU).
- `audit` compares the three: per cell, the samples expected, stored, missing, stored twice, made
  with other settings and outside the plan (kept from a run that asked for more, e.g. a larger n),
  plus torn and corrupt lines. A cell is complete when its stored samples reach what was
  planned, or what its finished run made: so a sample lost after its cell finished (a torn line)
  is generated again.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from baco.errors import IntegrityError
from baco.storage import JsonlScan, append_row, scan_jsonl, stable_id
from baco.sweep.config import Cell, SweepConfig
from baco.sweep.store import SampleStore, row_problem

SAMPLES, PLAN, CELLS = "samples.jsonl", "plan.jsonl", "cells.jsonl"

Plan = dict[str, dict[tuple[int, int], str]]  # cell key -> (prompt index, sample index) -> sample id


def cell_identity(config: SweepConfig, cell: Cell) -> dict:
    """Everything that decides a cell's samples, besides the prompts."""
    conf = cell.configuration
    return {"cell": cell.key, "router": conf.router, "sampling": {**conf.sampling.to_dict(), "seed": cell.seed},
            "system_prompt": conf.system_prompt, "base_template": conf.base_template,
            "models": config.models_of(conf)}


def sample_id(identity: dict, prompt: str, prompt_index: int, sample_index: int) -> str:
    """A sweep sample's id; `prompt` is its prompt's key: the text, or a conversation's (`prompts.prompt_key`)."""
    return stable_id({**identity, "prompt": prompt, "prompt_index": prompt_index, "sample_index": sample_index})


def plan_cell(config: SweepConfig, cell: Cell, prompts: list[str]) -> dict[tuple[int, int], str]:
    identity = cell_identity(config, cell)
    return {(i, k): sample_id(identity, prompt, i, k) for i, prompt in enumerate(prompts) for k in range(config.n)}


def _is_plan_row(row) -> bool:
    """{"cell": KEY, "samples": [[prompt index, sample index, id], ...]}, as `record_plan` writes it."""
    return (isinstance(row, dict) and isinstance(row.get("cell"), str) and isinstance(row.get("samples"), list)
            and all(isinstance(s, list) and len(s) == 3 for s in row["samples"]))


def read_plan(run_dir: str | Path) -> Plan:
    """The latest plan of every cell recorded in the run directory (none: {}). A torn last line (a kill
    while the plan was written) is left out; any other line that is not a plan row is an IntegrityError
    naming it, rather than a plan silently missing cells."""
    plan: Plan = {}
    scan = scan_jsonl(Path(run_dir) / PLAN)
    bad = list(scan.corrupt)
    for number, row in scan.rows:
        if _is_plan_row(row):
            plan[row["cell"]] = {(i, k): sid for i, k, sid in row["samples"]}
        else:
            bad.append((number, "not a plan row (a cell and its samples' ids)"))
    if bad:
        number, what = min(bad)
        raise IntegrityError(f"{scan.path}:{number}: {what}: {PLAN} is corrupt; remove that line, or the file (a "
                             f"sweep records its plan again; `baco check RUN --config CONFIG` checks against the "
                             f"configuration)")
    return plan


def check_plan(run_dir: str | Path, plan: Plan) -> Plan:
    """The plan recorded in the run directory; an IntegrityError when `plan` would change the identity of a recorded
    cell's samples (its settings changed under the same cell name). Reads only: `--dry-run` says so as the sweep
    would."""
    recorded = read_plan(run_dir)
    for key, ids in plan.items():
        before = recorded.get(key, {})
        changed = sorted(pair for pair in set(before) & set(ids) if before[pair] != ids[pair])
        if changed:
            raise IntegrityError(
                f"{Path(run_dir)} already holds cell {key!r} made with other settings (its sample "
                f"{changed[0]} has another id: the prompts, sampling, router, system prompt or models differ). "
                f"Use another --out, or restore the configuration that made it")
    return recorded


def record_plan(run_dir: str | Path, plan: Plan) -> None:
    """Append the cells whose plan differs from the one recorded last (new, grown or shrunk, so that the plan read
    back is this run's); refuse a cell whose samples would change identity (`check_plan`)."""
    recorded = check_plan(run_dir, plan)
    for key, ids in plan.items():
        if ids != recorded.get(key):
            samples = [[i, k, sid] for (i, k), sid in sorted(ids.items())]
            append_row(Path(run_dir) / PLAN, {"cell": key, "samples": samples})


def cell_log(run_dir: str | Path, plan: Plan) -> tuple[dict[str, int], dict[str, dict], list[str]]:
    """What cells.jsonl says of the planned cells, read once: those that ran to their end under their current plan,
    with how many samples they held then; what each one's rounding depended on (`numerics` of its latest line;
    lines from before baco recorded it have none); and its unreadable lines, named (`path:line: why`)."""
    totals, numerics = {}, {}
    scan = scan_jsonl(Path(run_dir) / CELLS)
    for _, row in scan.rows:
        if not isinstance(row, dict) or row.get("cell") not in plan:
            continue
        if row.get("complete") and isinstance(row.get("total"), int) and row.get("planned") == len(plan[row["cell"]]):
            totals[row["cell"]] = row["total"]
        if isinstance(row.get("numerics"), dict):
            numerics[row["cell"]] = row["numerics"]
    return totals, numerics, scan.problems()


@dataclass
class CellAudit:
    key: str
    planned: int
    expected: int  # planned, or what a finished run of the cell made (fewer for verbalized sampling)
    stored: set = field(default_factory=set)  # (prompt index, sample index) of the planned samples stored
    duplicates: int = 0  # extra copies of stored samples
    unplanned: int = 0  # rows of this cell made with other settings (another id than its plan's, another task)
    outside: int = 0  # rows of this cell whose (prompt, sample) its plan does not ask for (an earlier, larger n)

    @property
    def missing(self) -> int:
        return max(self.expected - len(self.stored), 0)

    @property
    def complete(self) -> bool:
        return self.missing == 0

    @property
    def ok(self) -> bool:
        return self.complete and not self.duplicates and not self.unplanned


@dataclass
class Audit:
    cells: dict[str, CellAudit]
    problems: list[str]  # torn and corrupt lines, lines that are not samples
    strangers: dict[str, int]  # samples of cells the plan does not name (another configuration's)
    rows: list[dict]  # the planned samples, each once, in file order
    numerics: dict[str, dict] = field(default_factory=dict)  # per cell, what its rounding depended on (`cell_log`)
    unusable: dict[int, str] = field(default_factory=dict)  # line number -> why no reader uses it (`repair` moves it)
    log_problems: list[str] = field(default_factory=list)  # unreadable lines of cells.jsonl (`cell_log`)

    @property
    def ok(self) -> bool:
        return not self.problems and not self.strangers and all(c.ok for c in self.cells.values())

    def summary(self) -> str:
        stored = sum(len(c.stored) for c in self.cells.values())
        expected = sum(c.expected for c in self.cells.values())
        missing = sum(c.missing for c in self.cells.values())
        duplicates = sum(c.duplicates for c in self.cells.values())
        outside = sum(c.outside for c in self.cells.values())
        return (f"{len(self.cells)} cells, {stored} of {expected} samples stored, {missing} missing, "
                f"{duplicates} stored twice, {len(self.problems)} torn or corrupt lines"
                + (f"; {outside} outside the plan (kept, not used)" if outside else ""))

    def mixed_numerics(self) -> str | None:
        """How the cells differ in what their rounding depended on, e.g. "threads 1 (1 cell), 2 (3 cells)"; None
        when they agree."""
        records = self.numerics.values()
        parts = []
        for name in sorted({name for record in records for name in record}):
            counts = Counter(str(record.get(name, "none")) for record in records)
            if len(counts) > 1:
                parts.append(f"{name} " + ", ".join(f"{value} ({count} cell{'s' * (count > 1)})"
                                                    for value, count in sorted(counts.items())))
        return "; ".join(parts) or None

    def shared_numerics(self) -> str | None:
        """What every recorded cell ran with alike, e.g. "torch 2.13.0, transformers 5.24.0, threads 2, cpu ...";
        None when no cell recorded it (runs from before baco did)."""
        records = list(self.numerics.values())
        if not records:
            return None
        names = [name for name in records[0] if all(record.get(name) == records[0][name] for record in records)]
        return ", ".join(f"{name} {records[0][name]}" for name in names) or None


def audit(run_dir: str | Path, plan: Plan) -> Audit:
    """Compare what the plan asks for with what samples.jsonl and cells.jsonl hold (reads only)."""
    run_dir = Path(run_dir)
    totals, numerics, log_problems = cell_log(run_dir, plan)
    cells = {key: CellAudit(key, len(ids), min(totals.get(key, len(ids)), len(ids))) for key, ids in plan.items()}
    scan = SampleStore(run_dir / SAMPLES).scan()
    problems = store_problems(scan)
    unusable = dict(scan.corrupt) | ({scan.torn[0]: "torn last line"} if scan.torn else {})
    seen, rows, strangers = set(), [], {}
    for number, row in scan.rows:
        if problem := row_problem(row):
            unusable[number] = problem
            continue
        cell = cells.get(row["cell"])
        if cell is None:
            strangers[row["cell"]] = strangers.get(row["cell"], 0) + 1
            continue
        pair = (row["prompt_index"], row["sample_index"])
        planned = plan[row["cell"]].get(pair)
        if not names_its_cell(row):  # results file a row by its task and config
            cell.unplanned += 1
            unusable[number] = "its task or config is not its cell's"
        elif planned is None:  # a sample index >= this plan's n: a run that asked for more made it
            cell.outside += 1
        elif row.get("id", planned) != planned:  # rows older than ids carry none
            cell.unplanned += 1
            unusable[number] = "made with other settings (not the id its plan gives)"
        elif (row["cell"], pair) in seen:
            cell.duplicates += 1
            unusable[number] = "a second copy of a stored sample"
        else:
            seen.add((row["cell"], pair))
            cell.stored.add(pair)
            rows.append(row)
    return Audit(cells, problems, strangers, rows, numerics, unusable, log_problems)


REJECTED = "samples.rejected.jsonl"  # where `repair` moves the lines of samples.jsonl that no reader uses


def repair(run_dir: str | Path, plan: Plan) -> int:
    """Move the lines of samples.jsonl that no reader uses (torn, corrupt, not samples, second copies, made with other
    settings: `Audit.unusable`) to samples.rejected.jsonl, as they were, and rewrite samples.jsonl with the others in
    their order; returns how many moved. Under the run's lock (not while a sweep writes). The moved lines are appended
    and synced before samples.jsonl is replaced whole (`atomic_write`), so a kill at any point loses no line. Samples
    outside the plan and of cells no plan names are kept: they are another run's, not damage. What is missing is the
    sweep's to make (rerun it)."""
    from baco.storage import atomic_write, read_bytes
    from baco.sweep.lock import RunLock

    run_dir = Path(run_dir)
    path = run_dir / SAMPLES
    with RunLock(run_dir):
        unusable = audit(run_dir, plan).unusable
        if not unusable:
            return 0
        lines = read_bytes(path).split(b"\n")
        if not lines[-1]:
            lines.pop()  # (the file ends with a newline)
        moved = [line for number, line in enumerate(lines, start=1) if number in unusable]
        with open(run_dir / REJECTED, "ab") as handle:
            handle.write(b"".join(line + b"\n" for line in moved))
            handle.flush()
            os.fsync(handle.fileno())
        atomic_write(path, b"".join(line + b"\n" for number, line in enumerate(lines, start=1)
                                    if number not in unusable and line.strip()))
    return len(moved)


def store_problems(scan: JsonlScan) -> list[str]:
    """The lines of a samples.jsonl that hold no sample: torn, corrupt, or rows that are not samples, in line order
    (the first one named is the first in the file)."""
    found = scan.corrupt + [(number, problem) for number, row in scan.rows if (problem := row_problem(row))]
    torn = scan.problems()[len(scan.corrupt):]  # the torn line, if any: always the file's last
    return [f"{scan.path}:{number}: {what}" for number, what in sorted(found)] + torn


def names_its_cell(row: dict) -> bool:
    """The row's `task` and `config` are those of its `cell` (`task|configuration|seed=S`; names hold no '|')."""
    task, config, _ = (row["cell"].split("|") + ["", ""])[:3]
    return row.get("task", task) == task and row.get("config", config) == config


def describe(cell: CellAudit) -> str:
    parts = [f"{len(cell.stored)}/{cell.expected} stored"]
    if cell.missing:
        parts.append(f"{cell.missing} missing")
    if cell.duplicates:
        parts.append(f"{cell.duplicates} stored twice")
    if cell.unplanned:
        parts.append(f"{cell.unplanned} not in the plan (made with other settings)")
    if cell.outside:
        parts.append(f"{cell.outside} outside the plan (made when it asked for more; kept, not used)")
    return ", ".join(parts)
