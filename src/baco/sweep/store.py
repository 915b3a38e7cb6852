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


def is_sample_row(row) -> bool:
    return (isinstance(row, dict) and isinstance(row.get("cell"), str) and isinstance(row.get("prompt_index"), int)
            and isinstance(row.get("sample_index"), int))


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
