"""Pareto Coverage and Dominance over (diversity, quality) planes (the BACo paper, arXiv 2511.05650).

Input: per task, per method configuration (e.g. "p-punc:0.3", "p-punc:0.5", "aligned"), a value per
metric. A *method* is a family of configurations (`family("p-punc:0.3") == "p-punc"`); its points
in a plane are those of all its configurations.

For every task and every (diversity metric x, quality metric y) plane:

1. **Normalisation**: min-max over all points of the plane, so every axis runs from 0 (worst point)
   to 1 (best point); a lower-is-better metric (self-BLEU, ...) is flipped first:
   v' = (v - min) / (max - min), or (max - v) / (max - min). An axis on which every point is
   equal is set to 1 for all points (nothing to tell them apart there).
2. **Reference point** (0, 0) in the normalised plane: a point (x, y) dominates the rectangle
   [0, x] x [0, y].
3. **Fronts**: a point is on a front when no other point of the set is >= on both axes and > on one
   (equal points do not dominate each other, so ties are all on the front).
4. **Coverage** of a method = area of the union of its points' rectangles (= the area its own front
   dominates) / the same area for all points of the plane (the global front). Exact: a sweep over
   the x coordinates, no grid. Undefined (None) when the global area is 0, e.g. two points (1, 0) and (0, 1).
5. **Dominance** of a method = share of the global front's points that are the method's (tied
   points count once per configuration, so the shares of all methods sum to 1).

A method without points in a plane (missing values: None, NaN or infinite) gets None there, not 0. Averages: per task,
the mean over its planes (None values left out); overall, the mean over tasks of the task averages.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from itertools import product
from typing import Callable, Mapping

Point = tuple[float, float]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def method_family(config: str) -> str:
    """Default family of a configuration: its name without the knob value that baco's configurations carry.

    A router's knob ("p-punc:0.5" -> "p-punc") or a sweep's sampling knob ("base@temperature=0.7" -> "base").
    A colon before anything but a number is part of a name ("llama3.1:8b", "ft:gpt-4o-mini:org::id"): such a
    configuration is a method of its own, so that two models are never pooled because their names share a prefix.
    """
    name, at, knob = config.rpartition("@")
    if at and name and "=" in knob and _is_number(knob.split("=", 1)[1]):
        config = name
    name, colon, value = config.partition(":")
    return name if colon and name and _is_number(value) else config


def _defined(value) -> bool:
    """A value that is a point's coordinate: not None, NaN or infinite (none of those can be min-max normalised)."""
    return value is not None and math.isfinite(float(value))


def pareto_front(points: Mapping[str, Point]) -> list[str]:
    """Names of the points (both axes maximised) that no other point dominates, in input order."""
    items = list(points.items())
    return [name for name, (x, y) in items
            if not any(ox >= x and oy >= y and (ox > x or oy > y) for _, (ox, oy) in items)]


def dominated_area(points: list[Point] | tuple[Point, ...]) -> float:
    """Area of the union of the rectangles [0, x] x [0, y] (points with x, y >= 0)."""
    area, best_y = 0.0, 0.0
    ordered = sorted(((max(x, 0.0), max(y, 0.0)) for x, y in points), reverse=True)
    for k, (x, y) in enumerate(ordered):
        best_y = max(best_y, y)
        next_x = ordered[k + 1][0] if k + 1 < len(ordered) else 0.0
        area += (x - next_x) * best_y
    return area


def normalise(values: Mapping[str, float], higher_is_better: bool = True) -> dict[str, float]:
    """Min-max to [0, 1] with 1 = best; a constant axis is 1 everywhere."""
    low, high = min(values.values()), max(values.values())
    if high == low:
        return {name: 1.0 for name in values}
    if higher_is_better:
        return {name: (v - low) / (high - low) for name, v in values.items()}
    return {name: (high - v) / (high - low) for name, v in values.items()}


@dataclass
class Plane:
    task: str
    x: str  # diversity metric
    y: str  # quality metric
    raw: dict[str, Point]  # configuration -> (x, y) as measured
    points: dict[str, Point]  # configuration -> normalised (x, y)
    global_front: list[str]
    fronts: dict[str, list[str]]  # method -> configurations on its own front
    coverage: dict[str, float | None]
    dominance: dict[str, float | None]


@dataclass
class ParetoReport:
    planes: list[Plane]
    per_task: dict[str, dict[str, dict[str, float | int | None]]] = field(default_factory=dict)
    overall: dict[str, dict[str, float | int | None]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"per_task": self.per_task, "overall": self.overall, "planes": [asdict(p) for p in self.planes]}


def evaluate_plane(task: str, x: str, y: str, configs: Mapping[str, Mapping[str, float | None]], *,
                   higher_is_better: Mapping[str, bool], family: Callable[[str], str],
                   methods: list[str]) -> Plane | None:
    """One plane; None when no configuration has both values."""
    raw = {c: (float(m[x]), float(m[y])) for c, m in configs.items() if _defined(m.get(x)) and _defined(m.get(y))}
    if not raw:
        return None
    xs = normalise({c: p[0] for c, p in raw.items()}, higher_is_better.get(x, True))
    ys = normalise({c: p[1] for c, p in raw.items()}, higher_is_better.get(y, True))
    points = {c: (xs[c], ys[c]) for c in raw}
    global_front = pareto_front(points)
    total = dominated_area([points[c] for c in global_front])
    fronts: dict[str, list[str]] = {}
    coverage: dict[str, float | None] = {}
    dominance: dict[str, float | None] = {}
    for method in methods:
        own = {c: p for c, p in points.items() if family(c) == method}
        if not own:
            coverage[method] = dominance[method] = None
            continue
        fronts[method] = pareto_front(own)
        coverage[method] = dominated_area([own[c] for c in fronts[method]]) / total if total > 0 else None
        dominance[method] = sum(family(c) == method for c in global_front) / len(global_front)
    return Plane(task, x, y, raw, points, global_front, fronts, coverage, dominance)


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def pareto_aggregate(results: Mapping[str, Mapping[str, Mapping[str, float | None]]], *, diversity: list[str],
                     quality: list[str], higher_is_better: Mapping[str, bool] | None = None,
                     family: Callable[[str], str] | Mapping[str, str] | None = None) -> ParetoReport:
    """Coverage and Dominance of every method in every (diversity, quality) plane of every task.

    results: {task: {configuration: {metric: value or None}}}; higher_is_better: metric -> direction
    (default True); family: configuration -> method (a callable or a dict; default `method_family`).
    """
    directions = dict(higher_is_better or {})
    if family is None:
        family_of = method_family
    elif callable(family):
        family_of = family
    else:
        mapping = dict(family)
        family_of = lambda config: mapping.get(config, config)  # noqa: E731
    report = ParetoReport(planes=[])
    task_means: dict[str, dict[str, dict]] = {}
    for task, configs in results.items():
        methods = sorted({family_of(c) for c in configs})
        planes = [p for x, y in product(diversity, quality)
                  if (p := evaluate_plane(task, x, y, configs, higher_is_better=directions, family=family_of,
                                          methods=methods)) is not None]
        report.planes += planes
        task_means[task] = {m: {"coverage": _mean([p.coverage[m] for p in planes]),
                                "dominance": _mean([p.dominance[m] for p in planes]),
                                "planes": sum(p.dominance[m] is not None for p in planes)} for m in methods}
    report.per_task = task_means
    every_method = sorted({m for per in task_means.values() for m in per})
    report.overall = {m: {"coverage": _mean([t[m]["coverage"] for t in task_means.values() if m in t]),
                          "dominance": _mean([t[m]["dominance"] for t in task_means.values() if m in t]),
                          "tasks": sum(m in t for t in task_means.values())} for m in every_method}
    return report
