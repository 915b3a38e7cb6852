"""Results over seeds, shared by `baco sweep` and `baco eval`: each seed's planes apart, then mean ± spread.

A seed's samples are one draw of the experiment; pooling seeds would measure a prompt's diversity
over 3n samples, a different quantity. So every seed is evaluated alone (its own Pareto planes per
task), and a method's numbers are reported as the mean over seeds with their spread (sample standard
deviation, min, max and each seed's value, for paired comparisons).
"""

from __future__ import annotations

import statistics
from typing import Callable, Mapping

from baco.evaluate.pareto import ParetoReport, pareto_aggregate

AGGREGATES = ("coverage", "dominance")


def spread(by_seed: Mapping) -> dict:
    """Mean, sample standard deviation, min, max and the value of each seed (for paired comparisons)."""
    values = list(by_seed.values())
    if not values:
        return {"mean": None, "std": None, "min": None, "max": None, "seeds": 0, "by_seed": {}}
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "seeds": len(values), "by_seed": dict(by_seed)}


def format_spread(values: dict, percent: bool = False) -> str:
    """`0.512 ± 0.034` (or `45.2% ± 3.1`); the mean alone for one seed, `n/a` for none."""
    if values["mean"] is None:
        return "n/a"
    scale = 100 if percent else 1
    text = f"{values['mean'] * scale:.1f}%" if percent else f"{values['mean']:.3f}"
    if values["seeds"] > 1:
        text += f" ± {values['std'] * scale:.1f}" if percent else f" ± {values['std']:.3f}"
    return text


def pareto_over_seeds(by_seed: Mapping, *, diversity: list[str], quality: list[str],
                      higher_is_better: Mapping[str, bool], family: Callable | Mapping | None = None,
                      methods: list[str] | None = None, tasks: list[str] | None = None) -> tuple[dict, dict]:
    """Coverage and Dominance of every method, seed by seed, and their spread over seeds.

    by_seed: {seed: {task: {configuration: {metric: mean}}}}. Returns ({seed: ParetoReport},
    {"overall": {method: {agg: spread}}, "per_task": {task: {method: {agg: spread}}}}); methods and
    tasks default to those with values, in order of appearance.
    """
    per_seed: dict[object, ParetoReport] = {}
    for seed, by_task in by_seed.items():
        per_seed[seed] = pareto_aggregate({t: v for t, v in by_task.items() if v}, diversity=diversity,
                                          quality=quality, higher_is_better=higher_is_better, family=family)
    if methods is None:
        methods = list(dict.fromkeys(m for report in per_seed.values() for m in report.overall))
    if tasks is None:
        tasks = list(dict.fromkeys(t for by_task in by_seed.values() for t, v in by_task.items() if v))
    table: dict = {"overall": {}, "per_task": {t: {} for t in tasks}}
    for method in methods:
        for agg in AGGREGATES:
            overall = {seed: r.overall[method][agg] for seed, r in per_seed.items()
                       if method in r.overall and r.overall[method][agg] is not None}
            table["overall"].setdefault(method, {})[agg] = spread(overall)
            for task in tasks:
                values = {seed: r.per_task[task][method][agg] for seed, r in per_seed.items()
                          if task in r.per_task and r.per_task[task].get(method, {}).get(agg) is not None}
                table["per_task"][task].setdefault(method, {})[agg] = spread(values)
    return per_seed, table
