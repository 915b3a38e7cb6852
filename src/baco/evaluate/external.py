"""Rows of other tools' output files, read by `baco eval` beside baco's own samples (io.py calls this module).

- lm-evaluation-harness `--log_samples` files (`<model>/samples_<task>_<time>.jsonl`): a row per document,
  {"doc_id", "doc", "arguments", "resps", "filtered_resps", "filter", ...}. A generation request's arguments are
  (context, generation settings): {"gen_args_0": {"arg_0": CONTEXT, "arg_1": {...}}} since lm-eval 0.4.3,
  [[CONTEXT, {...}]] before. `resps` holds, per request, its raw generations (several with `repeats`); they are
  read, not `filtered_resps` (an answer extracted by a regex, the first repeat kept: filters make answers to
  score, and diversity is a property of the generations). lm-eval writes a document once per filter, with the same
  `resps`: a file's document is read once. Loglikelihood rows (multiple choice, perplexity) generated nothing.
- OpenAI Batch API files (and vLLM's `run_batch`, which writes the same rows): the input file holds requests
  {"custom_id", "method", "url", "body": {"model", "messages" | "prompt", "n", ...}}, the output file their
  answers {"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}, without the prompt.
  Both files are given, the input before its output: an output row joins the request of its `custom_id` in the
  last input file before it that holds one (so one input file serves the outputs of several models after it,
  and two batches whose custom_ids are alike are `IN_A OUT_A IN_B OUT_B`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from baco.prompts import content_text

LM_EVAL_NAME = re.compile(r"samples_(?P<task>.+)_\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}(?:\.\d+)?\.jsonl?(?:\.gz)?",
                          re.IGNORECASE)
NOT_SETTINGS = ("messages", "prompt", "model", "seed")  # a request's body: what is not its sampling settings


def lm_eval_task(path: Path) -> str | None:
    """The task of an lm-evaluation-harness samples file, from its name (`samples_<task>_<time>.jsonl`, the time
    as lm-eval writes it, `2025-01-31T10-17-01.123456`); None for any other name."""
    match = LM_EVAL_NAME.fullmatch(path.name)
    return match["task"] if match else None


def is_lm_eval_row(row: dict) -> bool:
    return "doc_id" in row and "resps" in row and "arguments" in row


def is_batch_request(row: dict) -> bool:
    """A row of an OpenAI batch input file (a request: no response)."""
    return "custom_id" in row and isinstance(row.get("body"), dict) and "url" in row and "response" not in row


def is_batch_output(row: dict) -> bool:
    """A row of an OpenAI batch output (or error) file."""
    return "custom_id" in row and ("response" in row or "error" in row) and "body" not in row


def last_user_text(turns) -> tuple[str | None, str | None]:
    """The last user turn's text of a chat ([{"role", "content"}, ...]) and None, or None and what is wrong. A
    content may be a string or a list of parts; the text parts are joined by newlines."""
    if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
        return None, "the chat is not a list of {\"role\", \"content\"} turns"
    user = next((t for t in reversed(turns) if t.get("role") == "user"), None)
    if user is None:
        return None, "the chat has no user turn"
    content = content_text(user.get("content"))
    if content is None:
        return None, "the last user turn's content is not text"
    return content, None


def _lm_eval_requests(arguments) -> tuple[list[list] | None, str | None]:
    """A row's requests, each the list of its arguments: from {"gen_args_0": {"arg_0": ..., "arg_1": ...}, ...}
    (lm-eval 0.4.3 and later) or [[arg_0, arg_1], ...] (before)."""
    def numbered(mapping: dict, prefix: str) -> list | None:
        keys = {int(k[len(prefix):]): k for k in mapping if k.startswith(prefix) and k[len(prefix):].isdigit()}
        return [mapping[keys[i]] for i in sorted(keys)] if len(keys) == len(mapping) else None

    if isinstance(arguments, dict):
        requests = numbered(arguments, "gen_args_")
        if requests is not None and all(isinstance(r, dict) for r in requests):
            requests = [numbered(r, "arg_") for r in requests]
            if all(r is not None for r in requests):
                return requests, None
    elif isinstance(arguments, list) and all(isinstance(r, list) for r in arguments):
        return arguments, None
    return None, 'an lm-eval row\'s "arguments" is neither {"gen_args_0": {"arg_0": ...}} nor [[context, ...]]'


def _lm_eval_context(context) -> tuple[str | None, str | None]:
    """A generation request's prompt: its context string; an API model's chat context (lm-eval's JsonChatStr,
    written as [JSON of the chat], or the chat itself) is its last user turn, as for a chat row."""
    if isinstance(context, str):
        return context, None
    if isinstance(context, list) and len(context) == 1 and isinstance(context[0], str):
        try:
            context = json.loads(context[0])
        except json.JSONDecodeError:
            return None, "an lm-eval context is a list holding a string that is not a JSON chat"
    text, problem = last_user_text(context)
    return text, problem and f"an lm-eval chat context: {problem}"


def _is_loglikelihood(requests: list[list], resps: list) -> bool:
    """A row of loglikelihood requests: a generation request's second argument is its settings object, a
    loglikelihood request's is the continuation scored (or it has none: perplexity); its responses are
    [logprob, is_greedy] pairs (written as strings by lm-eval 0.4.3 and later)."""
    if not all(len(r) >= 2 and isinstance(r[1], dict) for r in requests):
        return True
    items = [item for per_request in resps if isinstance(per_request, list) for item in per_request]
    return bool(items) and all(isinstance(item, list) and len(item) == 2 for item in items)


@dataclass
class _Request:
    """A batch input row, kept to be joined with its output row."""
    prompt: str | None
    problem: str | None  # why it has no prompt text
    model: str | None
    settings: str  # JSON of the body without its prompt, model and seed
    where: str
    answered: bool = False
    messages: list | None = None  # a chat request's messages: the conversation its prompt ends (io.conversation_of)


class ExternalShapes:
    """Reads the rows of lm-eval samples files and OpenAI batch files as {"prompt", "generations"} rows.

    One object reads all files of one `read_records` call: batch requests are kept across files, the rest of its
    state is per file (`start_file` ... `end_file`). `shape` is asked only about rows `claims` says are its."""

    def __init__(self, method_from: str = "auto"):
        self.method_from = method_from
        self.requests: dict[str, _Request] = {}  # custom_id -> its request in the last input file read
        self.input_files: dict[str, list[_Request]] = {}
        self.lm_eval_files: dict[tuple[str, str], list[str]] = {}  # (folder, task) -> files read
        self.settings: dict[str, dict[str, str]] = {}  # model -> {settings of requests it answered: where one is}
        self.path: Path | None = None

    def start_file(self, path: Path) -> None:
        self.path = path
        self.task = lm_eval_task(path)
        self.docs: dict[object, tuple[object, str]] = {}  # doc_id -> (filter, where first read)
        self.loglikelihood: list[str] = []  # where each loglikelihood row is
        self.file_requests: dict[str, str] = {}  # custom_id -> where, in this file

    def end_file(self) -> list[str]:
        """The file's warnings not tied to one line."""
        if self.loglikelihood:
            count = len(self.loglikelihood)
            return [f"{self.path}: {count} row{'s' * (count != 1)} skipped (first at {self.loglikelihood[0]}): "
                    f"lm-eval loglikelihood rows hold no generated text (multiple-choice or perplexity tasks; "
                    f"only generate_until tasks can be evaluated)"]
        return []

    def finish(self) -> list[str]:
        """Warnings over all files: batch input files nothing answered, methods pooled from different runs."""
        warnings = [f"{path}: an OpenAI batch input file ({len(requests)} request{'s' * (len(requests) != 1)}) that no "
                    f"output file given after it answers; give its output file after it"
                    for path, requests in self.input_files.items() if not any(r.answered for r in requests)]
        if self.method_from == "file":
            return warnings
        for model, made in self.settings.items():
            if len(made) > 1:
                warnings.append(f"method {model!r} holds OpenAI batch responses to requests with {len(made)} different "
                                f"settings (first at {', '.join(list(made.values())[:3])}): they are pooled as one "
                                f"method; pass --method-from file to evaluate each file as its own method")
        for (folder, task), files in self.lm_eval_files.items():
            if len(files) > 1 and self.method_from == "auto":  # named after their folder (io.file_methods)
                warnings.append(f"lm-eval files {', '.join(files)} are runs of task {task!r} in one folder "
                                f"({folder}): they are pooled as one method, named after the folder; pass "
                                f"--method-from file to evaluate each file as its own method")
        return warnings

    @staticmethod
    def claims(row: dict) -> bool:
        return is_lm_eval_row(row) or is_batch_request(row) or is_batch_output(row)

    def shape(self, row: dict, where: str) -> tuple[dict | None, str | None]:
        """(a {"prompt", "generations"} row, None); (None, None) for a row that holds no responses and is read
        without a line's warning (a batch request, a loglikelihood row, a document again under another lm-eval
        filter); or (None, what is wrong)."""
        if is_lm_eval_row(row):
            return self._lm_eval(row, where)
        if is_batch_request(row):
            return None, self._request(row, where)
        return self._batch_output(row, where)

    def _lm_eval(self, row: dict, where: str) -> tuple[dict | None, str | None]:
        requests, problem = _lm_eval_requests(row["arguments"])
        if problem:
            return None, problem
        resps = row["resps"]
        if not isinstance(resps, list) or len(resps) != len(requests):
            return None, f'an lm-eval row\'s "resps" is not a list of one list per request ({len(requests)})'
        if _is_loglikelihood(requests, resps):
            self.loglikelihood.append(where)
            return None, None
        doc_id, filter_name = row["doc_id"], row.get("filter")
        if isinstance(doc_id, (str, int)) and doc_id in self.docs:
            first_filter, first = self.docs[doc_id]
            if first_filter != filter_name:  # the same generations, filtered another way
                return None, None
            return None, f"lm-eval document {doc_id} was already read at {first} (stored twice)"
        contexts = set()
        generations: list = []
        for arguments, per_request in zip(requests, resps):
            context, problem = _lm_eval_context(arguments[0])
            if problem:
                return None, problem
            contexts.add(context)
            generations += per_request if isinstance(per_request, list) else [per_request]
        if len(contexts) > 1:
            return None, f"an lm-eval row with {len(contexts)} generation requests of different contexts"
        if not generations:
            return None, 'an lm-eval row with no generation in "resps"'
        if isinstance(doc_id, (str, int)):
            self.docs[doc_id] = (filter_name, where)
        if self.task is not None:  # a run of the task, named after its folder (io.file_methods)
            runs = self.lm_eval_files.setdefault((str(self.path.resolve().parent), self.task), [])
            if str(self.path) not in runs:
                runs.append(str(self.path))
        return {"prompt": contexts.pop(), "generations": generations,
                **({"task": self.task} if self.task else {})}, None

    def _request(self, row: dict, where: str) -> str | None:
        """Keeps a batch input row for its output row; what is wrong with it, if anything."""
        custom_id = row["custom_id"]
        if not isinstance(custom_id, str):
            return 'a batch request\'s "custom_id" is not a string'
        if custom_id in self.file_requests:
            return f"batch request {custom_id!r} was already given at {self.file_requests[custom_id]}"
        body = row["body"]
        prompt, problem = _request_prompt(body)
        settings = json.dumps({k: v for k, v in body.items() if k not in NOT_SETTINGS}, sort_keys=True, default=str)
        request = _Request(prompt, problem, body.get("model") if isinstance(body.get("model"), str) else None,
                           settings, where, messages=body.get("messages") if isinstance(body.get("messages"), list)
                           else None)
        self.file_requests[custom_id] = where
        self.requests[custom_id] = request
        self.input_files.setdefault(str(self.path), []).append(request)
        return None

    def _batch_output(self, row: dict, where: str) -> tuple[dict | None, str | None]:
        custom_id = row["custom_id"]
        if not self.requests:
            from baco.evaluate.io import SamplesError  # io imports this module

            raise SamplesError(f"{where}: an OpenAI batch output row (custom_id {custom_id!r}) does not hold its "
                               f"prompt, which is in the batch input file: pass that file too, before this one "
                               f"(baco eval INPUT.jsonl {self.path})")
        request = self.requests.get(custom_id) if isinstance(custom_id, str) else None
        if request is None:
            return None, f"custom_id {custom_id!r} is in no batch input file given before this one"
        request.answered = True
        response = row.get("response") if isinstance(row.get("response"), dict) else {}
        failure = _failure(row, response)
        if failure:
            return None, f"batch request {custom_id!r} failed ({failure})"
        if request.problem:
            return None, f"batch request {custom_id!r} (at {request.where}): {request.problem}"
        body = response.get("body")
        choices = body.get("choices") if isinstance(body, dict) else None
        if not isinstance(choices, list) or not choices or not all(isinstance(c, dict) for c in choices):
            return None, f"the response to batch request {custom_id!r} has no choices (not a completion)"
        choices = sorted(choices, key=lambda c: c["index"] if isinstance(c.get("index"), int) else 0)
        texts = [c["message"].get("content") if isinstance(c.get("message"), dict) else c.get("text")
                 for c in choices]
        model = body.get("model") if isinstance(body.get("model"), str) and body["model"] else request.model
        if model is not None:
            self.settings.setdefault(model, {}).setdefault(request.settings, request.where)
        return {"prompt": request.prompt, "generations": texts, **({"method": model} if model else {}),
                **({"messages": request.messages} if request.messages else {})}, None


def _request_prompt(body: dict) -> tuple[str | None, str | None]:
    """A batch request's prompt text (a chat's last user turn, or a completion's one prompt string) and None, or
    None and what is wrong."""
    if isinstance(body.get("messages"), list):
        return last_user_text(body["messages"])
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:  # the completions API takes a list of prompts too
        prompt = prompt[0]
    if isinstance(prompt, str):
        return prompt, None
    return None, ('its body has no "messages" chat or one "prompt" string (several prompts, token ids, or not a '
                  'completion request)')


def _failure(row: dict, response: dict) -> str | None:
    """Why a batch output row holds no answer (its status is not 200, or its error is set), None when it holds one."""
    status = response.get("status_code")
    error = row.get("error")
    body = response.get("body")
    if error is None and isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
    if status == 200 and error is None:
        return None
    if isinstance(error, dict) and isinstance(error.get("error"), dict):  # vLLM's ErrorResponse
        error = error["error"]
    message = error.get("message") if isinstance(error, dict) else error
    parts = ([f"status {status}"] if status is not None else ["no response"]) + ([str(message)] if message else [])
    return ": ".join(parts)
