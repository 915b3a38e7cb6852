"""The bundled task sets by name, `load_task` for a name or a file, and the stratified `select`."""

from __future__ import annotations

import numbers
import random
from collections import Counter
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from baco.errors import TaskError
from baco.tasks.items import TaskItem
from baco.tasks.loaders import read_task_file

#: name -> (file in baco/tasks/data, description). Written for baco, Apache-2.0 (docs/tasks.md).
BUNDLED: dict[str, tuple[str, str]] = {
    "open-ended": ("open-ended.jsonl",
                   "open questions with many valid answers (NoveltyBench-like): creativity, subjective, "
                   "randomness, underspecified"),
    "dialogue": ("dialogue.jsonl",
                 "chat turns to answer: single user turns and short conversations ending in a user turn"),
    "creative-writing": ("creative-writing.jsonl",
                         "short-form creative prompts: poems, micro-stories, slogans, story openings"),
}


@dataclass(frozen=True)
class TaskInfo:
    """A bundled task set: its name, number of prompts, description and prompts per category."""

    name: str
    count: int
    description: str
    categories: dict[str, int]


def list_tasks() -> list[TaskInfo]:
    """The bundled task sets, in registry order."""
    infos = []
    for name, (_, description) in BUNDLED.items():
        items = _load_bundled(name)
        infos.append(TaskInfo(name, len(items), description, dict(Counter(item.category for item in items))))
    return infos


def load_task(name_or_path: str | Path, *, limit: int | None = None, seed: int | str | None = None,
              format: str | None = None, column: str | None = None, task: str | None = None) -> list[TaskItem]:
    """The prompts of a bundled set (by name) or of a file (by path), optionally a stratified subset.

    `format`, `column` and `task` apply to files (see `read_task_file`); `limit` and `seed` to both
    (see `select`).
    """
    if isinstance(name_or_path, str) and name_or_path in BUNDLED:
        if format is not None or column is not None:
            raise TaskError(f"format= and column= apply to files, not to the bundled set {name_or_path!r}")
        items = _load_bundled(name_or_path)
    else:
        path = Path(name_or_path)
        if not path.exists() and isinstance(name_or_path, str) and not path.suffix and len(path.parts) == 1:
            raise TaskError(f"unknown task {name_or_path!r}: not a bundled set ({', '.join(BUNDLED)}) "
                            "and no such file")
        items = read_task_file(path, format=format, column=column, task=task)
    return select(items, limit, seed=seed)


def select(items: list[TaskItem], limit: int | None, *, seed: int | str | None = None) -> list[TaskItem]:
    """At most `limit` items, stratified by category, returned in their original order.

    Each category (items without one form one group) gets limit * n_c / N items, rounded by largest
    remainder (ties: the category seen first). Within a category: the first ones in file order when
    `seed` is None, else a random choice drawn from `random.Random(seed)` (the same for the same seed).
    """
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (numbers.Integral, str))):
        raise TaskError(f"seed must be an integer or a string, got {seed!r}")
    if limit is None:
        return list(items)
    if isinstance(limit, bool) or not isinstance(limit, numbers.Integral) or limit < 1:
        raise TaskError(f"limit must be a positive integer, got {limit!r}")
    limit = int(limit)  # (a numpy integer too)
    if limit >= len(items):
        return list(items)
    groups: dict[str | None, list[int]] = {}
    for index, item in enumerate(items):
        groups.setdefault(item.category, []).append(index)
    total = len(items)
    quotas = {category: limit * len(members) // total for category, members in groups.items()}
    by_remainder = sorted(groups, key=lambda c: -(limit * len(groups[c]) % total))  # stable: first seen wins ties
    for category in by_remainder[:limit - sum(quotas.values())]:
        quotas[category] += 1
    rng = random.Random(seed if isinstance(seed, str) else int(seed)) if seed is not None else None
    chosen: list[int] = []
    for category, members in groups.items():
        if rng is not None:
            members = sorted(members, key=lambda _: rng.random())  # one draw per member, in order
        chosen += members[:quotas[category]]
    return [items[index] for index in sorted(chosen)]


def _load_bundled(name: str) -> list[TaskItem]:
    filename = BUNDLED[name][0]
    with resources.as_file(resources.files("baco.tasks") / "data" / filename) as path:
        return read_task_file(path, format="jsonl", task=name)
