"""A sweep's YAML configuration: methods x knob values x tasks x seeds, validated before anything runs.

    name: reduced
    models: {base: baco:gemma-3-270m, aligned: baco:gemma-3-270m-aligned}   # the default (+ anchor: for proxy)
    tasks: [{name: open-ended, limit: 20}, {name: dialogue, limit: 20}]     # bundled names or files
    n: 6                      # samples per prompt
    seeds: [0]
    sampling: {temperature: 1.0, min_p: 0.05, max_new_tokens: 96}           # shared by every cell
    methods:
      base:     {router: base, sweep: {temperature: [0.7, 1.0, 1.3]}}      # a sampling knob
      p-punc:   {router: p-punc, values: [0.3, 0.5, 0.7]}                  # the router's knob
      prompted: {router: aligned, system_prompt: "Give an unusual answer."} # a prompting baseline
    metrics: {diversity: [distinct-2, ...], quality: [relevance, ...]}     # default: evaluate's defaults

A cell is one (method, configuration, task, seed): all prompts of the task x n samples, decoded as
one lockstep batch. A configuration is a method with one knob value, named `p-punc:0.5` or
`base@temperature=0.7`; the method name is the family its configurations form in the Pareto planes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from baco.decode.sampling import SamplingParams
from baco.errors import BacoError, InvalidSamplingParams, UnknownRouterError
from baco.routers import get_router

SWEEPABLE = ("temperature", "top_p", "top_k", "min_p")
METHOD_KEYS = {"router", "values", "sweep", "system_prompt", "base_template", "batch_size"}


class SweepConfigError(BacoError, ValueError):
    """The sweep configuration is malformed; the message names the offending key."""


@dataclass(frozen=True)
class Configuration:
    """One point of a method's sweep: a router spec plus sampling and prompt overrides."""

    method: str
    name: str
    router: str
    sampling: SamplingParams
    system_prompt: str | None = None
    base_template: str | None = None


@dataclass(frozen=True)
class TaskSpec:
    name: str
    limit: int | None = None
    path: str | None = None  # a user file instead of a bundled set


@dataclass(frozen=True)
class Cell:
    configuration: Configuration
    task: TaskSpec
    seed: int

    @property
    def key(self) -> str:
        """Stable identity of the cell inside a sweep's samples file."""
        return f"{self.task.name}|{self.configuration.name}|seed={self.seed}"


@dataclass
class SweepConfig:
    name: str
    base: str
    aligned: str
    tasks: list[TaskSpec]
    configurations: list[Configuration]
    n: int
    seeds: list[int]
    diversity: list[str] | None = None
    quality: list[str] | None = None
    batch_size: int = 256
    anchor: str | None = None
    source: dict = field(default_factory=dict)

    @property
    def cells(self) -> list[Cell]:
        """Seed-major: every cell of the first seed runs before any of the second, so a sweep cut short
        still holds complete seeds."""
        return [Cell(c, t, s) for s in self.seeds for t in self.tasks for c in self.configurations]

    @property
    def methods(self) -> list[str]:
        return list(dict.fromkeys(c.method for c in self.configurations))


def _fail(message: str) -> None:
    raise SweepConfigError(message)


def _sampling(raw: dict, where: str) -> SamplingParams:
    if not isinstance(raw, dict):
        _fail(f"{where}: sampling must be a mapping, got {raw!r}")
    allowed = set(SamplingParams.__dataclass_fields__) - {"seed"}
    unknown = set(raw) - allowed
    if unknown:
        _fail(f"{where}: unknown sampling keys {sorted(unknown)}; known: {sorted(allowed)}")
    try:
        return SamplingParams(**{k: tuple(v) if k == "stop" else v for k, v in raw.items()})
    except InvalidSamplingParams as error:
        raise SweepConfigError(f"{where}: {error}") from None


@dataclass(frozen=True)
class _StrategyRef:
    """A multi-pass method (baco.strategies) standing where a router would: same naming rules."""

    spec: object
    value: float | None

    @property
    def name(self) -> str:
        return f"{self.spec.name}:{self.value:g}"


def _router(spec: str, where: str):
    from baco.strategies import parse_strategy

    try:
        strategy = parse_strategy(spec)
        if strategy is not None:
            return _StrategyRef(*strategy)
        return get_router(spec, build=False)
    except UnknownRouterError as error:
        raise SweepConfigError(f"{where}: {error}") from None


def _configurations(name: str, raw: dict, sampling: SamplingParams) -> list[Configuration]:
    where = f"methods.{name}"
    if not isinstance(raw, dict) or "router" not in raw:
        _fail(f"{where}: needs a `router` (see `baco routers`), got {raw!r}")
    unknown = set(raw) - METHOD_KEYS
    if unknown:
        _fail(f"{where}: unknown keys {sorted(unknown)}; known: {sorted(METHOD_KEYS)}")
    router = str(raw["router"])
    extra = {"system_prompt": raw.get("system_prompt"), "base_template": raw.get("base_template")}
    values, sweep = raw.get("values"), raw.get("sweep")
    if values is not None and sweep is not None:
        _fail(f"{where}: give `values` (the router's knob) or `sweep` (a sampling knob), not both")
    out = []
    if values is not None:
        if not isinstance(values, list) or not values:
            _fail(f"{where}.values must be a non-empty list, got {values!r}")
        for value in values:
            spec = _router(f"{router}:{value}", where)
            if spec.value is None:
                _fail(f"{where}: router {router!r} has no knob to sweep")
            out.append(Configuration(name, f"{name}:{spec.value:g}" if name != spec.spec.name else spec.name,
                                     spec.name, sampling, **extra))
    elif sweep is not None:
        if not isinstance(sweep, dict) or len(sweep) != 1:
            _fail(f"{where}.sweep must map one sampling knob to a list, e.g. {{temperature: [0.7, 1.0]}}")
        (knob, grid), = sweep.items()
        if knob not in SWEEPABLE:
            _fail(f"{where}.sweep: {knob!r} is not sweepable; use one of {SWEEPABLE}")
        if not isinstance(grid, list) or not grid:
            _fail(f"{where}.sweep.{knob} must be a non-empty list, got {grid!r}")
        spec = _router(router, where)
        for value in grid:
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                _fail(f"{where}.sweep.{knob}: values must be numbers, got {value!r}")
            try:
                swept = replace(sampling, **{knob: value})
            except InvalidSamplingParams as error:
                raise SweepConfigError(f"{where}.sweep: {error}") from None
            out.append(Configuration(name, f"{name}@{knob}={value:g}", spec.name, swept, **extra))
    else:
        out.append(Configuration(name, name, _router(router, where).name, sampling, **extra))
    return out


def _task(raw) -> TaskSpec:
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, dict) or not isinstance(raw.get("name") or raw.get("path"), str):
        _fail(f"tasks: each task is a name or {{name: ..., limit: ...}} / {{path: ..., name: ...}}, got {raw!r}")
    limit = raw.get("limit")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        _fail(f"tasks: limit must be a positive integer, got {limit!r}")
    path = raw.get("path")
    return TaskSpec(name=raw.get("name") or Path(path).stem, limit=limit, path=path)


def parse_config(raw: dict, *, source: str = "<config>") -> SweepConfig:
    """Validate a loaded YAML mapping into a SweepConfig (every error names its key)."""
    if not isinstance(raw, dict):
        _fail(f"{source}: a sweep configuration is a mapping, got {type(raw).__name__}")
    known = {"name", "models", "tasks", "n", "seeds", "sampling", "methods", "metrics", "batch_size"}
    unknown = set(raw) - known
    if unknown:
        _fail(f"{source}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
    from baco.models.embedded import ALIGNED_ALIAS, BASE_ALIAS

    models = raw.get("models") or {}
    sampling = _sampling(raw.get("sampling") or {}, "sampling")
    methods = raw.get("methods")
    if not isinstance(methods, dict) or not methods:
        _fail(f"{source}: `methods` must map method names to {{router: ..., values/sweep: ...}}")
    configurations = [c for name, spec in methods.items() for c in _configurations(str(name), spec, sampling)]
    names = [c.name for c in configurations]
    if len(set(names)) != len(names):
        _fail(f"{source}: two configurations share a name: {sorted({n for n in names if names.count(n) > 1})}")
    tasks = [_task(t) for t in (raw.get("tasks") or _fail(f"{source}: `tasks` is empty"))]
    n = raw.get("n", 4)
    if not isinstance(n, int) or n < 2:
        _fail(f"{source}: n (samples per prompt) must be an integer >= 2 (diversity needs several), got {n!r}")
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        _fail(f"{source}: seeds must be a non-empty list of integers, got {seeds!r}")
    metrics = raw.get("metrics") or {}
    return SweepConfig(name=str(raw.get("name", "sweep")), base=models.get("base", BASE_ALIAS),
                       aligned=models.get("aligned", ALIGNED_ALIAS), tasks=tasks, configurations=configurations,
                       n=n, seeds=seeds, diversity=metrics.get("diversity"), quality=metrics.get("quality"),
                       batch_size=int(raw.get("batch_size", 256)), anchor=models.get("anchor"), source=raw)


def load_config(path: str | Path) -> SweepConfig:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise SweepConfigError(f"sweep configuration {str(path)!r} does not exist")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise SweepConfigError(f"{path}: not valid YAML: {error}") from None
    return parse_config(raw, source=str(path))
