"""Quality scores kept on disk, so re-evaluating a sweep (another seed subset, one more metric,
a killed evaluation) does not score the same (prompt, response) with the same model twice.

One JSON line per score: {"key": sha256(scorer, prompt, response), "value": float | null}. The
scorer names the metric and everything that changes its values (its model, the embedding dtype,
the device, the cache format's version). Lines are appended as each batch is scored, so a killed
evaluation keeps what it finished; a cut last line is ignored. Each batch is one `O_APPEND` write of whole
lines, so two evaluations appending to one cache at once (`baco eval --score-cache` takes no lock) never
interleave inside a line. Delete the file after changing a
metric's code: the cache cannot see code.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from baco.errors import OutputError
from baco.evaluate.registry import MetricSpec
from baco.evaluate.resources import EvalOptions
from baco.storage import JsonlAppender, same_file, scan_jsonl

VERSION = 1
MISS = object()

# which EvalOptions fields change the values of a metric that needs this resource
_OPTIONS_OF_NEED = {
    "embedder": ("embedding_model", "embedding_dtype"),
    "judge": ("judge_model",),
    "fluency_lm": ("fluency_model",),
    "reward_model": ("reward_model",),
}


def scorer_identity(spec: MetricSpec, options: EvalOptions) -> str:
    """A string naming the metric and every option its values depend on."""
    fields = sorted({name for need in spec.needs for name in _OPTIONS_OF_NEED.get(need, ())})
    return json.dumps({"metric": spec.name, "version": VERSION, "device": options.device,
                       **{name: getattr(options, name) for name in fields}}, sort_keys=True)


def is_cache_row(row) -> bool:
    return isinstance(row, dict) and isinstance(row.get("key"), str) and "value" in row


class ScoreCache:
    """The scores of one cache file. A file that is not a score cache is refused (`OutputError`) rather than
    appended to: one with a JSON row that is not a score (a samples file), or with lines and no score at all
    (a text file). Lines that are not JSON beside scores are a kill's (a line cut inside a character, whose
    newline the next append added), and a lone unfinished line may be a killed first write: both are kept."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.values: dict[str, float | None] = {}
        scan = scan_jsonl(self.path)
        foreign = next((number for number, row in scan.rows if not is_cache_row(row)), None)
        if foreign is not None or (scan.corrupt and not scan.rows):
            where = f"{self.path}:{foreign}: not a score" if foreign is not None else scan.problems()[0]
            raise OutputError(f"score cache {str(self.path)!r} is not a score cache file ({where}); baco appends "
                              f"scores only to such a file: choose another")
        for _, row in scan.rows:  # a line cut by a kill (torn, not UTF-8) is left out
            self.values[row["key"]] = row["value"]

    @staticmethod
    def check_not_input(path: str | os.PathLike, inputs: list[str | os.PathLike]) -> None:
        """Refuse a cache path that is one of the files being evaluated (scores would be appended to the samples
        they score); the file's content is checked when the evaluation opens it, before any model loads."""
        same = next((p for p in inputs if same_file(path, p)), None)
        if same is not None:
            raise OutputError(f"score cache {str(path)!r} is the samples file {str(same)!r}; give the cache its own "
                              f"file")

    @staticmethod
    def key(scorer: str, prompt: str, response: str) -> str:
        return hashlib.sha256(json.dumps([scorer, prompt, response]).encode()).hexdigest()

    def get(self, scorer: str, prompt: str, response: str):
        """The stored score, or MISS."""
        return self.values.get(self.key(scorer, prompt, response), MISS)

    def add(self, scorer: str, pairs: list[tuple[str, str]], values: list) -> None:
        """Store scores of (prompt, response) pairs and append them to the file at once.

        A pair the cache holds already is not written again: each score is one line, however often it is
        handed in (a shard that Ray ran again after its worker died sends its scores twice)."""
        rows = []
        for (prompt, response), value in zip(pairs, values):
            key = self.key(scorer, prompt, response)
            if key in self.values:
                continue
            value = None if value is None else float(value)
            self.values[key] = value
            rows.append({"key": key, "value": value})
        if not rows:
            return
        # One O_APPEND write of whole lines (`JsonlAppender.append_rows`): two evaluations sharing the cache take no
        # lock, and their batches land one after the other, never inside each other's lines. A full disk is the
        # user's to fix, not a bug: one line naming the file (the scores so far are kept).
        with JsonlAppender(self.path, repair=False) as out:
            out.append_rows(rows)
