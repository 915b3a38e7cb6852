"""The sweep's samples file: append-only JSON Lines, one sample per line, safe to kill at any moment.

Every line is a `Sample` plus the cell it belongs to (`cell`, `task`, `method`, `config`, `item_id`)
and a stable `id` (a hash of the cell's settings, the prompt and the sample index; see ledger.py).
Reading never changes the file: a torn last line and corrupt lines are reported by `scan()` and
left out of `read()`, which also keeps only the first copy of a sample stored twice. The one
writer (under the run directory's lock) repairs a torn last line before it appends
(`baco.storage.repair_tail`), and appends one whole line per `os.write`.
"""

from __future__ import annotations

from pathlib import Path

from baco.storage import JsonlScan, scan_jsonl


def row_key(row: dict):
    """A stored sample's identity: its id, or (cell, prompt index, sample index) for rows older than ids."""
    return row.get("id") or (row.get("cell"), row.get("prompt_index"), row.get("sample_index"))


# What the sweep's readers take from a sample row, with its type: the audit (cell, indexes), the evaluation (task,
# config, prompt, text) and `baco report` (method, finish reason, and per token its text, writer, reason and
# probabilities). A row that lacks one (a hand edit, a line patched by another tool) holds no usable sample: it is
# named and left out like a corrupt line, and its sample made again, rather than failing a reader midway.
KEY_FIELDS = {"cell": str, "prompt_index": int, "sample_index": int}
ROW_FIELDS = {"task": str, "method": str, "config": str, "prompt": str, "text": str, "finish_reason": str}
TOKEN_FIELDS = ("token_texts", "sources", "reasons", "base_top1_prob", "base_entropy", "aligned_top1_prob")


def _of_type(value, kind: type) -> bool:
    return isinstance(value, kind) and not isinstance(value, bool)


def row_problem(row) -> str | None:
    """Why a row of samples.jsonl is no usable sweep sample, in words; None when it is one."""
    if not (isinstance(row, dict) and all(_of_type(row.get(name), kind) for name, kind in KEY_FIELDS.items())):
        return "not a sample row (no cell, prompt_index, sample_index)"
    bad = [name for name, kind in ROW_FIELDS.items() if not _of_type(row.get(name), kind)]
    bad += [name for name in TOKEN_FIELDS if not isinstance(row.get(name), list)]
    if bad:
        return f"a sample row without a valid {', '.join(bad)} (edited by hand?)"
    if len({len(row[name]) for name in TOKEN_FIELDS}) > 1:
        return f"a sample row whose per-token lists ({', '.join(TOKEN_FIELDS)}) differ in length (edited by hand?)"
    return None


def is_sample_row(row) -> bool:
    return row_problem(row) is None


class SampleStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def scan(self) -> JsonlScan:
        return scan_jsonl(self.path)

    def read(self, scan: JsonlScan | None = None) -> list[dict]:
        """Every stored sample once, in file order (the first copy of a sample stored twice); from `scan` when the
        caller has scanned the file already."""
        seen, rows = set(), []
        for _, row in (scan or self.scan()).rows:
            if is_sample_row(row) and row_key(row) not in seen:
                seen.add(row_key(row))
                rows.append(row)
        return rows
