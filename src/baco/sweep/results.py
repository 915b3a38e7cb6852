"""Evaluate a sweep's samples, aggregate Pareto Coverage / Dominance per seed, write the table and plots.

Every (task, seed) is evaluated as its own set of planes; a method's Coverage and Dominance are
then reported as the mean over seeds with their spread (standard deviation, min, max), per task
and averaged over tasks, so a reader can tell a real difference from seed noise (the aggregation
is `baco.evaluate.seeds`, which `baco eval` uses for a file of several sweep seeds too).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from baco.evaluate.io import Record, conversation_of
from baco.evaluate.registry import resolve_metrics
from baco.evaluate.resources import Resources
from baco.evaluate.runner import evaluate_records
from baco.evaluate.seeds import AGGREGATES, format_spread, pareto_over_seeds
from baco.storage import atomic_write, read_bytes, stable_id
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
    keys = {c.key for c in config.cells}
    made_from = samples_fingerprint([r for r in rows if r["cell"] in keys])
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
            "warnings": result.warnings, "made_from": made_from}


def samples_fingerprint(rows: list[dict]) -> dict:
    """What an evaluation was made from: how many samples, and a hash of which ones (cell, prompt and sample index,
    id), in any order. Stored in results.json as `made_from`, so that a reader can tell whether the run directory
    still selects those samples (a plan changed by a later run that was not evaluated selects others)."""
    keys = sorted(f"{r.get('cell')}|{r.get('prompt_index')}|{r.get('sample_index')}|{r.get('id') or ''}"
                  for r in rows)
    # and of what they say (`texts`): a sample's text edited by hand keeps its id, but not the table's numbers
    texts = sorted((f"{r.get('cell')}|{r.get('prompt_index')}|{r.get('sample_index')}", r.get("text")) for r in rows)
    return {"samples": len(keys), "fingerprint": stable_id({"samples": keys}), "texts": stable_id({"texts": texts})}


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


RESULTS, TABLE, PLOTS = "results.json", "table.md", "plots"
PLOT_NAME = re.compile(r"pareto-.+-seed\d+\.(?:png|svg)")  # the names `plot_planes` gives its files (`plot_name`)


def table_text(summary: dict) -> str:
    """table.md: the main table, and with several seeds the per-seed one."""
    text = markdown_table(summary) + "\n"
    if len(summary["seeds"]) > 1:
        text += "\nPer seed (average over tasks):\n\n" + per_seed_table(summary) + "\n"
    return text


def write_outputs(summary: dict, out_dir: str | Path) -> list[Path]:
    """Write table.md and plots/, remove the plots this evaluation no longer makes, then write results.json last.

    results.json lists every file written with it and its sha256 (`files`), and the samples the evaluation was
    made from (`made_from`). Each file is written whole (atomic_write), but one after another: a kill between
    them leaves new files beside an old results.json, whose `files` then disagree with them, and
    `outputs_problems` (`baco report`, `baco check`) says so. A results.json that agrees with its files
    means the evaluation that wrote it finished."""
    from baco.sweep.plots import plot_planes

    out = Path(out_dir)
    table = atomic_write(out / TABLE, table_text(summary))
    plots = plot_planes(summary, out / PLOTS)
    remove_stale_plots(out / PLOTS, plots)
    files = {path.relative_to(out).as_posix(): file_digest(path) for path in [table, *plots]}
    atomic_write(out / RESULTS, json.dumps(dict(summary, files=files), indent=1, default=str) + "\n")
    return [out / RESULTS, table, *plots]


def remove_stale_plots(folder: Path, keep: list[Path]) -> list[Path]:
    """Remove the plots of an earlier evaluation that this one does not make (a seed or task no longer evaluated),
    so that plots/ holds this evaluation's. Only files named as `plot_planes` names its plots
    (`pareto-<task>-seed<S>.png|svg`) are removed: anything else in the folder is someone else's and stays."""
    kept = {path.name for path in keep}
    stale = [path for path in sorted(folder.iterdir()) if path.is_file() and PLOT_NAME.fullmatch(path.name)
             and path.name not in kept] if folder.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def file_digest(path: Path) -> str:
    return hashlib.sha256(read_bytes(path)).hexdigest()


def listed_plots(folder: Path, summary: dict | None) -> list[Path]:
    """The PNG plots of the evaluation whose results.json is `summary` (None: no results.json): those its `files`
    lists; for a results.json of an older baco, which lists none, the names its tasks and seeds give; without
    results.json, every file named as a plot. Only files that exist."""
    files = (summary or {}).get("files")
    if isinstance(files, dict):
        names = [name for name in files if isinstance(name, str) and name.startswith(f"{PLOTS}/")
                 and PLOT_NAME.fullmatch(name[len(PLOTS) + 1:])]
    elif summary is not None:
        names = _derived_plot_names(summary)
    else:
        names = [f"{PLOTS}/{path.name}" for path in (folder / PLOTS).glob("*.png") if PLOT_NAME.fullmatch(path.name)]
    return [folder / name for name in sorted(set(names)) if name.endswith(".png") and (folder / name).is_file()]


def _derived_plot_names(summary: dict) -> list[str]:
    """`plot_planes`' names for a results.json's tasks and seeds (a hand-edited one may give none)."""
    planes, tasks = summary.get("planes"), summary.get("tasks")
    if not isinstance(planes, dict) or not isinstance(tasks, list):
        return []
    from baco.sweep.plots import plot_name

    return [f"{PLOTS}/{plot_name(task, seed)}.png" for seed, of_seed in planes.items() for task in tasks
            if isinstance(of_seed, list) and any(isinstance(p, dict) and p.get("task") == task for p in of_seed)]


def outputs_problems(folder: Path, summary: dict | None, rows: list[dict] | None = None) -> list[str]:
    """How the evaluation's outputs in `folder` fail to belong together, one phrase per problem ([]: they do).

    `summary` is its results.json (None: there is none) and `rows` the samples the run directory selects for it
    now (None: not checked). Checked: each file results.json lists is there with the content it was written
    with, and `rows` are the samples it was made from. A results.json of an older baco lists neither: nothing
    to check."""
    if summary is None:
        made = [name for name, there in ((TABLE, (folder / TABLE).is_file()), (f"{PLOTS}/", listed_plots(folder, None)))
                if there]
        if not made:
            return []
        has, it = ("have", "them") if len(made) > 1 else ("has", "it")
        return [f"{' and '.join(made)} {has} no {RESULTS} beside {it} (an evaluation killed before it finished, "
                f"or {RESULTS} removed)"]
    problems = []
    files = summary.get("files")
    if isinstance(files, dict):
        missing = [name for name in files if not (folder / str(name)).is_file()]
        changed = [name for name, digest in files.items()
                   if name not in missing and file_digest(folder / str(name)) != digest]
        if changed:
            problems.append(f"{', '.join(changed)} {'does' if len(changed) == 1 else 'do'} not match {RESULTS} "
                            f"(written by a later evaluation killed before it wrote {RESULTS}, or edited since)")
        if missing:
            problems.append(f"{', '.join(missing)}, listed in {RESULTS}, {'is' if len(missing) == 1 else 'are'} "
                            f"missing")
    made_from = summary.get("made_from")
    if rows is not None and isinstance(made_from, dict):
        now = samples_fingerprint(rows)
        if (now["samples"], now["fingerprint"]) == (made_from.get("samples"), made_from.get("fingerprint")):
            if made_from.get("texts", now["texts"]) != now["texts"]:  # (results.json of older baco: no texts)
                problems.append(f"the texts of the samples {RESULTS} was made from differ from those in the run "
                                f"directory now (edited since?)")
        else:
            others = " (other ones)" if now["samples"] == made_from.get("samples") else ""
            problems.append(f"{RESULTS} was made from {made_from.get('samples')} samples, but the run directory "
                            f"now has {now['samples']} planned samples{others} (a later sweep changed the plan or "
                            f"added samples and did not evaluate them: --no-eval, or killed before its evaluation "
                            f"finished; or samples were lost or edited since: see `baco check`)")
    return problems


def stale_line(problems: list[str], run_dir: str | Path, results_dir: str | Path | None = None) -> str:
    """One line for `baco report` and `baco check`: what disagrees, and how to make the outputs again."""
    results = f" --results {results_dir}" if results_dir is not None else ""
    return (f"{'; '.join(problems)}: the table and plots may not describe these samples. Evaluate again: rerun "
            f"`baco sweep CONFIG --out {run_dir}{results}` with the sweep's configuration (it makes only missing "
            f"samples, then rewrites {RESULTS}, {TABLE} and {PLOTS}/)")
