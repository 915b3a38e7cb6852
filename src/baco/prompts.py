"""How one request is shown to each model.

The aligned model reads its tokenizer's chat template (system prompt and few-shot examples as
earlier turns). The base model has no chat template; it reads plain text:

    [system prompt + blank line]
    [for each few-shot example: base_template(prompt=q) + " " + answer + blank line]
    base_template(prompt=request)            # default "Question: {prompt}\\nAnswer:"

Both models then continue the *same* token sequence. The base template's default stop string is
"\\n" + the text before {prompt} (e.g. "\\nQuestion:"), because a base model's natural end of an
answer is to start the next question.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, replace
from typing import Union

from baco.errors import PromptError, PromptTooLongError


class PromptWarning(UserWarning):
    """A prompt was rendered or bounded differently than asked (a system prompt folded into the first user turn;
    max_new_tokens more than the models' context leaves after it)."""


DEFAULT_BASE_TEMPLATE = "Question: {prompt}\nAnswer:"

# Gemma's turn format. The GGUF carries no chat template, although <start_of_turn> (105) and
# <end_of_turn> (106) are single tokens. A system message is folded into the first user turn.
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}"
    "{% set first = messages[0]['content'] | trim + '\n\n' %}{% set rest = messages[1:] %}"
    "{% else %}{% set first = '' %}{% set rest = messages %}{% endif %}"
    "{% for m in rest %}{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + (first if loop.first else '') + m['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)


@dataclass(frozen=True)
class PromptFormat:
    """How a request is shown to each model (module docstring): checked when made, so a wrong field is named then.

    base_template ("Question: {prompt}\\nAnswer:"): the base model's plain text around the request, with {prompt}.
    system_prompt (None): rendered into both models' prompts (blank: none).
    few_shot (()): (question, answer) pairs, earlier turns for the aligned model and earlier Q/A for the base
        model; any iterable of pairs (lists, as JSON gives them), kept as a tuple of tuples.
    chat_template (None): a Jinja chat template's text, used instead of the aligned tokenizer's own.
    base_stop (None: derived from base_template, "\\nQuestion:"): the base template's stop strings; one string
        or a list of them (() for none).
    """

    base_template: str = DEFAULT_BASE_TEMPLATE
    system_prompt: str | None = None
    few_shot: tuple[tuple[str, str], ...] = ()
    chat_template: str | None = None  # overrides the aligned tokenizer's own template
    base_stop: tuple[str, ...] | None = None  # None: derived from base_template

    def __post_init__(self) -> None:
        self._check_types()
        if isinstance(self.system_prompt, str) and not self.system_prompt.strip():
            object.__setattr__(self, "system_prompt", None)  # blank: no system prompt (not an empty turn)
        for name, text in self._texts():
            problem = unicode_problem(text)
            if problem:
                raise PromptError(f"{name} is not valid Unicode text ({problem})")
        if "{prompt}" not in self.base_template:
            raise PromptError(f"base_template must contain {{prompt}}, got {self.base_template!r}")
        try:
            self.base_template.format(prompt="x")
        except (KeyError, IndexError, ValueError) as error:
            raise PromptError(f"base_template {self.base_template!r} is not a valid format string: {error}") from None

    def _check_types(self) -> None:
        """Each field's type, named when it is wrong (not at generate time, from inside the rendering); few_shot and
        base_stop normalised to tuples (hashable, and a conversation's turns are added to few_shot)."""
        if not isinstance(self.base_template, str):
            raise PromptError(f"base_template must be a string containing {{prompt}}, got "
                              f"{type(self.base_template).__name__}")
        for name in ("system_prompt", "chat_template"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                kind = "a string" if name == "system_prompt" else "a template's text"
                raise PromptError(f"{name} must be {kind} or None, got {type(value).__name__}")
        object.__setattr__(self, "few_shot", few_shot_pairs(self.few_shot))
        if self.base_stop is not None:
            stops = (self.base_stop,) if isinstance(self.base_stop, str) else self.base_stop
            if not isinstance(stops, (list, tuple)) or not all(isinstance(s, str) and s for s in stops):
                raise PromptError(f"base_stop must be a string or a list of non-empty strings (or None: derived "
                                  f"from base_template), got {self.base_stop!r}")
            object.__setattr__(self, "base_stop", tuple(stops))

    def _texts(self):
        """(name, text) of every string of the format that the models read."""
        if isinstance(self.base_template, str):
            yield "base_template", self.base_template
        if isinstance(self.system_prompt, str):
            yield "the system prompt", self.system_prompt
        for number, shot in enumerate(self.few_shot):
            for part, text in zip(("question", "answer"), shot):
                if isinstance(text, str):
                    yield f"few-shot example {number} ({part})", text

    @property
    def stop_strings(self) -> tuple[str, ...]:
        if self.base_stop is not None:
            return tuple(self.base_stop)
        lead = self.base_template.split("{prompt}", 1)[0].strip()
        return (f"\n{lead}",) if lead else ()

    def render_base(self, prompt: str) -> str:
        parts = [f"{self.system_prompt.strip()}\n\n"] if self.system_prompt else []
        # Each text is trimmed, as the system prompt is (and as Gemma's template trims every turn): the
        # template's own spaces and newlines frame it, so "Hi \n" must not read "Question: Hi \n\nAnswer:".
        parts += [f"{self.base_template.format(prompt=q.strip())} {a.strip()}\n\n" for q, a in self.few_shot]
        parts.append(self.base_template.format(prompt=prompt.strip()))
        return "".join(parts)

    def chat_messages(self, prompt: str) -> list[dict]:
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        for q, a in self.few_shot:
            messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        return messages + [{"role": "user", "content": prompt}]

    def render_aligned(self, prompt: str, tokenizer) -> str:
        template = self.chat_template or getattr(tokenizer, "chat_template", None)
        if not template:
            raise PromptError(
                "the aligned tokenizer has no chat template; pass one (PromptFormat(chat_template=...) "
                "or `baco generate --chat-template FILE`)"
            )
        messages = self.chat_messages(prompt)
        try:
            rendered = self._apply(tokenizer, template, messages)
        except Exception as error:  # noqa: BLE001 - jinja raises its own types
            if not self.system_prompt:
                raise PromptError(f"the chat template failed to render: {error}") from error
            rendered = None  # a template that refuses the system role ("System role not supported")
        if not self.system_prompt or (rendered is not None
                                      and rendered != self._apply(tokenizer, template, messages[1:])):
            return rendered
        # The template refuses the system role or silently drops it (the aligned model would never see the
        # system prompt while the base model does): fold it into the first user turn, as Gemma's template does.
        warnings.warn("the aligned model's chat template has no system role: the system prompt is put at the "
                      "start of the first user turn", PromptWarning, stacklevel=2)
        messages = messages[1:]
        messages[0] = {"role": "user", "content": f"{self.system_prompt}\n\n{messages[0]['content']}"}
        try:
            return self._apply(tokenizer, template, messages)
        except Exception as error:  # noqa: BLE001
            raise PromptError(f"the chat template failed to render: {error}") from error

    @staticmethod
    def _apply(tokenizer, template: str, messages: list[dict]) -> str:
        return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                             add_generation_prompt=True)


def few_shot_pairs(examples) -> tuple[tuple[str, str], ...]:
    """`PromptFormat.few_shot` as a tuple of (question, answer) string pairs, or a PromptError saying what is wrong
    (one pair given bare, `few_shot=("Q", "A")`, is the likeliest slip: the fix is shown)."""
    if isinstance(examples, (str, bytes)) or not isinstance(examples, (list, tuple)):
        raise PromptError(f"few_shot is a list of (question, answer) pairs, got {type(examples).__name__}")
    if len(examples) == 2 and all(isinstance(text, str) for text in examples):
        raise PromptError(f"few_shot is a list of (question, answer) pairs, got one pair bare: for one example, "
                          f"few_shot=[{tuple(examples)!r}]")
    pairs = []
    for number, shot in enumerate(examples):
        if not isinstance(shot, (list, tuple)) or len(shot) != 2 or not all(isinstance(t, str) for t in shot):
            raise PromptError(f"few-shot example {number} must be a (question, answer) pair of strings, got {shot!r}")
        pairs.append(tuple(shot))
    return tuple(pairs)


def unicode_problem(text: str) -> str | None:
    """Why `text` is not valid Unicode text (a lone surrogate, which no tokenizer encodes), or None.

    A JSON string may hold one ("\\ud800"); Python reads a byte that is not UTF-8 in a command's arguments
    or a file name as one of U+DC80..U+DCFF, so those are named by the byte they stand for."""
    try:
        text.encode("utf-8")
        return None
    except UnicodeEncodeError as error:
        code, column = ord(text[error.start]), error.start + 1
        if 0xDC80 <= code <= 0xDCFF:
            return f"byte 0x{code - 0xDC00:02x} at character {column} is not UTF-8; give the text as UTF-8"
        return f"a lone surrogate U+{code:04X} at character {column}"


def prompt_problem(prompt) -> str | None:
    """What keeps a prompt (a string or a conversation) from any model, said after its name ("prompt 3 ..."),
    or None."""
    if isinstance(prompt, (list, tuple)):
        return conversation_problem(prompt)
    if not isinstance(prompt, str):
        return f"must be a string or a conversation (a list of messages), got {type(prompt).__name__}"
    if not prompt.strip():
        return "is empty"
    problem = unicode_problem(prompt)
    return f"is not valid Unicode text ({problem})" if problem else None


#: What one prompt may be: a string (the user's request), or a conversation: a list of {"role", "content"} dicts,
#: system (or developer) messages first, then user and assistant turns in alternation, ending with a user turn;
#: a content is a string or a list of OpenAI text parts (`content_text`).
Prompt = Union[str, list]
SYSTEM_ROLES = ("system", "developer")
TURN_ROLES = ("user", "assistant")
CONVERSATION_MARK = "\x00conversation\x00"  # starts a conversation's key: no prompt text a user types begins so


def content_text(content) -> str | None:
    """A message's text: its content when that is a string; a list of OpenAI text parts ([{"type": "text", "text":
    ...}, ...]) joined by newlines, as vLLM joins them; None for anything else (an image part, a number)."""
    if isinstance(content, str):
        return content
    if (isinstance(content, list) and content
            and all(isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
                    for part in content)):
        return "\n".join(part["text"] for part in content)
    return None


def conversation_problem(messages) -> str | None:
    """What keeps `messages` from being a conversation to answer, said after its name, or None."""
    if not isinstance(messages, (list, tuple)) or not messages:
        return "must be a string or a non-empty list of messages"
    for number, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            return f"has message {number} that is not a {{'role', 'content'}} object"
        if message["role"] not in SYSTEM_ROLES + TURN_ROLES:
            return f"has message {number} with role {message['role']!r} (roles: {', '.join(SYSTEM_ROLES + TURN_ROLES)})"
        text = content_text(message.get("content"))
        if text is None:
            return f"has message {number} whose content is neither a string nor a list of text parts"
        problem = unicode_problem(text)
        if problem:
            return f"has message {number} that is not valid Unicode text ({problem})"
    problem = roles_problem([m["role"] for m in messages])
    if problem:
        return problem
    if not content_text(messages[-1]["content"]).strip():
        return "ends with an empty user message"
    return None


def roles_problem(roles: list[str]) -> str | None:
    """What is wrong with a conversation's order of roles, said after its name, or None."""
    turns = roles[next((i for i, role in enumerate(roles) if role not in SYSTEM_ROLES), len(roles)):]
    if any(role in SYSTEM_ROLES for role in turns):
        return "has system or developer messages after its turns began: they must come first"
    if not turns or turns != ["user", "assistant"] * (len(turns) // 2) + ["user"]:
        return (f"must alternate user and assistant turns (after any system messages) and end with a user turn, "
                f"got {' -> '.join(roles)}")
    return None


def as_prompt(prompt) -> Prompt:
    """A prompt as baco keeps it: a string as it is; a conversation as a list of {"role", "content"} dicts (other
    keys dropped, text parts joined: `content_text`), or the text of its one user message when it is nothing more
    (the same request: same samples). Anything else is returned unchanged, for the caller's checks to name."""
    if isinstance(prompt, (list, tuple)) and not conversation_problem(prompt):
        messages = [{"role": m["role"], "content": content_text(m["content"])} for m in prompt]
        return messages[0]["content"] if len(messages) == 1 else messages
    return prompt


def prompt_key(prompt: Prompt) -> str:
    """The text a prompt's samples are identified by (their seeds, ids, grouping): a string's own text, a
    conversation's messages written out (so two conversations ending in the same user turn stay apart)."""
    if isinstance(prompt, str):
        return prompt
    return CONVERSATION_MARK + json.dumps([[m["role"], m["content"]] for m in prompt], ensure_ascii=False,
                                          separators=(",", ":"))


def last_turn(prompt: Prompt) -> str:
    """The text a prompt asks: a string itself, a conversation's last user turn."""
    return prompt if isinstance(prompt, str) else prompt[-1]["content"]


def with_last_turn(prompt: Prompt, text: str) -> Prompt:
    """The prompt asking `text` instead: the string, or the conversation with its last user turn replaced."""
    return text if isinstance(prompt, str) else [*prompt[:-1], {"role": "user", "content": text}]


def split_conversation(prompt: Prompt, fmt: PromptFormat) -> tuple[PromptFormat, str]:
    """(format, text) to render a prompt with: a conversation's system messages replace the format's system prompt,
    its earlier turns follow the format's few-shot examples, and its last user turn is the text."""
    if isinstance(prompt, str):
        return fmt, prompt
    system = [m["content"] for m in prompt if m["role"] in SYSTEM_ROLES]
    turns = [m["content"] for m in prompt if m["role"] not in SYSTEM_ROLES]
    shots = tuple(zip(turns[0:-1:2], turns[1:-1:2]))
    fmt = replace(fmt, system_prompt="\n\n".join(system) if system else fmt.system_prompt,
                  few_shot=fmt.few_shot + shots)
    return fmt, turns[-1]


def turns(prompt: Prompt) -> list[dict]:
    """A prompt as chat messages, as the aligned model reads them (`split_conversation`): a string is one user turn;
    a conversation's system and developer messages are one system message (a chat template may know neither a
    developer role nor a second system message), then its turns."""
    fmt, question = split_conversation(prompt, PromptFormat())
    return fmt.chat_messages(question)


def request_text(prompt: Prompt) -> str:
    """A prompt as one text for a model that reads it inside an instruction of its own (a judge: the quality metric,
    the JUDGE router): a string itself; a conversation's turns (`turns`), one per line, named by role
    ("System: ...", "User: ...", "Assistant: ..."), its last user turn last."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in turns(prompt))


def encode_request(prompt: Prompt, index: int, fmt: PromptFormat, base_tokenizer, aligned_tokenizer,
                   context_length: int, only: str | None = None,
                   name: str | None = None) -> tuple[list[int], list[int]]:
    """Token ids of one request for (base, aligned); clear errors for empty, not Unicode or over-long prompts.

    A conversation is rendered as `split_conversation` says: each model reads its earlier turns as it reads
    few-shot examples (the aligned model as chat turns, the base model in its template).
    `only` ("base" or "aligned"): one model alone reads that rendering (`SoloPair.reads`); the other is not
    rendered (a base model needs no chat template to run alone) and its ids are a copy of the read ones.
    `name` (default "prompt INDEX"): what errors call the prompt (a server's one prompt: "the prompt")."""
    name = name or f"prompt {index}"
    problem = prompt_problem(prompt)
    if problem:
        raise PromptError(f"{name} {problem}")
    fmt, prompt = split_conversation(as_prompt(prompt), fmt)
    base_ids = aligned_ids = None
    if only != "aligned":
        base_ids = base_tokenizer(fmt.render_base(prompt), add_special_tokens=True)["input_ids"]
    if only != "base":
        aligned_ids = aligned_tokenizer(fmt.render_aligned(prompt, aligned_tokenizer),
                                        add_special_tokens=False)["input_ids"]
    base_ids = aligned_ids if base_ids is None else base_ids
    aligned_ids = base_ids if aligned_ids is None else aligned_ids
    longest = max(len(base_ids), len(aligned_ids))
    if longest >= context_length:
        raise PromptTooLongError(
            f"{name} is {longest} tokens once templated, but the models accept at most "
            f"{context_length} tokens of context (and need room for at least one new token)"
        )
    return base_ids, aligned_ids
