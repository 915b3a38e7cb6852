"""Metrics by name: `@register_metric(...)` adds one, `get_metric` finds one, `list_metrics` lists them.

Three kinds, each a pure function:

- diversity: `fn(responses, **needs) -> float | None` over the n responses of ONE prompt;
  None means undefined (e.g. one response: nothing to compare), never a made-up 0.
- quality:   `fn(prompts, responses, **needs) -> list[float | None]`, one score per pair, batched.
- joint:     like diversity, but also reads per-response quality gains (NoveltyBench utility).

`needs` names shared resources the runner passes in as keyword arguments (the embedder, a judge
model, the prompt, ...), so metrics hold no globals and tests can pass their own.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

from baco.errors import BacoError
from baco.names import check_free, registry_name

KINDS = ("diversity", "quality", "joint")


class UnknownMetricError(BacoError, KeyError):
    """A metric or metric group that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: str
    fn: Callable
    higher_is_better: bool
    help: str
    library: str  # which package computes it (for `baco metrics` and the docs)
    needs: tuple[str, ...] = ()
    group: str = "lexical"  # lexical | semantic | model (needs an LLM or a reward model)
    default: bool = True  # part of `--metrics default`: offline and fast on a CPU
    gain: Callable[[float], float] | None = None  # quality -> non-negative gain for utility


_REGISTRY: dict[str, MetricSpec] = {}


def register_metric(name: str, *, kind: str, higher_is_better: bool, help: str, library: str,
                    needs: tuple[str, ...] = (), group: str = "lexical", default: bool = True,
                    gain: Callable[[float], float] | None = None) -> Callable[[Callable], Callable]:
    """Decorator: `@register_metric("distinct-2", kind="diversity", higher_is_better=True, ...)`.

    The name follows `baco.names` as a router's does: stored lower-cased (`get_metric` ignores case), no ','
    (it separates metrics in `--metrics`), not a group's name (`default`, `all`, ...: those select groups);
    the same function registered again (a notebook cell run again) replaces its metric, another is refused.
    """
    if kind not in KINDS:
        raise BacoError(f"metric kind must be one of {KINDS}, got {kind!r}")
    name = registry_name(name, what="metric", separators=",", why="it separates metrics in a selection",
                         reserved={group: "a group of metrics" for group in GROUPS})

    def add(fn: Callable) -> Callable:
        if getattr(fn, "__module__", None) not in BUILTINS:  # else a built-in's name looks free until they load
            _load_builtins()
        check_free(_REGISTRY, name, fn, "metric")
        _REGISTRY[name] = MetricSpec(name, kind, fn, higher_is_better, help, library, tuple(needs), group,
                                     default, gain)
        return fn

    return add


# the built-in metrics' modules: they register as they load, lazily (so that `import baco` stays fast)
BUILTINS = ("baco.evaluate.lexical", "baco.evaluate.partitions", "baco.evaluate.quality", "baco.evaluate.semantic")


def _load_builtins() -> None:
    for module in BUILTINS:
        importlib.import_module(module)


def list_metrics(kind: str | None = None) -> list[MetricSpec]:
    """Registered metrics, diversity first, then quality, then joint; by name within a kind."""
    _load_builtins()
    specs = sorted(_REGISTRY.values(), key=lambda s: (KINDS.index(s.kind), s.name))
    return [s for s in specs if kind is None or s.kind == kind]


def get_metric(name: str) -> MetricSpec:
    _load_builtins()
    name = str(name).strip().lower()  # names are stored lower-cased
    if name not in _REGISTRY:
        raise UnknownMetricError(f"unknown metric {name!r}; known: {', '.join(sorted(_REGISTRY))} "
                                 f"(see `baco metrics`)")
    return _REGISTRY[name]


GROUPS = ("default", "all", "diversity", "quality", "joint", "lexical", "semantic", "model")


def resolve_metrics(selection: str | list[str] | None) -> list[MetricSpec]:
    """Names and groups, comma-separated or a list -> specs in registry order, without duplicates.

    Groups: `default` (offline, fast on a CPU), `all`, a kind (`diversity`, `quality`, `joint`)
    or a family (`lexical`, `semantic`, `model`).
    """
    if selection is None:
        selection = "default"
    items = selection.split(",") if isinstance(selection, str) else list(selection)
    chosen: set[str] = set()
    for item in (i.strip().lower() for i in items):
        if not item:
            continue
        if item in GROUPS:
            chosen.update(s.name for s in list_metrics() if item == "all" or (item == "default" and s.default)
                          or item in (s.kind, s.group))
        else:
            chosen.add(get_metric(item).name)
    if not chosen:
        raise UnknownMetricError("no metrics selected; pass names or groups such as 'default' or 'all'")
    return [s for s in list_metrics() if s.name in chosen]
