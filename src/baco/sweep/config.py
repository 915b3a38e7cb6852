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
    metrics: {diversity: [distinct-2, ...], quality: [relevance, ...]}     # an axis left out: evaluate's defaults

A cell is one (method, configuration, task, seed): all prompts of the task x n samples, decoded as
one lockstep batch. A configuration is a method with one knob value, named `p-punc:0.5` or
`base@temperature=0.7`; the method name is the family its configurations form in the Pareto planes.
"""

from __future__ import annotations

import math
import re
import reprlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NoReturn

from baco.defaults import MEMORY_FRACTION
from baco.decode.sampling import SamplingParams
from baco.errors import BacoError, InvalidSamplingParams, UnknownRouterError
from baco.routers import get_router
from baco.routers.neighbours import reads_anchor

SWEEPABLE = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty")
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
    batch_size: int | str | None = None  # rows per lockstep batch for this method, or "auto" (default: the sweep's)

    @property
    def settings(self) -> tuple:
        """What decides this configuration's samples (two configurations with equal settings are one), as the
        prompt format reads them: a blank system prompt is none, and no base template is the default one."""
        from baco.prompts import DEFAULT_BASE_TEMPLATE

        system_prompt = self.system_prompt if self.system_prompt and self.system_prompt.strip() else None
        return (self.router, self.sampling, system_prompt, self.base_template or DEFAULT_BASE_TEMPLATE)


@dataclass(frozen=True)
class TaskSpec:
    name: str
    limit: int | None = None
    path: str | None = None  # a user file instead of a bundled set
    column: str | None = None  # the file's field that holds the prompts (`load_task(column=)`)


def cell_key(task: str, configuration: str, seed: int) -> str:
    """Stable identity of a cell inside a sweep's samples file."""
    return f"{task}|{configuration}|seed={seed}"


@dataclass(frozen=True)
class Cell:
    configuration: Configuration
    task: TaskSpec
    seed: int

    @property
    def key(self) -> str:
        return cell_key(self.task.name, self.configuration.name, self.seed)


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
    batch_size: int | str = 256  # or "auto": slots sized from memory (`decode.engine.fit_slots`)
    anchor: str | None = None
    backend: str = "hf"  # or "llamacpp" (GGUF files or the embedded pair on llama.cpp)
    source: dict = field(default_factory=dict)
    directory: Path | None = None  # the configuration file's folder (load_config), for error hints: task paths
    #                                are read from the working directory, not from here
    compile: bool = False  # a run option (`baco sweep --compile`), not part of what the samples are
    memory_fraction: float = MEMORY_FRACTION  # a run option too (`baco sweep --memory-fraction`), for batch_size "auto"
    evaluation: dict = field(default_factory=dict)  # EvalOptions fields for the evaluation (`evaluation:`)
    file: Path | None = None  # the YAML file it was loaded from (load_config): errors found later name it

    def where(self, key: str) -> str:
        """A key as an error names it: after the configuration's file, when it came from one."""
        return f"{self.file}: {key}" if self.file is not None else key

    @property
    def cells(self) -> list[Cell]:
        """Seed-major: every cell of the first seed runs before any of the second, so a sweep cut short
        still holds complete seeds."""
        return [Cell(c, t, s) for s in self.seeds for t in self.tasks for c in self.configurations]

    @property
    def methods(self) -> list[str]:
        return list(dict.fromkeys(c.method for c in self.configurations))

    def models_of(self, configuration: Configuration) -> dict[str, str]:
        """The models a configuration runs, as its samples record them: one model alone or the pair."""
        from baco.strategies import parse_strategy

        backend = {"backend": self.backend} if self.backend != "hf" else {}  # llama.cpp's samples are its own
        if configuration.router == "base":
            return {"base": self.base} | backend
        if configuration.router == "aligned" or parse_strategy(configuration.router):
            return {"aligned": self.aligned} | backend
        models = {"base": self.base, "aligned": self.aligned} | backend
        if self.anchor and reads_anchor(configuration.router):
            models["anchor"] = self.anchor
        return models


def show(value) -> str:
    """A value as an error message quotes it: its repr, cut short when long or deeply nested."""
    return _SHORT.repr(value)


_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 120


def _fail(message: str) -> NoReturn:
    raise SweepConfigError(message)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _slot_count(value, where: str, default: int) -> int | str:
    """Rows decoded at once: a positive integer, or "auto" (as many as the device's memory holds)."""
    value = default if value is None else value
    if value != "auto" and (not _is_int(value) or value < 1):
        _fail(f"{where} must be a positive integer or auto, got {show(value)}")
    return value


def _text(value, where: str) -> str | None:
    if value is not None and not isinstance(value, str):
        _fail(f"{where} must be a string, got {show(value)}")
    return value


def _label(value, where: str) -> str:
    """A method or task name: it becomes part of cell keys (`task|configuration|seed=S`)."""
    if not isinstance(value, (str, int)) or isinstance(value, bool) or not str(value).strip() or "|" in str(value):
        _fail(f"{where}: a name must be a non-empty string without '|', got {show(value)}")
    return str(value).strip()


def _mapping(value, where: str, known: set[str]) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        _fail(f"{where} must be a mapping ({', '.join(sorted(known))}), got {show(value)}")
    unknown = sorted(map(str, set(value) - known))
    if unknown:
        _fail(f"{where}: unknown keys {unknown}; known: {sorted(known)}")
    return value


def _sampling(raw, where: str) -> SamplingParams:
    allowed = set(SamplingParams.__dataclass_fields__) - {"seed"}
    raw = _mapping(raw, where, allowed)
    try:
        return SamplingParams(**{k: tuple(v) if k == "stop" and isinstance(v, list) else v for k, v in raw.items()})
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
    from baco.strategies import method_names, parse_strategy

    try:
        strategy = parse_strategy(spec)
        if strategy is not None:
            return _StrategyRef(*strategy)
        return get_router(spec, build=False, known=method_names())
    except UnknownRouterError as error:
        raise SweepConfigError(f"{where}: {error}") from None


def _prompting(raw: dict, where: str) -> dict:
    """system_prompt and base_template, checked as the prompt format will use them."""
    from baco.prompts import DEFAULT_BASE_TEMPLATE, PromptFormat

    extra = {key: _text(raw.get(key), f"{where}.{key}") for key in ("system_prompt", "base_template")}
    try:
        PromptFormat(base_template=extra["base_template"] or DEFAULT_BASE_TEMPLATE,
                     system_prompt=extra["system_prompt"])
    except BacoError as error:
        raise SweepConfigError(f"{where}.base_template: {error}") from None
    return extra


def _configurations(name: str, raw, sampling: SamplingParams) -> list[Configuration]:
    where = f"methods.{name}"
    if not isinstance(raw, dict) or "router" not in raw:
        _fail(f"{where}: needs a `router` (see `baco routers`), got {show(raw)}")
    raw = _mapping(raw, where, METHOD_KEYS)
    if not isinstance(raw["router"], str):
        _fail(f"{where}.router must be a router name such as 'p-punc' (see `baco routers`), "
              f"got {show(raw['router'])}")
    router = raw["router"].strip()
    extra = _prompting(raw, where)
    if raw.get("batch_size") is not None:
        extra["batch_size"] = _slot_count(raw["batch_size"], f"{where}.batch_size", 1)
    values, sweep = raw.get("values"), raw.get("sweep")
    if values is not None and sweep is not None:
        _fail(f"{where}: give `values` (the router's knob) or `sweep` (a sampling knob), not both")
    out = []
    if values is not None:
        if not isinstance(values, list) or not values:
            _fail(f"{where}.values must be a non-empty list, got {show(values)}")
        for value in values:
            if not _is_number(value):
                _fail(f"{where}.values: values must be numbers, got {show(value)}")
            spec = _router(f"{router}:{value!r}", where)
            if spec.value is None:
                _fail(f"{where}: router {show(router)} has no knob to sweep")
            out.append(Configuration(name, f"{name}:{spec.value:g}" if name != spec.spec.name else spec.name,
                                     spec.name, sampling, **extra))
    elif sweep is not None:
        if not isinstance(sweep, dict) or len(sweep) != 1:
            _fail(f"{where}.sweep must map one sampling knob to a list, e.g. {{temperature: [0.7, 1.0]}}")
        (knob, grid), = sweep.items()
        if knob not in SWEEPABLE:
            _fail(f"{where}.sweep: {show(knob)} is not sweepable; use one of {SWEEPABLE}")
        if not isinstance(grid, list) or not grid:
            _fail(f"{where}.sweep.{knob} must be a non-empty list, got {show(grid)}")
        spec = _router(router, where)
        for value in grid:
            if not _is_number(value):
                _fail(f"{where}.sweep.{knob}: values must be numbers, got {show(value)}")
            try:
                swept = replace(sampling, **{knob: value})
            except InvalidSamplingParams as error:
                raise SweepConfigError(f"{where}.sweep: {error}") from None
            out.append(Configuration(name, f"{name}@{knob}={value:g}", spec.name, swept, **extra))
    else:
        out.append(Configuration(name, name, _router(router, where).name, sampling, **extra))
    from baco.strategies import check_method_knobs

    for conf in out:  # refused here rather than when the cell runs, after the other cells' hours of work
        try:
            check_method_knobs(conf.router, conf.sampling)
        except InvalidSamplingParams as error:
            _fail(f"{where}: {error}")
    return out


def _task(raw, index: int) -> TaskSpec:
    where = f"tasks[{index}]"
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, dict) or not isinstance(raw.get("name") or raw.get("path"), str):
        _fail(f"{where}: each task is a name or {{name: ..., limit: ...}} / {{path: ..., name: ...}}, "
              f"got {show(raw)}")
    raw = _mapping(raw, where, {"name", "path", "limit", "column"})
    path = _text(raw.get("path"), f"{where}.path")
    column = _text(raw.get("column"), f"{where}.column")
    if column is not None and not column.strip():
        _fail(f"{where}.column is empty: give the name of the field that holds the prompts")
    if column is not None and path is None:
        _fail(f"{where}.column names the field of a prompts file (`path`) to read prompts from; the bundled set "
              f"{show(raw.get('name'))} has its own")
    limit = raw.get("limit")
    if limit is not None and (not _is_int(limit) or limit < 1):
        _fail(f"{where}.limit must be a positive integer, got {show(limit)}")
    name = _label(raw.get("name") or Path(path).stem, f"{where}.name")
    if "/" in name or "\0" in name:  # it names files: plots/pareto-<task>-seed<S>.png
        _fail(f"{where}.name: a task name names its plot files (plots/pareto-<task>-seed<S>.png), so it may not "
              f"hold '/' or a NUL character, got {show(name)}")
    return TaskSpec(name=name, limit=limit, path=path, column=column)


def _tasks(raw, source: str) -> list[TaskSpec]:
    if raw == [] or raw is None:
        _fail(f"{source}: `tasks` is empty; list bundled task names or {{path: ..., name: ...}}")
    if not isinstance(raw, list):
        _fail(f"{source}: `tasks` must be a list of task names or {{path: ..., name: ...}}, got {show(raw)}")
    tasks = [_task(t, i) for i, t in enumerate(raw)]
    seen: dict[str, TaskSpec] = {}
    for task in tasks:
        if task.name in seen:  # the name is the task's identity in cell keys: one name, one prompt set
            _fail(f"{source}: two tasks are named {show(task.name)} ({show(seen[task.name].path or task.name)} and "
                  f"{show(task.path or task.name)}); give each its own `name`")
        seen[task.name] = task
    same = {}
    for task in tasks:
        other = same.setdefault((task.path or task.name, task.limit, task.column), task)
        if other is not task:
            _fail(f"{source}: tasks {show(other.name)} and {show(task.name)} are the same prompts "
                  f"({task.path or task.name}, limit {task.limit}); list them once")
    return tasks


def check_seeds(raw, source: str) -> list[int]:
    if not isinstance(raw, list) or not raw or not all(_is_int(s) and s >= 0 for s in raw):
        _fail(f"{source}: seeds must be a non-empty list of non-negative integers, got {show(raw)}")
    repeated = sorted({s for s in raw if raw.count(s) > 1})
    if repeated:
        _fail(f"{source}: seeds {repeated} are listed more than once; every seed would run twice")
    return list(raw)


# The metrics each axis of the (diversity, quality) planes takes: a joint metric (utility) is listed with the
# diversity metrics (it is reported beside them, on no plane)
AXIS_KINDS = {"diversity": ("diversity", "joint"), "quality": ("quality",)}

# What the `evaluation:` key may set: the models and settings of the evaluation's resources
# (evaluate/resources.py EvalOptions). Not the device (the run's) nor the score cache (RUN_DIR/quality-scores.jsonl).
EVALUATION_KEYS = {"judge_model": str, "fluency_model": str, "reward_model": str, "embedding_model": str,
                   "embedding_dtype": str, "equivalence": str, "equivalence_threshold": float, "patience": float,
                   "batch_size": int}

# A resource with no default: a metric needing one is refused at load (not after every cell has run) unless
# `evaluation:` names it
NO_DEFAULT = {"reward_model": "evaluation.reward_model (a path or HF id of a sequence-classification reward model)"}


def _evaluation(raw, source: str) -> dict:
    """The `evaluation:` mapping, checked key by key; every value a type EvalOptions takes, within its rule."""
    from baco.evaluate.resources import option_problem

    where = f"{source}: evaluation"
    if raw is None:
        return {}
    raw = _mapping(raw, where, set(EVALUATION_KEYS))
    for key, value in raw.items():
        kind = EVALUATION_KEYS[key]
        if kind is str and not (isinstance(value, str) and value.strip()):
            _fail(f"{where}.{key} must be a non-empty string, got {show(value)}")
        if kind is int and not (_is_int(value) and value >= 1):
            _fail(f"{where}.{key} must be a positive integer, got {show(value)}")
        if kind is float and (isinstance(value, bool) or not isinstance(value, (int, float))
                              or not math.isfinite(value)):
            _fail(f"{where}.{key} must be a number, got {show(value)}")
        if problem := option_problem(key, value):
            _fail(f"{where}.{key} {problem}, got {show(value)}")
    return {key: float(value) if EVALUATION_KEYS[key] is float else value for key, value in raw.items()}


def _metrics(raw, source: str, evaluation: dict) -> tuple[list[str], list[str]]:
    """The two axes' metrics; an axis left out takes the evaluation's default metrics of its kind, so that every
    plane has both axes (Coverage needs a diversity and a quality metric)."""
    raw = _mapping(raw, f"{source}: metrics", set(AXIS_KINDS))
    return (_axis(raw.get("diversity"), "diversity", source, evaluation),
            _axis(raw.get("quality"), "quality", source, evaluation))


def _axis(names, axis: str, source: str, evaluation: dict) -> list[str]:
    """One axis's metric names (or groups), each of the axis's kind and computable in a sweep."""
    from baco.evaluate.registry import UnknownMetricError, resolve_metrics

    where = f"{source}: metrics.{axis}"
    if names is None:
        return [spec.name for spec in resolve_metrics("default") if spec.kind in AXIS_KINDS[axis]]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        _fail(f"{where} must be a non-empty list of metric names (see `baco metrics`), got {show(names)}")
    for name in names:
        try:
            specs = resolve_metrics([name])
        except UnknownMetricError as error:
            raise SweepConfigError(f"{where}: {error}") from None
        group = [spec.name for spec in specs] != [name.strip().lower()]
        for spec in specs:
            _check_metric(spec, axis, f"{where}: the group {show(name)} includes {spec.name}" if group
                          else f"{where}: {spec.name}", evaluation)
    return names


def _check_metric(spec, axis: str, what: str, evaluation: dict) -> None:
    """A metric on the wrong axis would leave its own axis empty (an all-n/a table); one needing a resource
    with no default that `evaluation:` does not name would fail after every cell has run."""
    if spec.kind not in AXIS_KINDS[axis]:
        home = next(a for a, kinds in AXIS_KINDS.items() if spec.kind in kinds)
        _fail(f"{what}, a {spec.kind} metric: it belongs under metrics.{home}")
    for need in spec.needs:
        if need in NO_DEFAULT and need not in evaluation:
            _fail(f"{what}, which needs a model with no default: set {NO_DEFAULT[need]}")


def _models(raw, source: str) -> dict[str, str]:
    raw = _mapping(raw, f"{source}: models", {"base", "aligned", "anchor", "backend"})
    for key, value in raw.items():
        if not isinstance(value, str) or not value.strip():
            _fail(f"{source}: models.{key} must be a model id, path or adapter directory, got {show(value)}")
    if raw.get("backend", "hf") not in ("hf", "llamacpp"):
        _fail(f"{source}: models.backend must be hf or llamacpp, got {show(raw['backend'])}")
    return raw


def _name(raw, source: str) -> str:
    name = raw if isinstance(raw, str) else str(raw) if _is_int(raw) else None
    if name is None or not re.fullmatch(r"[\w.-]+", name) or set(name) == {"."}:
        _fail(f"{source}: name must be letters, digits, '.', '-' or '_' (it names the folder runs/<name>), "
              f"got {show(raw)}")
    return name


def _distinct(configurations: list[Configuration], source: str) -> None:
    names = [c.name for c in configurations]
    if len(set(names)) != len(names):
        twice = next(c for c in configurations if names.count(c.name) > 1)
        _fail(f"{source}: methods.{twice.method}: two configurations share the name {twice.name!r} (a value listed "
              f"twice in its values or sweep?)")
    seen: dict[tuple, Configuration] = {}
    for conf in configurations:
        other = seen.setdefault(conf.settings, conf)
        if other is not conf:
            _fail(f"{source}: configurations {show(other.name)} and {show(conf.name)} are the same "
                  f"(router {conf.router}, same sampling and prompts); every sample would be made twice")


def parse_config(raw: dict, *, source: str = "<config>") -> SweepConfig:
    """Validate a loaded YAML mapping into a SweepConfig (every error names its key)."""
    if not isinstance(raw, dict):
        _fail(f"{source}: a sweep configuration is a mapping, got {type(raw).__name__}")
    raw = _mapping(raw, source, {"name", "models", "tasks", "n", "seeds", "sampling", "methods", "metrics",
                                 "batch_size", "evaluation"})
    from baco.models.embedded import ALIGNED_ALIAS, BASE_ALIAS

    name = _name(raw.get("name", "sweep"), source)
    models = _models(raw.get("models"), source)
    sampling = _sampling(raw.get("sampling"), "sampling")
    methods = raw.get("methods")
    if not isinstance(methods, dict) or not methods:
        _fail(f"{source}: `methods` must map method names to {{router: ..., values/sweep: ...}}")
    configurations = [c for key, spec in methods.items()
                      for c in _configurations(_label(key, "methods"), spec, sampling)]
    _distinct(configurations, source)
    tasks = _tasks(raw.get("tasks"), source)
    n = raw.get("n", 4)
    if not _is_int(n) or n < 2:
        _fail(f"{source}: n (samples per prompt) must be an integer >= 2 (diversity needs several), got {show(n)}")
    seeds = check_seeds(raw.get("seeds", [0]), source)
    evaluation = _evaluation(raw.get("evaluation"), source)
    diversity, quality = _metrics(raw.get("metrics"), source, evaluation)
    batch_size = _slot_count(raw.get("batch_size"), f"{source}: batch_size", 256)
    return SweepConfig(name=name, base=models.get("base", BASE_ALIAS), aligned=models.get("aligned", ALIGNED_ALIAS),
                       tasks=tasks, configurations=configurations, n=n, seeds=seeds, diversity=diversity,
                       quality=quality, batch_size=batch_size, anchor=models.get("anchor"),
                       backend=models.get("backend", "hf"), source=raw, evaluation=evaluation)


def _unique_keys_loader():
    """PyYAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last one silently,
    so a second `base:` under methods would replace the first without a word)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            first_line: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults` may be overridden, as YAML says
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    seen = key in first_line
                except TypeError:  # an unhashable key: the safe loader's own error says so
                    continue
                if seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {show(key)} appears twice in one mapping (first at line {first_line[key]})",
                        key_node.start_mark)
                first_line[key] = key_node.start_mark.line + 1
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


def load_config(path: str | Path) -> SweepConfig:
    import yaml

    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a YAML file" if path.is_dir() else "does not exist"
        raise SweepConfigError(f"sweep configuration {show(str(path))} {what}")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_unique_keys_loader())  # noqa: S506 - a safe loader
    except UnicodeDecodeError as error:
        raise SweepConfigError(f"{path}: not UTF-8 text (bad byte at offset {error.start})") from None
    except yaml.YAMLError as error:  # one line: where and what, not PyYAML's multi-line excerpt
        mark, problem = getattr(error, "problem_mark", None), getattr(error, "problem", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = problem or " ".join(str(error).split())
        raise SweepConfigError(f"{path}: not valid YAML{where}: {what}") from None
    except (OSError, RecursionError) as error:
        raise SweepConfigError(f"{path}: cannot read it: {error}") from None
    try:
        config = parse_config(raw, source=str(path))
    except SweepConfigError as error:  # every error names the file, then the key (most name it already)
        message = str(error)
        raise SweepConfigError(message if message.startswith(f"{path}: ") else f"{path}: {message}") from None
    config.directory, config.file = path.parent, path
    return config
