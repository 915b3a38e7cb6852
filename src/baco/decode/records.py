"""One sample with per-token provenance, assembled from the loop's StepEvents; JSONL in and out."""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Iterable, Iterator

from baco.decode.loop import Request, StepEvent, occurrences_of
from baco.prompts import Prompt, as_prompt, conversation_problem, prompt_key
from baco.storage import WriterLock
from baco.vocab import continuation_decoder

BASE, ALIGNED, MIX = "base", "aligned", "mix"
TOKEN, SPAN = "token", "span"


@dataclass
class Sample:
    """A generated text and, per token, who wrote it and why (columns of equal length).

    prompt, prompt_index, sample_index: the prompt, its place in the call's prompts, and which of its n
    samples this is (0..n-1). router: the method ("p-punc:0.5"). seed: this sample's own stream seed,
    derived from the call's seed (`sampling["seed"]`), the prompt's text, sample_index and occurrence
    (`decode.loop.row_seed`); the same call seed gives the same sample in any batch and at any call.
    text: the decoded continuation, leading whitespace stripped, cut at the first stop string.
    finish_reason: "stop" (a stop token or stop string) or "length" (max_new_tokens, or the context's end).

    Per token, in order: `token_ids`, `token_texts` (the text each adds to the decoded continuation),
    `sources` (who wrote it: "base", "aligned", or "mix" for the mixtures EFT / proxy / contrast),
    `reasons` (why the router chose the writer: "punct", "base-uncertain", "word-continuation", ...),
    `base_top1_prob`, `base_entropy` (nats), `aligned_top1_prob` and `chosen_prob`.
    `"".join(token_texts)` is the continuation before `text` strips and cuts it: `text` is
    `cut_text("".join(token_texts), stop_strings)` (the base template's end and `sampling["stop"]`; with
    `sampling["min_tokens"]`, only a stop string that ends past the text of that many tokens: `held`); the tokens
    that wrote a stop string stay in the columns.
    `chosen_prob` is the written token's probability under its writer's own distribution
    (temperature 1, before top-p / min-p). The final stop token, if any, is part of `token_ids`
    (its writer decided to end) but not of `text` (its `token_texts` entry is "").
    elapsed_s: seconds from the call's start to this sample's end. sampling: the SamplingParams as a dict,
    with the seed actually used. models: the models' names. `to_dict()` adds num_tokens, base_share and
    tokens_per_s, and holds only JSON types (`write_jsonl`, `Sample.from_dict`).

    `unit` says what one entry of the per-unit columns (`token_texts`, `sources`, `reasons`, the
    statistics) describes: "token" (a shared token, id in `token_ids`) for a same-tokenizer pair, or
    "span" for a cross-tokenizer pair: a piece of text committed as one unit (a character for CharED,
    a word for a router per word, a chosen piece for UniTE), with no shared id (`token_ids` is empty).
    A span's statistics are the models' next-token distributions given the text where it starts, and
    its `chosen_prob` is its probability under the distribution it was drawn from. Each model's own
    tokens of the text are in `base_token_ids` / `aligned_token_ids` (span samples only).

    `occurrence` numbers the copies of a prompt text repeated in one prompt list (0 for the first,
    `decode.loop.occurrences_of`): each copy has its own samples. Rows written before it read as 0.

    `messages`: for a conversation, its messages ({"role", "content"} dicts), `prompt` being its last user
    turn; None (and no "messages" key in `to_dict()`) for a prompt that is a string.
    """

    prompt: str
    prompt_index: int
    sample_index: int
    router: str
    seed: int
    occurrence: int = 0
    text: str = ""
    finish_reason: str = ""
    token_ids: list[int] = field(default_factory=list)
    token_texts: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    base_top1_prob: list[float] = field(default_factory=list)
    base_entropy: list[float] = field(default_factory=list)
    aligned_top1_prob: list[float] = field(default_factory=list)
    chosen_prob: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0
    sampling: dict = field(default_factory=dict)
    models: dict = field(default_factory=dict)
    unit: str = TOKEN
    base_token_ids: list[int] = field(default_factory=list)
    aligned_token_ids: list[int] = field(default_factory=list)
    messages: list[dict] | None = None

    @property
    def key(self) -> str:
        """What the sample's prompt is identified by: its text, or its whole conversation (`prompts.prompt_key`)."""
        return prompt_key(self.messages if self.messages is not None else self.prompt)

    @property
    def num_tokens(self) -> int:
        """Tokens generated; for a span sample, those of the model whose tokenization of the text is longer."""
        if self.unit == SPAN:
            return max(len(self.base_token_ids), len(self.aligned_token_ids))
        return len(self.token_ids)

    @property
    def base_share(self) -> float:
        """Share of tokens (of characters, for a span sample) written by the base model (0 when empty)."""
        return self.share(BASE)

    @property
    def mix_share(self) -> float:
        """Share of tokens (characters) drawn from a mixture of both models (soft methods, UniTE): neither model's
        alone, so a base share of 0 there does not mean the aligned model wrote them."""
        return self.share(MIX)

    def share(self, source: str) -> float:
        """Share of tokens (of characters, for a span sample) whose source is `source` (0 when empty)."""
        if self.unit == SPAN:
            written = sum(len(t) for t in self.token_texts)
            mine = sum(len(t) for t, s in zip(self.token_texts, self.sources) if s == source)
            return mine / written if written else 0.0
        return self.sources.count(source) / len(self.sources) if self.sources else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.num_tokens / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_dict(self) -> dict:
        data = asdict(self)
        data.update(num_tokens=self.num_tokens, base_share=round(self.base_share, 6),
                    tokens_per_s=round(self.tokens_per_s, 3))
        for key in ("base_top1_prob", "base_entropy", "aligned_top1_prob", "chosen_prob"):
            data[key] = [round(v, 6) for v in data[key]]
        if data["messages"] is None:
            del data["messages"]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "Sample":
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def collect(events: Iterable[StepEvent], requests: list[Request], tokenizer, *, router: str,
            stop_strings: tuple[str, ...] = (), stop_ids: frozenset[int] = frozenset(),
            token_texts: list[str] | None = None, started: float | None = None,
            extra: dict | None = None, min_tokens: int = 0) -> Iterator[Sample]:
    """Turn a stream of StepEvents into Samples, yielding each one as soon as its row finishes (`min_tokens`: the
    sampling's, the tokens whose text no stop string may end in)."""
    started = time.perf_counter() if started is None else started
    samples = [Sample(prompt=r.prompt, prompt_index=r.prompt_index, sample_index=r.sample_index,
                      router=router, seed=r.seed, occurrence=r.occurrence, messages=r.messages, **(extra or {}))
               for r in requests]
    for event in events:
        columns = zip(event.rows, event.tokens.tolist(), event.use_base.tolist(), event.reasons,
                      event.base_top1_prob.tolist(), event.base_entropy.tolist(),
                      event.aligned_top1_prob.tolist(), event.chosen_prob.tolist())
        for row, token, use_base, reason, b_top1, b_ent, a_top1, chosen in columns:
            s = samples[row]
            s.token_ids.append(token)
            # a stop token's text is not part of the sample's text; its writer is still recorded
            s.token_texts.append(token_texts[token] if token_texts and token not in stop_ids else "")
            s.sources.append(MIX if event.mixed else BASE if use_base else ALIGNED)
            s.reasons.append(reason)
            s.base_top1_prob.append(b_top1)
            s.base_entropy.append(b_ent)
            s.aligned_top1_prob.append(a_top1)
            s.chosen_prob.append(chosen)
        for row, reason in event.finished.items():
            s = samples[row]
            s.finish_reason = reason
            s.elapsed_s = time.perf_counter() - started
            s.token_texts = piece_texts(s.token_ids, tokenizer, stop_ids, s.token_texts)
            s.text = final_text(s.token_ids, tokenizer, stop_strings, stop_ids, held(s.token_texts, min_tokens))
            yield s


def collect_spans(events: Iterable, requests: list[Request], *, router: str, stop_strings: tuple[str, ...] = (),
                  started: float | None = None, extra: dict | None = None) -> Iterator[Sample]:
    """Turn the cross-tokenizer loop's SpanEvents into span Samples, each yielded as its row finishes."""
    started = time.perf_counter() if started is None else started
    samples = [Sample(prompt=r.prompt, prompt_index=r.prompt_index, sample_index=r.sample_index, router=router,
                      seed=r.seed, occurrence=r.occurrence, unit=SPAN, messages=r.messages, **(extra or {}))
               for r in requests]
    for event in events:
        s = samples[event.row]
        s.token_texts.append(event.text)
        s.sources.append(event.source)
        s.reasons.append(event.reason)
        s.base_top1_prob.append(event.base_top1_prob)
        s.base_entropy.append(event.base_entropy)
        s.aligned_top1_prob.append(event.aligned_top1_prob)
        s.chosen_prob.append(event.chosen_prob)
        if event.finished:
            s.finish_reason = event.finished
            s.elapsed_s = time.perf_counter() - started
            s.base_token_ids, s.aligned_token_ids = event.base_tokens, event.aligned_tokens
            s.text = cut_text("".join(s.token_texts), stop_strings)
            yield s


# left context (in tokens) decoded with each token to find the text it adds; enough for a
# tokenizer's merges and multi-byte characters, and keeps the cost linear in the sample's length
PIECE_CONTEXT = 8


def piece_texts(token_ids: list[int], tokenizer, stop_ids: frozenset[int], fallback: list[str]) -> list[str]:
    """The text each token adds to the decoded sample, so that the pieces join to exactly the decoded text.

    A character split over several byte tokens belongs to the token that completes it (the earlier
    ones add ""). Stop tokens add "". Each token's piece is the difference between decoding a few
    tokens of left context with and without it (linear in the length); if those pieces do not join
    to the full decode, the exact method is used: `prefix_pieces`.
    """
    pieces = _windowed_pieces(token_ids, tokenizer, stop_ids)
    kept = [t for t in token_ids if t not in stop_ids]
    if "".join(pieces) == continuation_decoder(tokenizer)(kept):
        return pieces
    return prefix_pieces(token_ids, tokenizer, stop_ids, fallback)


class PieceDecoder:
    """The text each token adds, one token at a time, in linear time (what a stream shows as it goes).

    A token's piece is what decoding it with PIECE_CONTEXT tokens of left context adds. A token that
    leaves a character incomplete adds "" and the token that completes it carries the character;
    stop tokens add "". `add(token, last=True)` also gives whatever is still pending, so that the
    pieces join to the decoded text (for tokenizers whose windowed decodes extend each other, which
    `piece_texts` checks; where they do not, the last piece makes up the difference to the full decode).
    """

    def __init__(self, tokenizer, stop_ids: frozenset[int]):
        self.tokenizer, self.stop_ids = tokenizer, stop_ids
        self._decode = continuation_decoder(tokenizer)  # the first token keeps its space (Llama-2's decoder)
        self.kept: list[int] = []  # the ids that are not stop tokens
        self.done = 0  # kept[:done] are accounted for in the pieces so far
        self.text = ""  # the pieces so far, joined

    def add(self, token: int, *, last: bool = False) -> str:
        """The text `token` adds; `last`: no other token follows (a pending character is flushed)."""
        piece = ""
        if token not in self.stop_ids:
            self.kept.append(token)
            start = max(0, self.done - PIECE_CONTEXT)
            before, after = self._decode(self.kept[start:self.done]), self._decode(self.kept[start:])
            if after.startswith(before) and (last or not after.endswith("\ufffd")):
                piece, self.done = after[len(before):], len(self.kept)
        if last and self.done < len(self.kept):  # still pending: settle against the full decode
            full = self._decode(self.kept)
            piece += full[len(self.text) + len(piece):] if full.startswith(self.text + piece) else ""
            self.done = len(self.kept)
        self.text += piece
        return piece


def _windowed_pieces(token_ids: list[int], tokenizer, stop_ids: frozenset[int]) -> list[str]:
    decoder = PieceDecoder(tokenizer, stop_ids)
    return [decoder.add(token, last=token not in stop_ids and (k + 1 == len(token_ids) or token_ids[k + 1] in stop_ids))
            for k, token in enumerate(token_ids)]


def prefix_pieces(token_ids: list[int], tokenizer, stop_ids: frozenset[int], fallback: list[str]) -> list[str]:
    """The exact method (quadratic: decodes every prefix). Where a tokenizer's prefix decodes do not
    extend each other, the token's own vocabulary text (`fallback`) is used."""
    pieces, shown, decode = [], "", continuation_decoder(tokenizer)
    for k, token in enumerate(token_ids):
        if token in stop_ids:
            pieces.append("")
            continue
        ids = [t for t in token_ids[: k + 1] if t not in stop_ids]
        text = decode(ids)
        if text.endswith("\ufffd") and k + 1 < len(token_ids) and token_ids[k + 1] not in stop_ids:
            pieces.append("")  # an incomplete character: the next token may finish it
            continue
        if not text.startswith(shown):
            pieces.append(fallback[k] if k < len(fallback) else "")
            continue
        pieces.append(text[len(shown):])
        shown = text
    return pieces


def final_text(token_ids: list[int], tokenizer, stop_strings: tuple[str, ...], stop_ids: frozenset[int],
               after: int = 0) -> str:
    """Decode, drop a trailing stop token, cut at the first stop string (ending past character `after`: `held`),
    strip leading whitespace.

    Leading whitespace comes from the base model's first token after "Answer:" (" Paris");
    it is kept in the token stream that both models read and removed from the text only.
    """
    ids = token_ids[:-1] if token_ids and token_ids[-1] in stop_ids else token_ids
    return cut_text(continuation_decoder(tokenizer)(ids), stop_strings, after)


def stop_at(text: str, stop_strings: tuple[str, ...], after: int = 0) -> int | None:
    """Where the first stop string that ends past character `after` of `text` starts; None if none does."""
    found = [text.find(s, max(0, after - len(s) + 1)) for s in stop_strings if s]
    return min((i for i in found if i >= 0), default=None)


def held(token_texts: list[str], min_tokens: int) -> int:
    """Characters of the text written by a sample's first `min_tokens` tokens: as in vLLM, a stop string counts only
    where it ends past them (they are held back from ending the sample; `SamplingParams.min_tokens`)."""
    return len("".join(token_texts[:min_tokens]))


def cut_text(text: str, stop_strings: tuple[str, ...], after: int = 0) -> str:
    """Cut at the first stop string (that ends past character `after`) and strip leading whitespace."""
    cut = stop_at(text, stop_strings, after)
    return (text if cut is None else text[:cut]).lstrip()


def write_jsonl(samples: Iterable[Sample], handle: IO[str]) -> int:
    """Append samples to an open text file, one JSON object per line (one write each), flushed per line."""
    count = 0
    for s in samples:
        handle.write(json.dumps(s.to_dict(), ensure_ascii=False) + "\n")
        handle.flush()
        count += 1
    return count


# the fields every sample row has, whichever baco wrote it (rows written before ids have no `id`)
SAMPLE_FIELDS = frozenset({"prompt", "prompt_index", "sample_index", "router", "seed"})


def is_sample_row(row) -> bool:
    """A row of a `baco generate --out` file."""
    return isinstance(row, dict) and SAMPLE_FIELDS <= set(row)


SAMPLE_ROW_START = b'{"prompt": '  # how every sample row begins (`Sample.to_dict`'s first field, json.dumps)


def foreign_row(scan) -> str | None:
    """`file:line: ...` of a scanned file's first complete row that is not a sample (None: every row is one)."""
    for number, row in scan.rows:
        if not is_sample_row(row):
            return f"{scan.path}:{number}: not a baco sample (needs {', '.join(sorted(SAMPLE_FIELDS))})"
    return None


def read_jsonl(path: str | Path) -> list[Sample]:
    """The samples of a `baco generate --out` file, each once; a torn last line is skipped with a warning,
    any other unreadable line is an error naming it."""
    from baco.errors import BacoError
    from baco.storage import scan_jsonl

    scan = scan_jsonl(path)
    if not scan.path.is_file():
        raise BacoError(f"samples file {str(path)!r} does not exist")
    if scan.corrupt:
        raise BacoError(scan.problems()[0])
    if scan.torn:
        warnings.warn(scan.problems()[-1] + "; skipped", stacklevel=2)
    if problem := foreign_row(scan):
        raise BacoError(problem)
    samples, seen = [], set()
    for number, row in scan.rows:
        if isinstance(row.get("id"), str):  # rows written before ids have none
            if row["id"] in seen:
                warnings.warn(f"{path}:{number}: sample {row['id']} is stored twice; read once", stacklevel=2)
                continue
            seen.add(row["id"])
        samples.append(Sample.from_dict(row))
    return samples


class SampleRows:
    """The lines `baco generate --out` writes: each sample's fields with its stable id (`id_of`, from `identity`:
    everything that decides a sample) and, when given, its prompts file row's id. Where they go is a subclass's:
    a file (`SampleFile`) or a stream (`SampleStream`)."""

    def __init__(self, path: str | os.PathLike, identity: dict):
        self.path, self.identity = Path(path), identity
        self._out = None

    def id_of(self, key: str, prompt_index: int, sample_index: int, seed: int, occurrence: int = 0) -> str:
        """A sample's stable id; `key` is its prompt's text, or its conversation's key (`prompts.prompt_key`)."""
        from baco.storage import stable_id

        # the first copy's id leaves the occurrence out: the id it had before copies were told apart
        copy = {"occurrence": occurrence} if occurrence else {}
        return stable_id({**self.identity, "seed": seed, "prompt": key, "prompt_index": prompt_index,
                          "sample_index": sample_index, **copy})

    def row(self, sample: Sample, item_id: str | None = None) -> dict:
        """The line stored for a sample: its fields, its id and, when given, its prompts file row's id."""
        row = sample.to_dict()
        # the run's seed (sample.seed is the row's own stream seed, derived from it)
        row["id"] = self.id_of(sample.key, sample.prompt_index, sample.sample_index, sample.sampling.get("seed"),
                               sample.occurrence)
        if item_id is not None:
            row["item_id"] = item_id
        return row

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> "SampleRows":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class SampleFile(SampleRows):
    """`baco generate --out FILE`: samples appended, each with a stable `id`; nothing is ever truncated.

    The id hashes everything that decides a sample: router, sampling settings and seed, the models
    (as named), the prompt format, the prompt, its (prompt, sample) index and, for a repeated prompt's
    later copies, its occurrence. Samples whose id is already in the file are not generated again, so
    rerunning a killed `--seed S` command completes the file instead of doubling it; nor are those
    stored at another prompt index (the prompts were reordered or one was added: a sample depends on its
    prompt's text and occurrence, not its place). A run with another seed or settings appends new samples.

    One writer: the file's lock (`.FILE.lock` next to it, `storage.WriterLock`) is taken before the file
    is read and held until `close()`, so a second run on the same file is refused instead of making the
    same samples again. The file is opened (and a torn last line repaired) only when the first sample is
    written. A file that is not one of samples is refused before anything is done: one with lines that are
    not JSON, with a JSON row that is not a sample (another prompts file, a JSON array), or whose unfinished
    last line follows no sample row (a text without its final newline is not a row cut off by a kill:
    dropping it would lose it).
    """

    def __init__(self, path: str | os.PathLike, identity: dict):
        super().__init__(path, identity)
        self._lock = out_lock(self.path).acquire()
        try:
            self._read()
        except BaseException:
            self._lock.release()
            raise

    def _read(self) -> None:
        from baco.errors import OutputError
        from baco.storage import foreign_tail, scan_jsonl

        scan = scan_jsonl(self.path)
        problem = (scan.problems()[0] if scan.corrupt else foreign_row(scan)
                   or foreign_tail(scan, is_sample_row, SAMPLE_ROW_START))
        if problem:
            raise OutputError(f"--out {str(self.path)!r} is not a JSON Lines samples file ({problem}); "
                              f"baco appends only to such a file: choose another")
        self.stored = {row["id"] for _, row in scan.rows if isinstance(row, dict) and isinstance(row.get("id"), str)}
        # (prompt key, occurrence, sample index, prompt index, id) of each stored sample: a sample depends on
        # its prompt (text or conversation) and occurrence, not on where the prompt stood in the list
        # (`decode.loop.row_seed`), so a rerun whose prompts were reordered or had one added must still find it
        self._rows = [(key, row.get("occurrence", 0), row["sample_index"], row["prompt_index"], row["id"])
                      for _, row in scan.rows
                      if isinstance(row, dict) and isinstance(row.get("id"), str)
                      and isinstance(row.get("prompt_index"), int) and isinstance(row.get("sample_index"), int)
                      and isinstance(row.get("occurrence", 0), int) and (key := stored_key(row)) is not None]

    def done(self, prompts: list[Prompt], n: int, seed: int | None) -> set[tuple[int, int]]:
        """(prompt index, sample index) of the samples already in the file (none without a fixed seed)."""
        if seed is None or not self.stored:
            return set()
        # a stored sample made with these settings and this seed, at whatever prompt index it was stored
        made = {(key, c, k) for key, c, k, i, sid in self._rows if self.id_of(key, i, k, seed, c) == sid}
        keys = [prompt_key(as_prompt(prompt)) for prompt in prompts]
        return {(i, k) for i, (key, c) in enumerate(zip(keys, occurrences_of(prompts))) for k in range(n)
                if self.id_of(key, i, k, seed, c) in self.stored or (key, c, k) in made}

    def append(self, sample: Sample, item_id: str | None = None) -> None:
        """Write one sample with its id; `item_id` (the prompts file row's own id), when given, is stored with it
        (not hashed into the id: it names the row, it does not decide the sample)."""
        from baco.storage import JsonlAppender

        if self._out is None:
            self._out = JsonlAppender(self.path)
            self._lock.hold_file()  # the file may be new: from now on every name of it finds it locked
        self._out.append(self.row(sample, item_id))

    def close(self) -> None:
        """Close the file and release its lock."""
        try:
            if self._out is not None:
                self._out.close()
        finally:
            self._lock.release()


class SampleStream(SampleRows):
    """`baco generate --out -` (stdout) or a pipe: the rows a `SampleFile` stores, written and flushed one line per
    sample as each finishes. Nothing is read back (a stream holds no earlier samples to skip) and nothing is
    locked (a pipe has one reader, not a file to keep whole)."""

    def append(self, sample: Sample, item_id: str | None = None) -> None:
        if self._out is None:
            self._out = sys.stdout if str(self.path) == "-" else open(self.path, "w", encoding="utf-8")
        self._out.write(json.dumps(self.row(sample, item_id), ensure_ascii=False) + "\n")
        self._out.flush()

    def close(self) -> None:
        if self._out is not None and self._out is not sys.stdout:
            self._out.close()


def stored_key(row: dict) -> str | None:
    """The prompt key of a stored sample row (`Sample.key`): its conversation's, else its prompt text; None for a
    row that has neither."""
    messages = row.get("messages")
    if messages is not None:
        return prompt_key(messages) if conversation_problem(messages) is None else None
    return row["prompt"] if isinstance(row.get("prompt"), str) else None


def stored_backend(path: str | os.PathLike, base: str, aligned: str) -> str | None:
    """The one backend that made the samples of this pair (as named) already in a `--out` file, or None (none
    stored, or several). Unreadable lines are left to `SampleFile`, which names them."""
    from baco.storage import scan_jsonl

    used = {row["models"].get("backend", "hf") for _, row in scan_jsonl(path).rows
            if isinstance(row, dict) and isinstance(row.get("models"), dict)
            and (row["models"].get("base"), row["models"].get("aligned")) == (base, aligned)}
    return used.pop() if len(used) == 1 else None


def out_lock(path: str | os.PathLike) -> WriterLock:
    """The one-writer lock of a `--out` samples file: hidden files next to it (`.NAME.lock` and its holder,
    `.NAME.lock-holder.json`), so that globs and listings of the folder (`*.jsonl`) do not pick them up.
    Next to the file a symbolic link leads to, so that `--out LINK` and `--out TARGET` take one lock; and
    on the file itself once it exists (`WriterLock.data_file`), so that two hard links of it take one lock."""
    path = Path(path)
    target = path.resolve()
    return WriterLock(target.with_name(f".{target.name}.lock"), target.with_name(f".{target.name}.lock-holder.json"),
                      in_use=f"--out {str(path)!r} is in use by another baco generate",
                      why="Two runs appending to one file would make and store the same samples twice",
                      data_file=target)
