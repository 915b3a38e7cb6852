"""Read a user's prompts file (JSONL, JSON, CSV, text, parquet; NoveltyBench and WildChat rows) into TaskItems.

The container comes from the file extension (or `format=`; `rows.jsonl.gz` is JSON Lines, gzip-compressed: a text
file whose first bytes are gzip's is read decompressed); what a row means is decided per row:
a prompt field (`PROMPT_FIELDS`, first present wins, or `column=`), else `messages`, else a WildChat
`conversation`. Every error names the file and the line (or row) it is about.
"""

from __future__ import annotations

import csv
import gzip
import json
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from baco.errors import NoPromptField, TaskError
from baco.prompts import SYSTEM_ROLES, TURN_ROLES, content_text, roles_problem, unicode_problem
from baco.tasks.items import TaskItem, TaskWarning

#: Fields a row's prompt is read from, in order of precedence: the first one present wins.
PROMPT_FIELDS = ("prompt", "question", "instruction", "text")
#: Containers (chosen by extension) and row schemas (NoveltyBench, WildChat) that `format=` accepts.
FORMATS = ("jsonl", "json", "csv", "txt", "parquet", "noveltybench", "wildchat")
EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "csv", ".txt": "txt",
              ".parquet": "parquet"}
CSV_SEPARATORS = ";\t"  # what a header without a comma may be separated by instead (Excel writes ';' in some locales)
GZIP_MAGIC = b"\x1f\x8b"  # the first bytes of every gzip file
ROLES = (*SYSTEM_ROLES, *TURN_ROLES)  # as the library and the server take a conversation
# WildChat fields worth keeping per item; the rest (moderation scores, headers, the full reply) is dropped.
WILDCHAT_META = ("conversation_hash", "conversation_id", "model", "language", "turn", "toxic", "redacted")
MAX_LISTED = 10  # skipped-row locations named in a warning
EMPTY_PROMPT, EMPTY_TURN = "an empty prompt", "no (or an empty) first user turn"  # reasons a row is skipped
EMPTY = (EMPTY_PROMPT, EMPTY_TURN)


def read_task_file(path: str | Path, *, format: str | None = None, column: str | None = None,
                   task: str | None = None, strict: bool = False) -> list[TaskItem]:
    """All prompts of one file, in file order. `task` names the set (default: the file's stem).

    A row whose prompt is empty is skipped with a warning (datasets such as WildChat have them), and a
    conversation's prompt is its last user turn (`messages` keeps the rest). `strict` (`baco generate --prompts`,
    where every row is asked for): an empty prompt is an error naming its line."""
    path = Path(path)
    if not path.is_file():
        raise TaskError(f"prompts file {str(path)!r} " + ("is a folder" if path.is_dir() else "does not exist"))
    container, schema = _resolve_format(path, format)
    if schema != "auto" and column is not None:
        raise TaskError(f"{path}: column= does not apply to format {schema!r} (its prompt field is fixed)")
    if container == "txt" and column is not None:
        raise TaskError(f"{path}: column= does not apply to a text file (each line is a prompt)")
    task = task or _stem(path)
    items: list[TaskItem] = []
    first_seen: dict[str, str] = {}
    skipped: dict[str, list[str]] = {}
    for where, number, data in _rows(path, container):
        if isinstance(data, str) and schema == "auto" and column is None:
            data = {"prompt": data}  # a bare JSON string, or a line of a .txt file
        if not isinstance(data, dict):
            raise TaskError(f"{where}: expected an object with a prompt field, got {type(data).__name__}")
        wildchat = _is_wildchat(data, schema, column)
        if wildchat:
            item = _wildchat_item(data, where, number, task)
        else:
            item = _parse_row(data, where, number, schema=schema, column=column, task=task)
        if isinstance(item, str):  # a reason to skip
            if strict and item in EMPTY:
                raise TaskError(f"{where}: the prompt is empty")
            skipped.setdefault(item, []).append(where)
            continue
        problem = unicode_problem(item.prompt)  # a JSON escape such as "\ud800": no tokenizer encodes it
        if problem:
            raise TaskError(f"{where}: the prompt is not valid Unicode text ({problem})")
        if item.id in first_seen:
            if wildchat:  # WildChat dumps repeat conversations; keep the first
                skipped.setdefault("a repeated WildChat conversation", []).append(where)
                continue
            raise TaskError(f"{where}: duplicate id {item.id!r} (first at {first_seen[item.id]})")
        first_seen[item.id] = where
        items.append(item)
    for reason, places in skipped.items():
        listed = ", ".join(places[:MAX_LISTED]) + (", ..." if len(places) > MAX_LISTED else "")
        warnings.warn(f"{path}: skipped {len(places)} row(s) with {reason}: {listed}", TaskWarning, stacklevel=3)
    if not items:
        raise TaskError(f"{path}: no prompts found" + (" (every row was skipped)" if skipped else ""))
    return items


def _resolve_format(path: Path, format: str | None) -> tuple[str, str]:
    """(container, schema): container jsonl|json|csv|txt|parquet, schema auto|noveltybench|wildchat."""
    if format is not None and format not in FORMATS:
        raise TaskError(f"unknown format {format!r}; known: {', '.join(FORMATS)}")
    if format in ("jsonl", "json", "csv", "txt", "parquet"):
        return format, "auto"
    container = extension_format(path)
    schema = format or "auto"
    if container is None:
        raise TaskError(f"{path}: cannot tell the format from the extension {_extension(path)!r}; use .jsonl, "
                        f".json, .csv, .tsv, .txt or .parquet (gzip-compressed: .jsonl.gz, ...), or pass format= "
                        f"({', '.join(FORMATS)})")
    if schema != "auto" and container not in ("jsonl", "json", "parquet"):
        raise TaskError(f"{path}: format {schema!r} reads .jsonl, .json or .parquet files, not {_extension(path)!r}")
    return container, schema


def extension_format(path: str | Path) -> str | None:
    """The container a file's name says (`EXTENSIONS`; `rows.jsonl.gz`: the extension before `.gz`), else None."""
    return EXTENSIONS.get(Path(_without_gz(Path(path).name)).suffix.lower())


def _without_gz(name: str) -> str:
    return name[:-3] if name.lower().endswith(".gz") else name


def _extension(path: Path) -> str:
    """A file's extension as a user names it: `.jsonl`, or with what it compresses, `.jsonl.gz`."""
    return Path(_without_gz(path.name)).suffix + path.suffix if path.suffix.lower() == ".gz" else path.suffix


def _stem(path: Path) -> str:
    """A file's name without its extension, and without `.gz` first (`rows.jsonl.gz`: `rows`)."""
    return Path(_without_gz(path.name)).stem


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(2) == GZIP_MAGIC


# ---------------------------------------------------------------- containers: (where, number, row)

def _rows(path: Path, container: str) -> Iterator[tuple[str, int, Any]]:
    try:
        if container == "parquet":
            yield from _parquet_rows(path)
            return
        opener = gzip.open if _is_gzip(path) else open
        with opener(path, "rt", encoding="utf-8-sig", newline="" if container == "csv" else None) as handle:
            if container in ("jsonl", "json"):
                yield from _json_rows(path, handle, allow_array=container == "json")
            else:
                yield from {"csv": _csv_rows, "txt": _txt_rows}[container](path, handle)
    except UnicodeDecodeError:
        raise TaskError(f"{_first_bad_byte(path)}; save the file as UTF-8") from None
    except (EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise TaskError(f"{path}: a gzip file that cannot be decompressed ({error}); a file cut off while it was "
                        f"written reads only as far as `gzip -dc` gets") from None


def _first_bad_byte(path: Path) -> str:
    """Where a file's first byte that is not UTF-8 is ("PATH:2: not valid UTF-8 (byte 0xe9 at column 12)"); the
    decoder's own offset counts from the chunk it was reading, not from the start of the file."""
    data = path.read_bytes()
    if data.startswith(GZIP_MAGIC):
        try:
            data = gzip.decompress(data)
        except (EOFError, zlib.error, gzip.BadGzipFile):  # also cut off: where its text goes wrong is not known
            return f"{path}: not valid UTF-8"
    data = data.removeprefix(b"\xef\xbb\xbf")
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as error:
            return f"{path}:{number}: not valid UTF-8 (byte 0x{raw[error.start]:02x} at column {error.start + 1})"
    return f"{path}: not valid UTF-8"


def _json_rows(path: Path, handle, allow_array: bool) -> Iterator[tuple[str, int, Any]]:
    """JSON Lines, or (a .json file whose first character is '[') one JSON array of rows, or (a .json file that is
    one JSON value written over several lines, `json.dump(row, file, indent=2)`) that one row."""
    text = handle.read()
    if allow_array and text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as error:
            raise TaskError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from None
        for number, row in enumerate(rows, start=1):
            yield f"{path}: row {number}", number, row
        return
    if allow_array and "\n" in text.strip():
        try:
            row = json.loads(text)
        except json.JSONDecodeError:
            pass  # several values (JSON Lines), read line by line below
        else:
            yield f"{path}:1", 1, row
            return
    # split on "\n" only (the file is read with universal newlines): str.splitlines() would also split on U+2028,
    # U+2029 and U+0085, which JSON allows unescaped inside a string (json.dumps(ensure_ascii=False) writes them)
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue  # a blank line is not a row
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise TaskError(f"{path}:{number}: not valid JSON ({error.msg})") from None
        yield f"{path}:{number}", number, row


def _csv_rows(path: Path, handle) -> Iterator[tuple[str, int, Any]]:
    """CSV with a header row; a row's line is the line it ends on (quoted cells may span lines).

    Read strictly: a quote that is never closed would take every later line into one cell (those prompts
    lost in it), and text after a closing quote would be joined to the cell; both are errors."""
    reader = csv.DictReader(handle, strict=True, delimiter=_csv_separator(path, handle))
    start = 1  # the line the row being read begins on
    try:
        if not reader.fieldnames:
            raise TaskError(f"{path}: empty CSV file (expected a header row naming the columns)")
        reader.fieldnames = [name.strip() for name in reader.fieldnames]
        twice = next((name for name in reader.fieldnames if name and reader.fieldnames.count(name) > 1), None)
        if twice is not None:  # (a row would keep only the last column of that name)
            raise TaskError(f"{path}:1: the header names the column {twice!r} twice")
        start = reader.line_num + 1
        for row in reader:
            row.pop(None, None)  # cells beyond the header
            yield f"{path}:{reader.line_num}", reader.line_num, row
            start = reader.line_num + 1
    except csv.Error as error:
        if "unexpected end of data" in str(error):
            raise TaskError(f"{path}:{start}: a quoted cell of the row that begins on this line is never closed "
                            f"(the file ends inside it); close it, or double a quote meant as text (\"\")") from None
        raise TaskError(f"{path}:{start}: bad CSV in the row that begins on this line ({error})") from None


def _csv_separator(path: Path, handle) -> str:
    """A tab for a .tsv file; else a comma, unless the header line has none and has ';' or tabs instead (one column
    named 'id;prompt' could never be a prompt field). Reads the header line and rewinds."""
    if Path(_without_gz(path.name)).suffix.lower() == ".tsv":
        return "\t"
    header = handle.readline()
    handle.seek(0)
    if "," in header:
        return ","
    return next((separator for separator in CSV_SEPARATORS if separator in header), ",")


def _txt_rows(path: Path, handle) -> Iterator[tuple[str, int, Any]]:
    """Plain text: every non-blank line is one prompt."""
    for number, line in enumerate(handle, start=1):
        if line.strip():
            yield f"{path}:{number}", number, line


def _parquet_rows(path: Path) -> Iterator[tuple[str, int, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise TaskError(f"{path}: reading parquet files needs pyarrow (pip install pyarrow), "
                        "or export the rows to JSONL") from None
    try:
        parquet = pq.ParquetFile(path)
    except Exception as error:  # pyarrow raises its own ArrowInvalid / OSError kinds
        raise TaskError(f"{path}: not a readable parquet file ({error})") from None
    number = 0
    for batch in parquet.iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            number += 1
            yield f"{path}: row {number}", number, row


# ---------------------------------------------------------------- rows: TaskItem, or a reason to skip

def _is_wildchat(data: dict, schema: str, column: str | None) -> bool:
    """format='wildchat', or (auto) a row with a 'conversation' and no prompt field or messages."""
    if schema != "auto":
        return schema == "wildchat"
    return column is None and "conversation" in data and not any(key in data for key in (*PROMPT_FIELDS, "messages"))


def _parse_row(data: dict, where: str, number: int, *, schema: str, column: str | None,
               task: str) -> TaskItem | str:
    """A row with a prompt field (or `column`), or with only `messages` (the prompt is the last user turn). A prompt
    field holding a list is a conversation, read as `messages` are."""
    messages = _messages(data["messages"], where) if data.get("messages") is not None else None
    if schema == "noveltybench":
        missing = [key for key in ("id", "prompt") if key not in data]
        if missing:
            raise TaskError(f"{where}: a NoveltyBench row needs 'id' and 'prompt'; missing {missing} "
                            f"(fields: {sorted(data)})")
        key = "prompt"
    elif column is not None:
        if column not in data:
            raise TaskError(f"{where}: no field {column!r} (fields: {sorted(data)})")
        key = column
    else:
        key = next((key for key in PROMPT_FIELDS if key in data), None)
        if key is None and messages is None:
            raise NoPromptField(f"{where}: no prompt field; expected one of {', '.join(PROMPT_FIELDS)} or 'messages' "
                            f"(fields: {sorted(data)})")
    if key is None:
        prompt = messages[-1]["content"]
    else:
        prompt = data[key]
        if isinstance(prompt, list):  # a conversation, as TRL's conversational prompt-only rows hold one
            messages = _messages(prompt, where)
            prompt = messages[-1]["content"]
        elif prompt is not None and not isinstance(prompt, str):
            raise TaskError(f"{where}: field {key!r} must be a string or a list of {{role, content}} messages, "
                            f"got {type(prompt).__name__}")
    if prompt is None or not prompt.strip():
        return EMPTY_PROMPT
    extra = data.get("input")
    if key == "instruction" and column is None and isinstance(extra, str) and extra.strip():
        prompt = f"{prompt}\n\n{extra}"  # an Alpaca row: the text the instruction is about (as `baco eval` reads it)
    used = {key, "id", "task", "category", "messages"}
    return TaskItem(id=_id(data.get("id"), where, task, number), task=_text(data.get("task"), "task", where) or task,
                    prompt=prompt.strip(), category=_category(data.get("category"), where),
                    messages=messages, meta={k: v for k, v in data.items() if k not in used})


def _wildchat_item(data: dict, where: str, number: int, task: str) -> TaskItem | str:
    """A WildChat row: the prompt is the conversation's first user turn; the id its conversation hash."""
    turns = data.get("conversation")
    if not isinstance(turns, list):
        raise TaskError(f"{where}: a WildChat row needs a 'conversation' list of {{role, content}} turns "
                        f"(fields: {sorted(data)})")
    for turn in turns:
        if not isinstance(turn, dict) or "role" not in turn:
            raise TaskError(f"{where}: a conversation turn must be an object with 'role' and 'content'")
    first_user = next((turn.get("content") for turn in turns if turn["role"] == "user"), None)
    if not isinstance(first_user, str) or not first_user.strip():
        return EMPTY_TURN
    conversation_id = data.get("conversation_hash") or data.get("conversation_id")
    item_id = f"WildChat-{conversation_id}" if conversation_id else f"{task}-{number:04d}"
    meta = {key: data[key] for key in WILDCHAT_META if key in data}
    return TaskItem(id=item_id, task=task, prompt=first_user.strip(), category=None, messages=None, meta=meta)


def _messages(value: Any, where: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise TaskError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects")
    messages = []
    for index, message in enumerate(value):
        text = content_text(message.get("content")) if isinstance(message, dict) else None
        if text is None:
            raise TaskError(f"{where}: message {index} must be an object with a 'content' string (or a list of "
                            f"text parts)")
        if message.get("role") not in ROLES:
            raise TaskError(f"{where}: message {index} has role {message.get('role')!r}; expected one of {ROLES}")
        messages.append({"role": message["role"], "content": text})
    if messages[-1]["role"] != "user":
        raise TaskError(f"{where}: the last message must be a user turn, got {messages[-1]['role']!r}")
    problem = roles_problem([message["role"] for message in messages])  # (as the models' chat templates need)
    if problem:
        raise TaskError(f"{where}: 'messages' {problem}")
    for index, message in enumerate(messages[:-1]):  # (the last user turn is the prompt, checked by the caller)
        if not message["content"].strip():
            raise TaskError(f"{where}: message {index} is empty")
        problem = unicode_problem(message["content"])  # the earlier turns reach the models too
        if problem:
            raise TaskError(f"{where}: message {index} is not valid Unicode text ({problem})")
    return messages


def _id(value: Any, where: str, task: str, number: int) -> str:
    if value is None or value == "":
        return f"{task}-{number:04d}"
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise TaskError(f"{where}: 'id' must be a string or an integer, got {type(value).__name__}")
    return str(value)


def _category(value: Any, where: str) -> str | None:
    """A row's category as a string: an integer one (a `datasets` ClassLabel column, as its exports store it) too."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if value is not None and not isinstance(value, str):
        raise TaskError(f"{where}: 'category' must be a string or an integer, got {type(value).__name__}")
    return _text(value, "category", where)


def _text(value: Any, name: str, where: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise TaskError(f"{where}: {name!r} must be a string, got {type(value).__name__}")
    return value
