"""The rules for names in baco's registries (routers, metrics): one place, so both read and refuse alike.

A name is looked up case-insensitively, so it is stored lower-cased. It is one word without the characters
that separate it from something else in a spec (a router's knob after ':', the next metric after ','), and
not a word that already means something else there (a multi-pass method, a metric group): such a name
could never be reached. Registering a name again with a function of the same module and qualified name
replaces the entry (a notebook cell run again); another function under a taken name is refused.
"""

from __future__ import annotations

from typing import Callable, Mapping

from baco.errors import BacoError


def registry_name(name, *, what: str, separators: str, why: str, reserved: Mapping[str, str]) -> str:
    """`name` as a registry stores it, or a BacoError saying why it cannot be one.

    what: the kind of entry ("router"); separators: the characters a name may not hold, `why` says what they
    do in a spec; reserved: names that already mean something else where the name is read -> what they mean.
    """
    if (not isinstance(name, str) or not name.strip() or any(c in name for c in separators)
            or name != "".join(name.split())):
        banned = " or ".join(repr(c) for c in separators)
        raise BacoError(f"a {what}'s name is a word without spaces or {banned} ({why}), got {name!r}")
    name = name.lower()
    if name in reserved:
        raise BacoError(f"{name!r} already names {reserved[name]}, so a {what} of that name could never be "
                        f"used; choose another name")
    return name


def check_free(registry: Mapping[str, object], name: str, fn: Callable, what: str) -> None:
    """Refuse `fn` under a name another function holds; the same function again (a cell run twice) may replace."""
    known = registry.get(name)
    if known is not None and origin(known.fn) != origin(fn):
        raise BacoError(f"{what} {name!r} is already registered (by {'.'.join(origin(known.fn))}); "
                        f"choose another name")


def origin(fn) -> tuple[str, str]:
    """Where a function was defined: the same in a notebook cell run twice, different for another function."""
    return getattr(fn, "__module__", "?") or "?", getattr(fn, "__qualname__", repr(fn))
