"""What a task set is made of: one `TaskItem` per prompt."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from baco.prompts import Prompt, prompt_key, with_last_turn


@dataclass(frozen=True)
class TaskItem:
    """One prompt of a task set.

    `prompt` is the text for models that take a string; for a conversation it is the last user turn,
    and `messages` keeps the whole conversation ({"role", "content"} dicts, ending in a user turn);
    `asked` is what baco decodes (the conversation, when it has earlier turns).
    `meta` holds whatever else the source row carried (e.g. NoveltyBench's `prompt_paraphrases`).
    """

    id: str
    task: str
    prompt: str
    category: str | None = None
    messages: list[dict[str, str]] | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def asked(self) -> "Prompt":
        """What the models are given (`Collaboration.generate`'s prompt): the prompt, or, for a conversation of
        several messages, the conversation ending in it (its earlier turns are context the answer depends on)."""
        if not self.messages or len(self.messages) == 1:
            return self.prompt
        return with_last_turn(self.messages, self.prompt)

    @property
    def key(self) -> str:
        """What the item's samples are identified by: its prompt's text, or its whole conversation (`prompt_key`)."""
        return prompt_key(self.asked)


class TaskWarning(UserWarning):
    """Rows of a prompts file were skipped (empty prompt, repeated WildChat conversation); the message counts them."""
