"""Evaluate records: group by (task, method, seed, prompt), run the metrics, average, Pareto, table/JSON/CSV.

Averaging: a diversity metric is computed per prompt over its n responses, then averaged over the
prompts where it is defined; a quality metric is averaged over a prompt's responses, then over
prompts. Undefined values (one response, no tokens, an empty answer for fluency) are left out of
means and counted; a mean over nothing is None ("n/a" in the table, null in JSON, empty in CSV).

Seeds: records of two or more `baco sweep` seeds are evaluated as the sweep does, each seed apart
(its own prompt groups, means and Pareto planes per task), then reported as the mean ± spread over
seeds (`baco.evaluate.seeds`). Records without a seed (another tool's, `baco generate`'s) are the
same in every seed: they join each seed's evaluation. With one seed or none, the seed plays no part.
"""

from __future__ import annotations

import csv
import io
import json
import math
import numbers
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from baco.evaluate.cache import MISS, ScoreCache, scorer_identity
from baco.evaluate.io import Record, group_records, read_records
from baco.evaluate.pareto import ParetoReport, method_family, pareto_aggregate
from baco.evaluate.registry import MetricSpec, resolve_metrics
from baco.evaluate.resources import EvalOptions, Resources
from baco.evaluate.seeds import format_spread, pareto_over_seeds, spread
from baco.prompts import prompt_key
from baco.storage import atomic_write

# which quality metric NoveltyBench utility uses when the caller names none: the first one selected
UTILITY_QUALITY_ORDER = ("reward", "judge", "relevance", "fluency")


@dataclass
class SeedResult:
    """One seed's evaluation: what evaluating that seed's records alone (and those without a seed) gives."""

    summary: dict[str, dict[str, dict[str, float | None]]]  # task -> method -> metric -> mean
    counts: dict[str, dict[str, dict[str, int]]]
    pareto: ParetoReport | None

    def to_dict(self) -> dict:
        return {"summary": self.summary, "counts": self.counts,
                "pareto": self.pareto.to_dict() if self.pareto else None}


@dataclass
class EvalResult:
    """With several seeds, `summary` holds the means over seeds, `spread` their spread, `by_seed` each seed's
    own result and `coverage_dominance` the Pareto aggregates over seeds (`pareto` is None)."""

    metrics: list[MetricSpec]
    summary: dict[str, dict[str, dict[str, float | None]]]  # task -> method -> metric -> mean
    counts: dict[str, dict[str, dict[str, int]]]  # task -> method -> prompts, responses, <metric> (defined prompts)
    per_prompt: list[dict]
    pareto: ParetoReport | None
    warnings: list[str] = field(default_factory=list)
    utility_quality: str | None = None
    files: list[str] = field(default_factory=list)
    options: dict = field(default_factory=dict)
    seeds: list[int] = field(default_factory=list)  # the sweep seeds evaluated apart (two or more), else []
    by_seed: dict[int, SeedResult] = field(default_factory=dict)
    spread: dict = field(default_factory=dict)  # task -> method -> metric -> spread over seeds
    coverage_dominance: dict | None = None  # {"overall", "per_task"}: method -> coverage / dominance spread

    def to_dict(self) -> dict:
        out = {
            "files": self.files,
            "options": self.options,
            "metrics": {s.name: {"kind": s.kind, "higher_is_better": s.higher_is_better, "library": s.library,
                                 "help": s.help} for s in self.metrics},
            "utility_quality": self.utility_quality,
            "summary": self.summary,
            "counts": self.counts,
            "pareto": self.pareto.to_dict() if self.pareto else None,
            "per_prompt": self.per_prompt,
            "warnings": self.warnings,
        }
        if self.seeds:
            out.update(seeds=self.seeds, spread=self.spread, coverage_dominance=self.coverage_dominance,
                       by_seed={seed: r.to_dict() for seed, r in self.by_seed.items()})
        return out


def _mean(values) -> float | None:
    kept = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(kept) / len(kept) if kept else None


def _defined(value):
    """A metric's value, or None where it is undefined: None, or NaN (numpy's mean over nothing), which would
    otherwise count as defined in `counts` and be written into the JSON as `NaN`, which JSON has not."""
    return None if value is None or (isinstance(value, numbers.Real) and math.isnan(value)) else value


def _bar(total: int, desc: str, progress: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="item", file=sys.stderr, disable=not progress or total < 2,
                leave=False)


def _embed_all(embedder, texts: list[str], progress: bool, chunk: int = 256) -> None:
    """Fill the embedder's cache with every distinct text, longest-alike together, with a progress bar."""
    unique = sorted(set(texts), key=len)
    with _bar(len(unique), "embeddings", progress) as bar:
        for start in range(0, len(unique), chunk):
            embedder(unique[start:start + chunk])
            bar.update(len(unique[start:start + chunk]))


def choose_utility_quality(metrics: list[MetricSpec], requested: str | None) -> str | None:
    names = [s.name for s in metrics if s.kind == "quality"]
    if requested:
        return requested if requested in names else None
    return next((name for name in UTILITY_QUALITY_ORDER if name in names), names[0] if names else None)


def texts_to_embed(records: list[Record], metrics: list[MetricSpec], options: EvalOptions) -> list[str]:
    """What the metrics will embed: every response, and the prompts too for a quality metric that embeds."""
    if not (any("embedder" in s.needs for s in metrics) or (
            any("partitioner" in s.needs for s in metrics) and options.equivalence == "embedding")):
        return []
    quality = [s for s in metrics if s.kind == "quality"]
    return [r.response for r in records] + (
        [r.prompt for r in records] if any("embedder" in s.needs for s in quality) else [])


def evaluate_records(records: list[Record], metrics: list[MetricSpec], resources: Resources | None = None, *,
                     utility_quality: str | None = None, progress: bool = False) -> EvalResult:
    """Run `metrics` over grouped records; returns per-prompt values, means per (task, method) and Pareto
    (per seed, and their mean ± spread, for records of several sweep seeds)."""
    resources = resources or Resources()
    seeds = sorted({r.seed for r in records if r.seed is not None})
    if len(seeds) < 2:  # one seed or none: pooled as ever
        records, seeds = [replace(r, seed=None) for r in records] if seeds else records, []
    groups = group_records(records)
    quality = [s for s in metrics if s.kind == "quality"]
    per_group = [s for s in metrics if s.kind != "quality"]
    warnings: list[str] = unequal_n(groups)
    if any(s.kind == "diversity" for s in metrics):
        warnings += single_responses(groups)

    # opened first: a file that is not a score cache is refused before any model loads
    cache = ScoreCache(resources.options.score_cache) if resources.options.score_cache else None
    texts = texts_to_embed(records, metrics, resources.options)
    if texts:
        _embed_all(resources.get("embedder"), texts, progress)

    # quality: every (prompt, response) pair of every group at once, so models batch across prompts
    keys = list(groups)
    flat = [(key, i, r) for key in keys for i, r in enumerate(groups[key])]
    asked = {r.key: r.asked for _, _, r in flat}
    scores: dict[str, dict[tuple, list]] = {}
    for spec in quality:
        scorer = scorer_identity(spec, resources.options)
        # each distinct (prompt, response) once: repeated answers get one value (a model in bf16 scores a text
        # a little differently in batches of other shapes), and the cache then holds what this run used; a
        # conversation is its key (all its messages)
        distinct = list(dict.fromkeys((r.key, r.response) for _, _, r in flat))
        value_of = {pair: cache.get(scorer, *pair) if cache else MISS for pair in distinct}
        todo = [pair for pair in distinct if value_of[pair] is MISS]
        needs = {n: resources.get(n) for n in spec.needs} if todo else {}  # all cached: load no model
        with _bar(len(todo), spec.name, progress) as bar:
            step = 256
            for start in range(0, len(todo), step):
                pairs = todo[start:start + step]
                got = spec.fn([asked[p] for p, _ in pairs], [r for _, r in pairs], **needs)
                value_of.update(zip(pairs, got))
                if cache:
                    cache.add(scorer, pairs, got)
                bar.update(len(pairs))
        if cache and progress:
            print(f"{spec.name}: {len(distinct) - len(todo)} scores from {cache.path}, {len(todo)} scored",
                  file=sys.stderr)
        scores[spec.name] = {key: [] for key in keys}
        for key, _, r in flat:
            value = _defined(value_of[(r.key, r.response)])
            scores[spec.name][key].append(None if value is None else float(value))

    chosen = choose_utility_quality(metrics, utility_quality)
    if any(s.kind == "joint" for s in metrics):
        if utility_quality and chosen is None:
            warnings.append(f"utility: quality metric {utility_quality!r} is not selected; utility not computed")
        elif chosen is None:
            warnings.append("utility: no quality metric selected (e.g. relevance, judge, reward); utility not computed")
    gain_of = next((s.gain for s in quality if s.name == chosen), None) or (lambda v: v)

    per_prompt = []
    with _bar(len(keys), "diversity", progress) as bar:
        for key in keys:
            task, method, seed, _ = key
            first = groups[key][0]
            prompt, conversation = first.prompt, first.messages  # (a conversation's prompt is its last user turn)
            responses = [r.response for r in groups[key]]
            row = {"task": task, "method": method, **({"seed": seed} if seeds else {}), "prompt": prompt,
                   **({"messages": conversation} if conversation else {}), "n": len(responses)}
            for spec in per_group:
                if spec.kind == "joint" and chosen is None:
                    row[spec.name] = None
                    continue
                kwargs = {}
                for need in spec.needs:
                    if need == "prompt":
                        kwargs[need] = prompt
                    elif need == "gains":
                        kwargs[need] = [None if v is None else gain_of(v) for v in scores[chosen][key]]
                    else:
                        kwargs[need] = resources.get(need)
                row[spec.name] = _defined(spec.fn(responses, **kwargs))
            for spec in quality:
                row[spec.name] = _mean(scores[spec.name][key])
            per_prompt.append(row)
            bar.update(1)

    diversity = [s.name for s in metrics if s.kind == "diversity"]
    quality_names = [s.name for s in quality]
    directions = {s.name: s.higher_is_better for s in metrics}
    if seeds:
        return _over_seeds(per_prompt, metrics, seeds, diversity, quality_names, directions, warnings, chosen)
    grouped = _by_task_and_method(per_prompt)
    summary = _means(grouped, metrics)
    pareto = None
    if diversity and quality_names:
        pareto = pareto_aggregate(summary, diversity=diversity, quality=quality_names, higher_is_better=directions)
    return EvalResult(metrics, summary, _counts(grouped, metrics), per_prompt, pareto, warnings, chosen)


def _by_task_and_method(per_prompt: list[dict]) -> dict[str, dict[str, list[dict]]]:
    grouped: dict = {}
    for row in per_prompt:
        grouped.setdefault(row["task"], {}).setdefault(row["method"], []).append(row)
    return grouped


def _means(grouped: dict, metrics: list[MetricSpec]) -> dict:
    """task -> method -> metric -> mean over the prompts where it is defined."""
    return {task: {method: {s.name: _mean(r[s.name] for r in rows) for s in metrics}
                   for method, rows in methods.items()}
            for task, methods in grouped.items()}


def unequal_n(groups: dict) -> list[str]:
    """A warning per task whose methods were sampled a different number of times per prompt: a diversity
    metric computed over n responses depends on n (distinct-n falls and self-BLEU rises as n grows), so such
    methods are not compared like for like."""
    counts: dict[str, dict[str, set[int]]] = {}
    for (task, method, _seed, _prompt), rows in groups.items():
        counts.setdefault(task, {}).setdefault(method, set()).add(len(rows))
    warnings = []
    for task, methods in counts.items():
        shown = {method: f"n={min(ns)}" if len(ns) == 1 else f"n={min(ns)}..{max(ns)}" for method, ns in methods.items()}
        if len(set(shown.values())) > 1:
            listed = ", ".join(f"{method} {n}" for method, n in shown.items())
            warnings.append(f"task {task!r}: the methods have different numbers of responses per prompt ({listed}); "
                            f"diversity metrics depend on n, so compare methods sampled at the same n")
    return warnings


def single_responses(groups: dict) -> list[str]:
    """A warning per method of a task with one response to every prompt: its diversity metrics are all undefined
    (n/a), most often because `baco generate` ran with its default of one sample per prompt."""
    most: dict[tuple[str, str], int] = {}
    for (task, method, _seed, _prompt), rows in groups.items():
        most[(task, method)] = max(most.get((task, method), 0), len(rows))
    return [f"method {method!r} (task {task!r}) has one response per prompt: diversity is undefined (n/a) without "
            f"two or more to compare; sample each prompt several times (`baco generate --n 10`)"
            for (task, method), n in most.items() if n == 1]


def _counts(grouped: dict, metrics: list[MetricSpec]) -> dict:
    """task -> method -> prompts, responses and, per metric, the prompt groups where it is defined."""
    return {task: {method: {"prompts": len({prompt_key(r.get("messages") or r["prompt"]) for r in rows}),
                            "responses": sum(r["n"] for r in rows),
                            **{s.name: sum(r[s.name] is not None for r in rows) for s in metrics}}
                   for method, rows in methods.items()}
            for task, methods in grouped.items()}


def _over_seeds(per_prompt: list[dict], metrics: list[MetricSpec], seeds: list[int], diversity: list[str],
                quality: list[str], directions: dict[str, bool], warnings: list[str], chosen: str | None) -> EvalResult:
    """Each seed evaluated alone (with the records that have no seed), then the mean ± spread over seeds."""
    by_seed = {}
    for seed in seeds:
        grouped = _by_task_and_method([r for r in per_prompt if r["seed"] in (seed, None)])
        by_seed[seed] = SeedResult(_means(grouped, metrics), _counts(grouped, metrics), None)
    table = None
    if diversity and quality:
        reports, table = pareto_over_seeds({seed: r.summary for seed, r in by_seed.items()}, diversity=diversity,
                                           quality=quality, higher_is_better=directions)
        for seed, report in reports.items():
            by_seed[seed].pareto = report
    grouped = _by_task_and_method(per_prompt)
    counts = _counts(grouped, metrics)
    spreads: dict = {}
    for task, methods in grouped.items():
        for method in methods:
            # seeds whose evaluation holds the method (a method without a seed is in every seed's)
            counts[task][method]["seeds"] = sum(method in r.summary.get(task, {}) for r in by_seed.values())
            spreads.setdefault(task, {})[method] = {
                s.name: spread({seed: v for seed, r in by_seed.items()
                                if (v := r.summary.get(task, {}).get(method, {}).get(s.name)) is not None})
                for s in metrics}
    summary = {task: {method: {name: values["mean"] for name, values in per.items()} for method, per in methods.items()}
               for task, methods in spreads.items()}
    return EvalResult(metrics, summary, counts, per_prompt, None, warnings, chosen, seeds=seeds, by_seed=by_seed,
                      spread=spreads, coverage_dominance=table)


def evaluate_files(paths: list[str | Path], metrics: str | list[str] | None = "default",
                   options: EvalOptions | None = None, *, method_from: str = "auto", utility_quality: str | None = None,
                   progress: bool = False) -> EvalResult:
    """Read JSONL samples (see io.py) and evaluate them: the Python door to `baco eval`."""
    specs = resolve_metrics(metrics)
    records, read_warnings = read_records(paths, method_from=method_from)
    options = options or EvalOptions()
    if options.score_cache:
        ScoreCache.check_not_input(options.score_cache, paths)
    resources = Resources(options)
    result = evaluate_records(records, specs, resources, utility_quality=utility_quality, progress=progress)
    result.warnings = read_warnings + result.warnings
    result.files = [str(p) for p in paths]
    result.options = {**asdict(options), "method_from": method_from}
    if "embedder" in resources._built:
        embedder = resources.get("embedder")
        result.options.update(embedding_model=embedder.path, embedding_dtype=str(embedder.dtype).replace("torch.", ""))
    return result


def plot_files(result: EvalResult, out_dir: str | Path) -> list[Path]:
    """The Pareto plots of an evaluation (`baco eval --plots DIR`), drawn as a sweep's are (`sweep/plots.py`): per
    task (and per seed, when the samples hold several sweep seeds) a panel per (diversity, quality) plane, each
    method family in one colour. Files `pareto-TASK.png` / `.svg` (`pareto-TASK-seedS.*` per seed; characters
    other than letters, digits, `.`, `_` and `-` in a task's name become `_`, and a name so changed that meets
    another task's gets a short hash of the original: `a/b` beside `a_b` is `pareto-a_b-HASH`). None needs both
    kinds of metric."""
    import hashlib
    import re

    from baco.sweep.plots import plot_planes

    reports = {seed: r.pareto for seed, r in result.by_seed.items()} if result.seeds else {None: result.pareto}
    if not any(report and report.planes for report in reports.values()):
        return []
    configurations = [method for methods in result.summary.values() for method in methods]
    families = {c: method_family(c) for c in configurations}
    summary = {"methods": list(dict.fromkeys(families.values())), "families": families,
               "tasks": list(result.summary), "directions": {s.name: s.higher_is_better for s in result.metrics},
               "diversity": [s.name for s in result.metrics if s.kind == "diversity"],
               "quality": [s.name for s in result.metrics if s.kind == "quality"],
               "planes": {seed: [asdict(plane) for plane in report.planes] for seed, report in reports.items()
                          if report}}

    safe = {task: re.sub(r"[^A-Za-z0-9._-]", "_", task) for task in result.summary}
    taken = list(safe.values())
    for task, name in safe.items():
        if name != task and taken.count(name) > 1:  # two tasks' plots would share a file
            safe[task] = f"{name}-{hashlib.sha1(task.encode('utf-8')).hexdigest()[:8]}"

    def name(task: str, seed) -> str:
        return f"pareto-{safe[task]}" + ("" if seed is None else f"-seed{seed}")

    return plot_planes(summary, out_dir, name=name)


def _fmt(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, int):
        return str(value)
    return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"


def format_table(result: EvalResult) -> str:
    """Metrics as rows, methods as columns (one block per task); then Coverage / Dominance per method.
    With several seeds, every value is the mean ± sample standard deviation over the seeds."""
    lines = []
    if result.seeds:
        lines += [f"seeds {', '.join(map(str, result.seeds))}, each evaluated apart: "
                  f"mean ± sample standard deviation over seeds", ""]
    for task, methods in result.summary.items():
        names = list(methods)
        head = ["metric", "dir"] + names
        rows = [["prompts", ""] + [str(result.counts[task][m]["prompts"]) for m in names]]
        if result.seeds:
            rows.append(["seeds", ""] + [str(result.counts[task][m]["seeds"]) for m in names])
        for spec in result.metrics:
            label = spec.name + (f" [{result.utility_quality}]" if spec.kind == "joint" and result.utility_quality
                                 else "")
            values = ([_fmt_spread(result.spread[task][m][spec.name]) for m in names] if result.seeds
                      else [_fmt(methods[m][spec.name]) for m in names])
            rows.append([label, "^" if spec.higher_is_better else "v"] + values)
        lines.append(f"task: {task}")
        lines += _columns([head] + rows)
        lines.append("")
    lines += _pareto_over_seeds_lines(result) if result.seeds else _pareto_lines(result)
    return "\n".join(lines).rstrip() + "\n"


def _fmt_spread(values: dict) -> str:
    if values["seeds"] < 2:
        return _fmt(values["mean"])
    return f"{_fmt(values['mean'])} ± {_fmt(values['std'])}"


def _pareto_lines(result: EvalResult) -> list[str]:
    if not (result.pareto and result.pareto.overall):
        return []
    lines = [f"Pareto over {len(result.pareto.planes)} (diversity x quality) planes, averaged per task then over tasks"]
    rows = [["method", "coverage", "dominance", "tasks"]]
    for method, values in sorted(result.pareto.overall.items(), key=lambda kv: -(kv[1]["coverage"] or 0)):
        dominance = values["dominance"]
        rows.append([method, _fmt(values["coverage"]), "n/a" if dominance is None else f"{dominance:.1%}",
                     str(values["tasks"])])
    return lines + _columns(rows)


def _pareto_over_seeds_lines(result: EvalResult) -> list[str]:
    if not (result.coverage_dominance and result.coverage_dominance["overall"]):
        return []
    reports = [r.pareto for r in result.by_seed.values() if r.pareto]
    lines = [f"Pareto per seed over its (diversity x quality) planes ({sum(len(r.planes) for r in reports)} in all), "
             f"averaged per task then over tasks; mean ± sd over {len(result.seeds)} seeds"]
    rows = [["method", "coverage", "dominance", "tasks"]]
    overall = result.coverage_dominance["overall"]
    for method, values in sorted(overall.items(), key=lambda kv: -(kv[1]["coverage"]["mean"] or 0)):
        tasks = max(r.overall.get(method, {}).get("tasks", 0) for r in reports)
        rows.append([method, format_spread(values["coverage"]), format_spread(values["dominance"], True), str(tasks)])
    return lines + _columns(rows)


def _columns(rows: list[list[str]]) -> list[str]:
    """The first column left-aligned, the others right-aligned, padded to the columns a terminal shows (a CJK
    character takes two: `display.text_width`)."""
    from baco.display import text_width

    widths = [max(text_width(r[i]) for r in rows) for i in range(len(rows[0]))]

    def pad(cell: str, width: int, left: bool) -> str:
        space = " " * (width - text_width(cell))
        return cell + space if left else space + cell

    return ["  ".join(pad(cell, w, i == 0) for i, (cell, w) in enumerate(zip(r, widths))).rstrip() for r in rows]


def write_json(result: EvalResult, path: str | Path) -> None:
    atomic_write(path, json.dumps(result.to_dict(), indent=1, ensure_ascii=False) + "\n")


def write_csv(result: EvalResult, path: str | Path) -> None:
    """One row per (task, method), per seed when there are several: counts, then every metric's mean
    (empty = undefined), then the Coverage and Dominance of the row's family (`p-punc` for `p-punc:0.3`):
    they are a family's, and a configuration row would otherwise have none."""
    names = [s.name for s in result.metrics]
    seed_column = ["seed"] if result.seeds else []
    views = ([(seed, r.summary, r.counts, r.pareto) for seed, r in result.by_seed.items()] if result.seeds
             else [(None, result.summary, result.counts, result.pareto)])
    handle = io.StringIO(newline="")
    writer = csv.writer(handle)
    writer.writerow(["task", "method", "family", *seed_column, "prompts", "responses", *names, "coverage",
                     "dominance"])
    for seed, summary, counts, report in views:
        for task, methods in summary.items():
            for method, values in methods.items():
                family = method_family(method)
                pareto = report.per_task.get(task, {}).get(family, {}) if report else {}
                cells = [values[n] for n in names] + [pareto.get("coverage"), pareto.get("dominance")]
                writer.writerow([task, method, family, *([seed] if seed_column else []),
                                 counts[task][method]["prompts"], counts[task][method]["responses"]]
                                + ["" if v is None else repr(float(v)) for v in cells])
    atomic_write(path, handle.getvalue())
