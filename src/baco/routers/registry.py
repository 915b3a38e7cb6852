"""Routers by name: `register` adds one, `get_router("p-punc:0.5")` builds one, `list_routers` lists them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable

from baco.errors import BacoError, UnknownRouterError
from baco.names import check_free, registry_name
from baco.routers.view import Route, StepView, route_problem

RouterFn = Callable[..., Route]


@dataclass(frozen=True)
class RouterSpec:
    name: str
    fn: RouterFn
    help: str
    param: str | None = None  # name of the one numeric knob, if any
    default: float | None = None
    low: float | None = None  # inclusive bounds on the knob, None = unbounded
    high: float | None = None
    factory: Callable[[float | None], Callable] | None = None  # builds a stateful router object (JUDGE)
    host: bool = False  # decides on the host (reads texts): runs on the engine's eager, synchronous path
    integer: bool = False  # the knob is a count (UniTE's k): a fractional value is refused, not rounded


@dataclass(frozen=True)
class Router:
    """A registered router with its parameter bound: call it on a StepView."""

    spec: RouterSpec
    value: float | None

    @property
    def name(self) -> str:
        if self.value is None:
            return self.spec.name
        return f"{self.spec.name}:{int(self.value) if self.spec.integer else format(self.value, 'g')}"  # a count in full

    @property
    def host(self) -> bool:
        return self.spec.host

    def __call__(self, view: StepView) -> Route:
        try:
            route = self.spec.fn(view) if self.value is None else self.spec.fn(view, self.value)
        except Exception as error:  # a router of one's own failing: its traceback as it is, and which router it was
            if hasattr(error, "add_note"):  # (Python 3.11+)
                error.add_note(f"(raised by router {self.name!r}, called at a decoding step with a StepView of "
                               f"{getattr(view, 'batch_size', '?')} rows)")
            raise
        if not isinstance(route, Route):  # a router of one's own that returns a mask, say: name it, not a traceback
            raise BacoError(f"router {self.name!r} returned {type(route).__name__}, not a Route: return "
                            f"Route.where(use_base_mask, 'reason-if-base', 'reason-if-aligned')")
        problem = route_problem(route, view) if isinstance(view, StepView) else None  # (not a cross pair's views)
        if problem:
            raise BacoError(f"router {self.name!r} returned a Route with {problem}")
        return route


_REGISTRY: dict[str, RouterSpec] = {}
_RESERVED: dict[str, str] = {}  # name -> what it means instead (baco.strategies fills it)


def register(name: str, *, help: str, param: str | None = None, default: float | None = None,
             low: float | None = None, high: float | None = None,
             factory: Callable[[float | None], Callable] | None = None,
             host: bool = False, integer: bool = False) -> Callable[[RouterFn], RouterFn]:
    """Decorator: `@register("p", param="threshold", default=0.5, help=...)`.

    The name follows `baco.names`: stored lower-cased (`get_router` ignores case), no ':' (the knob follows
    it), not a multi-pass method's (`negative`, `verbalized`: those names run the method, never a router);
    the same function registered again (a notebook cell run again) replaces its router, another is refused.
    """
    name = registry_name(name, what="router", separators=":", why="its knob follows a ':'", reserved=_RESERVED)
    check_default(name, param, default, low, high)

    def add(fn: RouterFn) -> RouterFn:
        if not callable(fn):
            raise BacoError(f"register({name!r}) decorates a function of a StepView, got {type(fn).__name__}")
        check_free(_REGISTRY, name, fn, "router")
        _REGISTRY[name] = RouterSpec(name, fn, help, param, default, low, high, factory, host, integer)
        return fn

    return add


def check_default(name: str, param: str | None, default, low, high) -> None:
    """A default is a value of the knob: there must be a knob, and the default must lie in its bounds (a value
    typed after the name is checked against them; the default, taken without a word, must pass the same check)."""
    if default is None:
        return
    if param is None:
        raise BacoError(f"register({name!r}) gives a default ({default!r}) but no param: name the knob (param=...)")
    if (not isinstance(default, (int, float)) or isinstance(default, bool) or not math.isfinite(default)
            or (low is not None and default < low) or (high is not None and default > high)):
        raise BacoError(f"register({name!r}): the default {default!r} of {param} is outside its bounds "
                        f"({bounds(low, high)})")


def reserve(name: str, meaning: str) -> None:
    """Keep `name` from routers: where a router is named, it means something else (a multi-pass method)."""
    _RESERVED[name.lower()] = meaning


def list_routers() -> list[RouterSpec]:
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


def split_spec(spec: str) -> tuple[str, str | None]:
    """`name:value` -> (the name lower-cased, the value's text, or None when there is no ':'). A ':' with nothing
    after it (`--router p-punc:$T` with T unset) is refused: read as the default, it would run another knob."""
    name, colon, raw = spec.strip().partition(":")
    if colon and not raw.strip():
        raise UnknownRouterError(f"router {spec.strip()!r} has an empty value after ':'; give a number, or no ':' "
                                 f"for the default")
    return name.strip().lower(), raw if colon else None


def get_router(spec: str | Router, *, build: bool = True, known: Iterable[str] | None = None) -> Router:
    """Parse `name` or `name:value` (e.g. `p-punc:0.5`) into a ready router.

    `build=False` only validates: routers with their own model (JUDGE) are not loaded.
    `known`: the names an unknown name's error lists (default: every registered router), for a door that takes
    more (the multi-pass methods: `baco.strategies.method_names`) or serves fewer (the server).
    """
    if isinstance(spec, Router) or (callable(spec) and isinstance(getattr(spec, "name", None), str)):
        return spec  # a ready router, or any callable router object with a name (e.g. a JudgeRouter)
    if not isinstance(spec, str) or not spec.strip():
        own = "; a function of your own routes once registered: @baco.register('name', help=...)" if callable(
            spec) else ""
        raise UnknownRouterError(f"router must be a name such as 'p-punc:0.5' or a Router (baco.get_router), "
                                 f"got {spec!r}{own}")
    name, raw = split_spec(spec)
    if name not in _REGISTRY and name in _RESERVED:  # (generate and the CLI run these names before asking here)
        raise UnknownRouterError(f"{name!r} names {_RESERVED[name]}, not a Router object: pass the name, "
                                 f"router={spec.strip()!r}, to generate or iter_generate")
    if name not in _REGISTRY:
        listed = ", ".join(sorted(_REGISTRY if known is None else known))
        raise UnknownRouterError(f"unknown router {name!r}; known routers: {listed} (see `baco routers`)")
    entry = _REGISTRY[name]
    if entry.param is None:
        if raw is not None:
            raise UnknownRouterError(f"router {name!r} takes no parameter, got {spec!r}")
        return entry.factory(None) if entry.factory and build else Router(entry, None)
    if raw is None:
        if entry.default is None:  # its function takes the knob: called without one, it would fail mid-step
            raise UnknownRouterError(f"router {name!r} needs a value for {entry.param}: '{name}:VALUE' "
                                     f"({bounds(entry.low, entry.high)})")
        return Router(entry, entry.default)
    try:
        value = float(raw) + 0.0  # (+ 0.0: "-0" is 0, one router under one name)
    except ValueError:
        raise UnknownRouterError(f"router {name!r} needs a number for {entry.param} "
                                 f"({bounds(entry.low, entry.high)}), got {raw.strip()!r}") from None
    if not math.isfinite(value):
        raise UnknownRouterError(f"router {name!r} needs a finite number for {entry.param} "
                                 f"({bounds(entry.low, entry.high)}), got {raw.strip()!r}")
    if (entry.low is not None and value < entry.low) or (entry.high is not None and value > entry.high):
        raise UnknownRouterError(f"router {name!r}: {entry.param} must be {bounds(entry.low, entry.high)}, "
                                 f"got {value:g}")
    if entry.integer and value != int(value):
        raise UnknownRouterError(f"router {name!r}: {entry.param} must be an integer, got {raw.strip()}")
    return Router(entry, value)


def bounds(low: float | None, high: float | None) -> str:
    """'in [0, 1]', '>= 0', '<= 2' or 'any number': how a knob's range reads in an error message."""
    if low is not None and high is not None:
        return f"in [{low:g}, {high:g}]"
    if low is not None:
        return f">= {low:g}"
    return f"<= {high:g}" if high is not None else "any number"
