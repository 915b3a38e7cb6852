"""What a task set is made of: one `TaskItem` per prompt."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TaskItem:
    """One prompt of a task set.

    `prompt` is the text for models that take a string; for a conversation it is the last user turn,
    and `messages` keeps the whole conversation ({"role", "content"} dicts, ending in a user turn).
    `meta` holds whatever else the source row carried (e.g. NoveltyBench's `prompt_paraphrases`).
    """

    id: str
    task: str
    prompt: str
    category: str | None = None
    messages: list[dict[str, str]] | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


class TaskWarning(UserWarning):
    """Rows of a prompts file were skipped (empty prompt, repeated WildChat conversation); the message counts them."""
