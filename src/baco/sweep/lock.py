"""One writer per run directory: a `baco sweep` holds RUN_DIR/.lock while it generates and evaluates.

Two sweeps on one output directory would each generate every missing sample and append it, so
every sample would be stored twice. The lock is `storage.WriterLock` (an OS file lock, released by
the kernel when its holder exits or is killed, so a crashed sweep never leaves a stale lock). The
holder writes its pid, host, start time and command to RUN_DIR/.lock-holder.json, and a second
sweep is refused with those named. Readers (`baco check`, `--dry-run`, `baco report`) take no lock;
they only mention a running sweep.
"""

from __future__ import annotations

import os
from pathlib import Path

from baco.storage import WriterLock

LOCK_NAME, HOLDER_NAME = ".lock", ".lock-holder.json"


class RunLock(WriterLock):
    """`with RunLock(run_dir):` ... ; raises RunLockedError naming the holder if another process has it."""

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)
        super().__init__(self.run_dir / LOCK_NAME, self.run_dir / HOLDER_NAME,
                         in_use=f"{self.run_dir} is in use by another baco sweep",
                         why="Two sweeps writing one directory would store every sample twice")


def running_sweep(run_dir: str | os.PathLike) -> str | None:
    """The holder of the run directory's lock if a sweep is running now, else None (takes no lock)."""
    return RunLock(run_dir).holder_now()
