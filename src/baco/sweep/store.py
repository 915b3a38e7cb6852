"""The sweep's samples file: append-only JSONL, one sample per line, safe to kill at any moment.

Every line is a `Sample` plus the cell it belongs to (`cell`, `task`, `method`, `config`, `item_id`).
Reading tolerates what a kill can leave behind: a last line cut short is dropped (and the file
truncated to its last complete line, so appending continues cleanly); a corrupt line in the middle
is reported and skipped, never deleted.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path


class SampleStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def read(self) -> list[dict]:
        """All complete rows; repairs a cut-off last line first."""
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            warnings.warn(f"{self.path}: dropped an incomplete last line ({len(data) - cut} bytes) "
                          "left by an interrupted run; that sample will be generated again", stacklevel=2)
            with open(self.path, "r+b") as handle:
                handle.truncate(cut)
            data = data[:cut]
        rows = []
        for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                warnings.warn(f"{self.path}:{number}: not valid JSON, skipped (left in the file)", stacklevel=2)
                continue
            if isinstance(row, dict) and "cell" in row:
                rows.append(row)
        return rows

    def done(self) -> dict[str, set[tuple[int, int]]]:
        """Per cell key, the (prompt index, sample index) of every stored sample."""
        out: dict[str, set[tuple[int, int]]] = {}
        for r in self.read():
            out.setdefault(r["cell"], set()).add((r["prompt_index"], r["sample_index"]))
        return out

    def append(self, row: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            handle.flush()
