"""Evaluate a sweep's samples, aggregate Pareto Coverage / Dominance per seed, write the table and plots.

Every (task, seed) is evaluated as its own set of planes; a method's Coverage and Dominance are
then reported as the mean over seeds with their spread (standard deviation, min, max), per task
and averaged over tasks, so a reader can tell a real difference from seed noise (the aggregation
is `baco.evaluate.seeds`, which `baco eval` uses for a file of several sweep seeds too).
"""

from __future__ import annotations

import json
from pathlib import Path

from baco.evaluate.io import Record, conversation_of
from baco.evaluate.registry import resolve_metrics
from baco.evaluate.resources import Resources
from baco.evaluate.runner import evaluate_records
from baco.evaluate.seeds import AGGREGATES, format_spread, pareto_over_seeds
from baco.storage import atomic_write
from baco.sweep.config import SweepConfig, cell_key


def records_of(rows: list[dict]) -> list[Record]:
    """One Record per stored sample; the task key carries the seed so seeds are evaluated apart."""
    return [Record(task=f"{r['task']}|seed={r['seed_of_cell']}", method=r["config"], prompt=r["prompt"],
                   response=r["text"], order=(r["sample_index"], i), where=f"samples.jsonl#{i}",
                   conversation=conversation_of(r))
            for i, r in enumerate(rows)]


def metric_specs(config: SweepConfig) -> list:
    """The metrics a sweep evaluates: its config's, else the evaluation's defaults."""
    names = None
    if config.diversity or config.quality:
        names = list(config.diversity or []) + list(config.quality or [])
    return resolve_metrics(names or "default")


def sweep_records(config: SweepConfig, rows: list[dict]) -> list[Record]:
    """The records of the config's cells (rows of other cells are left out), in the config's cell order.

    Ray workers finish cells in any order, and a config extended later stores its new cells last: the
    results (their key order, the fronts' order) follow the config, not the file.
    """
    seed_of = {c.key: c.seed for c in config.cells}
    rank = {c.key: i for i, c in enumerate(config.cells)}
    ours = sorted((r for r in rows if r["cell"] in seed_of), key=lambda r: rank[r["cell"]])  # stable: file order within
    return records_of([dict(r, seed_of_cell=seed_of[r["cell"]]) for r in ours])


def summarise(config: SweepConfig, rows: list[dict], *, progress: bool = True, resources: Resources | None = None):
    """Metrics of every configuration and the Pareto aggregates over seeds. Returns a JSON-able dict."""
    specs = metric_specs(config)
    result = evaluate_records(sweep_records(config, rows), specs, resources or Resources(), progress=progress)
    family = {c.name: c.method for c in config.configurations}
    diversity = [s.name for s in specs if s.kind == "diversity"]
    quality = [s.name for s in specs if s.kind == "quality"]
    directions = {s.name: s.higher_is_better for s in specs}

    by_seed = {seed: {t.name: result.summary.get(f"{t.name}|seed={seed}", {}) for t in config.tasks}
               for seed in config.seeds}
    per_seed, table = pareto_over_seeds(by_seed, diversity=diversity, quality=quality, higher_is_better=directions,
                                        family=family, methods=config.methods, tasks=[t.name for t in config.tasks])
    return {"methods": config.methods, "seeds": config.seeds, "tasks": [t.name for t in config.tasks],
            "diversity": diversity, "quality": quality, "directions": directions,
            "families": family, "coverage_dominance": table, "metrics": result.summary,
            "planes": {seed: [p.__dict__ for p in report.planes] for seed, report in per_seed.items()},
            "warnings": result.warnings}


def evaluated_cells(summary: dict) -> set[str] | None:
    """The cells whose samples `summarise` evaluated (its tasks x configurations x seeds); None for a
    summary that does not list them."""
    if not all(isinstance(summary.get(key), (list, dict)) for key in ("tasks", "families", "seeds")):
        return None
    return {cell_key(task, config, seed) for task in summary["tasks"] for config in summary["families"]
            for seed in summary["seeds"]}


def _by_coverage(summary: dict) -> list[str]:
    """Methods, highest mean average Coverage first; those without one (no samples: n/a) last."""
    overall = summary["coverage_dominance"]["overall"]

    def rank(method: str) -> tuple[bool, float]:
        mean = overall[method]["coverage"]["mean"]
        return mean is None, -(mean or 0.0)

    return sorted(summary["methods"], key=rank)


def markdown_table(summary: dict) -> str:
    """The paper's main table: per method, Coverage and Dominance per task and on average (mean ± std)."""
    tasks = summary["tasks"]
    table = summary["coverage_dominance"]
    head = ["method"] + [f"{t} Cov." for t in tasks] + ["avg Cov."] + [f"{t} Dom." for t in tasks] + ["avg Dom."]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method in _by_coverage(summary):
        cells = [method]
        cells += [format_spread(table["per_task"][t][method]["coverage"]) for t in tasks]
        cells.append(f"**{format_spread(table['overall'][method]['coverage'])}**")
        cells += [format_spread(table["per_task"][t][method]["dominance"], True) for t in tasks]
        cells.append(f"**{format_spread(table['overall'][method]['dominance'], True)}**")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_seed_table(summary: dict) -> str:
    """Average Coverage and Dominance of each method in each seed: whether a ranking holds seed by seed."""
    table, seeds = summary["coverage_dominance"]["overall"], summary["seeds"]
    head = ["method"] + [f"Cov. seed {s}" for s in seeds] + [f"Dom. seed {s}" for s in seeds]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def value(method: str, agg: str, seed) -> str:
        v = table[method][agg]["by_seed"].get(seed)
        return "n/a" if v is None else (f"{v * 100:.1f}%" if agg == "dominance" else f"{v:.3f}")

    for method in _by_coverage(summary):
        cells = [method] + [value(method, agg, s) for agg in AGGREGATES for s in seeds]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_outputs(summary: dict, out_dir: str | Path) -> list[Path]:
    out = Path(out_dir)
    atomic_write(out / "results.json", json.dumps(summary, indent=1, default=str) + "\n")
    text = markdown_table(summary) + "\n"
    if len(summary["seeds"]) > 1:
        text += "\nPer seed (average over tasks):\n\n" + per_seed_table(summary) + "\n"
    atomic_write(out / "table.md", text)
    from baco.sweep.plots import plot_planes

    return [out / "results.json", out / "table.md"] + plot_planes(summary, out / "plots")
