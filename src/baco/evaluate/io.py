"""Read responses to evaluate from JSONL: `baco generate` samples or any tool's {"prompt", "response"} rows.

Accepted rows (one JSON object per line):
- a `baco generate` sample: prompt, text, router, sample_index, ...
- {"prompt": ..., "response": ...} (also "text", "completion", "output"), optional "method", "task"
- {"prompt": ..., "generations": [...]} (NoveltyBench's format; also "responses"), one row per prompt
- a chat row {"messages": [..., {"role": "user", ...}, {"role": "assistant", ...}]} (HF chat datasets,
  OpenAI's fine-tuning files): the last user turn is the prompt, the reply after it the response
- an Alpaca row {"instruction", "input", "output"}: the instruction (and its input) is the prompt
- lm-evaluation-harness `--log_samples` rows, and OpenAI / vLLM batch output rows joined with the batch input
  file given before them (external.py)

Method of a row: a `baco sweep` sample's configuration ("config": router, knob and sampling, e.g.
`base@temperature=0.7`), else its "router" field, else its "method" field, else the file name (without
suffix; files of one name in two folders are told apart by their folders: `a/samples`, `b/samples`);
a file given twice is read once. A gzip file (`samples.jsonl.gz`) is read decompressed. Samples of one method name made with different sampling settings or
models (two `baco generate` runs of one router at two temperatures) are pooled, with a warning that
says how to keep them apart.
Task: its "task" field, else `default_task`. Seed: a `baco sweep` sample's cell seed (`sweep_seed`),
so that the runner evaluates each seed apart; other rows have none. A bad line (not JSON, no prompt, no response) is
skipped with a warning naming file and line; undecodable bytes are replaced (with a warning), so
one bad line never loses the rest of the file. A last line cut off mid-write (a killed run) is
reported as torn. A baco sample whose `id` (its stable sample id) was already read, in this file
or an earlier one, is the same sample stored twice: it is counted once, with a warning.
"""

from __future__ import annotations

import functools
import gzip
import json
import zlib
from dataclasses import dataclass
from pathlib import Path

from baco.errors import BacoError
from baco.evaluate.external import ExternalShapes, lm_eval_task
from baco.prompts import Prompt, as_prompt, content_text, conversation_problem, prompt_key
from baco.storage import same_file

RESPONSE_FIELDS = ("text", "response", "completion", "output")
LIST_FIELDS = ("generations", "responses")
METHOD_FROM = ("auto", "field", "file")


class SamplesError(BacoError, ValueError):
    """A samples file is missing, unreadable or holds no usable row."""


@dataclass(frozen=True)
class Record:
    task: str
    method: str
    prompt: str
    response: str
    order: tuple  # (sample_index or position in the file, position) : responses keep their order
    where: str  # "file:line"
    seed: int | None = None  # the seed of a `baco sweep` sample's cell (`sweep_seed`); None for other rows
    # a conversation of several messages that `prompt` ends (its last user turn): ((role, content), ...); None for
    # a prompt that is a string. Two conversations ending in the same turn are two prompts (`key`).
    conversation: tuple | None = None

    @property
    def messages(self) -> list[dict] | None:
        """The conversation as {"role", "content"} messages, or None."""
        if self.conversation is None:
            return None
        return [{"role": role, "content": content} for role, content in self.conversation]

    @property
    def asked(self) -> Prompt:
        """What the response answers, as a scorer reads it: the prompt, or its conversation."""
        return self.messages or self.prompt

    @functools.cached_property  # (asked for at every grouping and score lookup; a conversation's is written out)
    def key(self) -> str:
        """What the record's prompt is identified by: its text, or its whole conversation (`prompts.prompt_key`)."""
        return prompt_key(self.asked)


def conversation_of(row: dict) -> tuple | None:
    """The conversation a row's prompt ends: its "messages" when they are one of several messages (a `baco generate`
    sample of a conversation; a chat row's turns before the reply), else None."""
    messages = row.get("messages")
    if not isinstance(messages, list) or conversation_problem(messages) is not None:
        return None
    messages = as_prompt(messages)
    return None if isinstance(messages, str) else tuple((m["role"], m["content"]) for m in messages)


def _method(row: dict, file_method: str, method_from: str) -> str | None:
    if method_from == "file":
        return file_method
    for key in ("config", "router", "method") if _made_by_baco(row) else ("router", "method"):
        if isinstance(row.get(key), str) and row[key].strip():
            return row[key].strip()
    return file_method if method_from == "auto" else None


def file_methods(paths: list[Path], *, lm_eval_by_folder: bool = False) -> dict[Path, str]:
    """The method each file's rows are named after: its name without suffix, and where two files share that
    name (`a/samples.jsonl`, `b/samples.jsonl`) with as many of its folders as tell them apart (`a/samples`),
    so that two files are never pooled as one method by accident of their names. With `lm_eval_by_folder`, an
    lm-evaluation-harness samples file (`<model>/samples_<task>_<time>.jsonl`) is named as its folder is (lm-eval
    names it after the model), so that the tasks of one run are one method."""
    named_as = {path: path.resolve().parent if lm_eval_by_folder and lm_eval_task(path) else path for path in paths}
    names = _names(list(dict.fromkeys(named_as.values())))
    return {path: names[named_as[path]] for path in paths}


def _names(paths: list[Path]) -> dict[Path, str]:
    """Each path's name without suffix (a folder's whole name), with as many folders as tell equal names apart."""
    folders_of = {path: path.resolve().parts[1:-1] for path in paths}  # without the root

    def named(path: Path, folders: int) -> str:
        return "/".join(folders_of[path][len(folders_of[path]) - folders:] + (_stem(path),))

    by_stem: dict[str, list[Path]] = {}
    for path in paths:
        by_stem.setdefault(_stem(path), []).append(path)
    names = {}
    for alike in by_stem.values():
        deepest = max(len(folders_of[path]) for path in alike)
        folders = next((k for k in range(deepest + 1) if len({named(path, k) for path in alike}) == len(alike)), None)
        for path in alike:  # x.jsonl and x.json in one folder: their whole names
            names[path] = str(path) if folders is None else named(path, folders)
    return names


def _stem(path: Path) -> str:
    """A file's name without its suffix, and without .gz first (`base.jsonl.gz`: `base`); a folder's name."""
    name = path.name
    if path.is_dir():
        return name
    return Path(name[:-3] if name.lower().endswith(".gz") else name).stem


def _distinct_files(paths: list[Path], warnings: list[str]) -> list[Path]:
    """The paths, each file once: a file named twice (a repeated argument, a link to it) would count its rows
    twice and is read once, with a warning."""
    kept: list[Path] = []
    for path in paths:
        first = next((seen for seen in kept if same_file(seen, path)), None)
        if first is None:
            kept.append(path)
        elif str(first) == str(path):
            warnings.append(f"{path} is given twice; read once")
        else:
            warnings.append(f"{path} is the file {str(first)!r} again; read once")
    return kept


def other_shapes(row: dict) -> tuple[dict, str | None]:
    """A row without "prompt" in another common shape, as a {"prompt", "response"} row: (row, None), or (row,
    what is wrong with it). A chat row ({"messages": [..., {"role": "user"}, {"role": "assistant"}]}: HF chat
    datasets, OpenAI's fine-tuning files) is the last user turn and the assistant's reply after it; an Alpaca
    row ({"instruction", "input", "output"}) is the instruction, with its input after a blank line when given.
    Other rows are returned as they are (the caller says what a row needs)."""
    if isinstance(row.get("messages"), list):
        turns = [{**t, "content": content_text(t.get("content"))} if isinstance(t, dict) else t
                 for t in row["messages"]]  # (a content of OpenAI text parts is their text, joined by newlines)
        if not all(isinstance(t, dict) and isinstance(t["content"], str) for t in turns):
            return row, 'a "messages" turn is not an object with a string "content"'
        roles = [t.get("role") for t in turns]
        if len(turns) < 2 or roles[-1] != "assistant" or roles[-2] != "user":
            return row, 'a chat row\'s "messages" must end with a user turn and the assistant\'s reply to it'
        # (its "messages" become the conversation asked: the turns up to the last user turn)
        return {**row, "prompt": turns[-2]["content"], "response": turns[-1]["content"], "messages": turns[:-1]}, None
    if isinstance(row.get("instruction"), str):
        extra = row.get("input")
        prompt = row["instruction"] + (f"\n\n{extra}" if isinstance(extra, str) and extra.strip() else "")
        return {**row, "prompt": prompt}, None
    return row, None


def sweep_seed(row: dict) -> int | None:
    """The seed of a `baco sweep` sample's cell (its run seed, `sampling.seed`), None for any other row.

    A sweep's seeds are part of its design (`seeds: [0, 1, 2]`): each is evaluated apart. A `baco
    generate` row records its run's seed too (`sampling.seed`; its own `seed` is the row's stream
    seed, derived from it) but not whether that seed was fixed or drawn at random, so generate runs
    appended to one file stay pooled as one method's samples."""
    sampling = row.get("sampling")
    seed = sampling.get("seed") if isinstance(row.get("cell"), str) and isinstance(sampling, dict) else None
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else None


def _made_by_baco(row: dict) -> bool:
    """A sample written by baco (a file of `baco generate --out`, `baco sweep` or `write_jsonl`): it records its
    sampling settings."""
    return is_baco_sample(row) or (isinstance(row.get("sampling"), dict) and "token_ids" in row)


def is_baco_sample(row: dict) -> bool:
    """A row written by `baco generate` or `baco sweep`, whose `id` names one sample."""
    return isinstance(row.get("id"), str) and isinstance(row.get("sample_index"), int) and "token_ids" in row


def _not_a_file(path: Path) -> str:
    """Why a samples path cannot be read, with the file a folder holds when it is a sweep's run directory."""
    if not path.is_dir():
        return "does not exist"
    inside = path / "samples.jsonl"
    return "is a folder" + (f"; its samples are in {str(inside)!r}" if inside.is_file() else "; give a JSONL file")


def _read_lines(path: Path) -> list[bytes]:
    """A file's lines; a gzip file (`samples.jsonl.gz`, found by its first bytes) is read decompressed."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise SamplesError(f"cannot read {path}: {error.strerror or error}") from None
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as error:
            raise SamplesError(f"{path}: a gzip file that cannot be decompressed ({error}); a file cut off "
                               f"while it was written reads only as far as `gzip -dc` gets") from None
    return data.split(b"\n")


def read_records(paths: list[str | Path], *, method_from: str = "auto",
                 default_task: str = "default") -> tuple[list[Record], list[str]]:
    """All usable rows of all files, and a warning per skipped or repaired line."""
    if method_from not in METHOD_FROM:
        raise SamplesError(f"method_from must be one of {METHOD_FROM}, got {method_from!r}")
    records: list[Record] = []
    warnings: list[str] = []
    ids: dict[str, str] = {}  # sample id -> where it was first read
    made_by: dict[str, dict[str, str]] = {}  # method -> {its samples' sampling and models (no seed): first line}
    position = 0
    for path in map(Path, paths):
        if not path.is_file():
            raise SamplesError(f"samples file {str(path)!r} " + _not_a_file(path))
    files = _distinct_files(list(map(Path, paths)), warnings)
    named = file_methods(files, lm_eval_by_folder=method_from != "file")
    external = ExternalShapes(method_from)
    for path in files:
        lines = _read_lines(path)
        external.start_file(path)
        for number, raw in enumerate(lines, start=1):
            where = f"{path}:{number}"
            if not raw.strip():
                continue
            torn = number == len(lines)  # the last line has no newline: a write may have been cut off
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                line = raw.decode("utf-8", errors="replace")
                warnings.append(f"{where}: not valid UTF-8; undecodable bytes replaced by U+FFFD")
            if number == 1:
                line = line.removeprefix("\ufeff")  # a byte-order mark written by some editors
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                warnings.append(f"{where}: torn last line ({len(raw)} bytes, cut off mid-write by an interrupted "
                                f"run); skipped" if torn else
                                f"{where}: not valid JSON ({error.msg} at column {error.colno}); line skipped")
                continue
            if isinstance(row, dict) and "prompt" not in row:
                row, problem = external.shape(row, where) if external.claims(row) else other_shapes(row)
                if problem:
                    warnings.append(f"{where}: {problem}; line skipped")
                    continue
                if row is None:  # a batch request (joined with its output row later), a loglikelihood row ...
                    continue
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
                warnings.append(f'{where}: expected an object with a "prompt" string (or "instruction", or a chat '
                                f'"messages" list); line skipped')
                continue
            if is_baco_sample(row):  # other tools' "id" fields (a prompt's id, say) are not sample ids
                if row["id"] in ids:
                    warnings.append(f"{where}: sample {row['id']} was already read at {ids[row['id']]} "
                                    f"(stored twice); counted once")
                    continue
                ids[row["id"]] = where
            method = _method(row, named[path], method_from)
            if method is None:
                warnings.append(f'{where}: no "router" or "method" field (--method-from field); line skipped')
                continue
            if _made_by_baco(row):
                sampling = row["sampling"] if isinstance(row.get("sampling"), dict) else {}  # hand-made rows may lack it
                settings = {k: v for k, v in sampling.items() if k != "seed"}
                made_by.setdefault(method, {}).setdefault(
                    json.dumps({"sampling": settings, "models": row.get("models")}, sort_keys=True, default=str), where)
            task = row["task"] if isinstance(row.get("task"), str) and row["task"] else default_task
            key = next((k for k in LIST_FIELDS if isinstance(row.get(k), list)), None)
            listed = key is not None
            if listed and not row[key]:
                warnings.append(f'{where}: empty "{key}" list; line skipped')
                continue
            if not listed:
                key = next((k for k in RESPONSE_FIELDS if k in row), None)
                if key is None:
                    warnings.append(f"{where}: no response field ({', '.join(RESPONSE_FIELDS + LIST_FIELDS)}); "
                                    f"line skipped")
                    continue
            responses = row[key] if listed else [row[key]]
            index = row.get("sample_index")
            for offset, response in enumerate(responses):
                what = f'"{key}"[{offset}]' if listed else f'"{key}"'
                if response is None:
                    warnings.append(f"{where}: {what} is null; read as an empty response")
                    response = ""
                if not isinstance(response, str):
                    warnings.append(f"{where}: {what} is {type(response).__name__}, not a string; "
                                    + ("skipped" if listed else "line skipped"))
                    continue
                ordered = isinstance(index, int) and not isinstance(index, bool) and not listed
                records.append(Record(task, method, row["prompt"], response, (index if ordered else offset, position),
                                      where, sweep_seed(row), conversation_of(row)))
                position += 1
        warnings += external.end_file()
    warnings += external.finish()
    for method, made in made_by.items():
        if len(made) > 1 and method_from != "file":
            warnings.append(f"method {method!r} holds samples made with {len(made)} different sampling settings or "
                            f"models (first at {', '.join(list(made.values())[:3])}): they are pooled as one method; "
                            f"pass --method-from file to evaluate each file as its own method")
    if not records:
        raise SamplesError("no usable rows in " + ", ".join(map(str, paths))
                           + (f" ({len(warnings)} lines skipped; first: {warnings[0]})" if warnings else ""))
    return records, warnings


def group_records(records: list[Record]) -> dict[tuple[str, str, int | None, str], list[Record]]:
    """(task, method, seed, prompt key) -> that prompt's responses in sample order; groups in order of first
    appearance. The key is the prompt's text, or for a conversation its messages (`Record.key`)."""
    groups: dict[tuple[str, str, int | None, str], list[Record]] = {}
    for record in records:
        groups.setdefault((record.task, record.method, record.seed, record.key), []).append(record)
    return {key: sorted(rows, key=lambda r: r.order) for key, rows in groups.items()}
