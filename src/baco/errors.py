"""Errors a user can act on. The CLI prints them as one line, without a traceback."""


class BacoError(Exception):
    """Base class: something the user asked for cannot be done, and the message says why."""


class InvalidSamplingParams(BacoError, ValueError):
    """A sampling knob is out of range (temperature < 0, top_p outside (0, 1], ...)."""


class UnknownRouterError(BacoError, KeyError):
    """A router name that is not registered, or a bad router parameter."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ModelLoadError(BacoError, OSError):
    """A model or tokenizer could not be loaded (missing path, corrupt file, no network)."""


class TokenizerMismatchError(BacoError, ValueError):
    """Base and aligned tokenizers do not share a vocabulary, so token-level routing is impossible.

    `detail`: which ids differ, without the advice the message ends with (for an error that gives its own)."""

    def __init__(self, message: str, detail: str | None = None):
        super().__init__(message)
        self.detail = detail or message


class PromptError(BacoError, ValueError):
    """A prompt is empty, too long for a model's context, or cannot be rendered."""


class PromptTooLongError(PromptError):
    """A prompt does not fit the models' context (the server's code: context_length_exceeded)."""


class TaskError(BacoError, ValueError):
    """A task set or prompts file cannot be loaded: unknown name, missing file, bad row (file and line named)."""


class NoPromptField(TaskError):
    """A row of a prompts file has none of the fields a prompt is read from (a column name can say which)."""


class OutputError(BacoError, OSError):
    """An output path cannot be written (missing folder, a folder where a file belongs, read-only, disk full)."""


class RunLockedError(BacoError):
    """Another process holds the run directory or `--out` file (its pid and host are named)."""


class IntegrityError(BacoError):
    """Stored results do not match what is being asked (another configuration, changed prompts or settings)."""


class CapacityError(BacoError, MemoryError):
    """The device has no room for a request now (e.g. the buffers its sampling penalties need); the engine goes on
    with the others, and the same request may fit later or with a smaller batch (the server's answer: 503)."""
