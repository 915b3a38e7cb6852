"""One writer per run directory: a `baco sweep` holds RUN_DIR/.lock while it generates and evaluates.

Two sweeps on one output directory would each generate every missing sample and append it, so
every sample would be stored twice. The lock is an OS file lock (`filelock`, flock on Unix): the
kernel releases it when its holder exits or is killed, so a crashed sweep never leaves a stale
lock. The holder writes its pid, host, start time and command to RUN_DIR/.lock-holder.json, and a
second sweep is refused with those named. Readers (`baco check`, `--dry-run`, `baco report`) take
no lock; they only mention a running sweep. On file systems without flock (some network mounts)
filelock falls back to a marker file.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

from filelock import FileLock, Timeout

from baco.errors import OutputError, RunLockedError
from baco.storage import atomic_write

LOCK_NAME, HOLDER_NAME = ".lock", ".lock-holder.json"


def holder(run_dir: str | os.PathLike) -> str:
    """Who holds (or last held) the run directory, in words."""
    try:
        info = json.loads((Path(run_dir) / HOLDER_NAME).read_text(encoding="utf-8"))
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["started"]))
        return f"pid {info['pid']} on {info['host']}, since {started}: {info['command']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not written its name yet"


class RunLock:
    """`with RunLock(run_dir):` ... ; raises RunLockedError naming the holder if another process has it."""

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)
        self._lock: FileLock | None = None

    def __enter__(self) -> "RunLock":
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._lock = FileLock(str(self.run_dir / LOCK_NAME), timeout=0)
            self._lock.acquire()
        except Timeout:
            raise RunLockedError(
                f"{self.run_dir} is in use by another baco sweep ({holder(self.run_dir)}); wait for it to "
                f"finish or stop it. Two sweeps writing one directory would store every sample twice"
            ) from None
        except OSError as error:
            raise OutputError(f"cannot lock {self.run_dir}: {error.strerror or error}") from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                "command": " ".join(sys.argv)}
        atomic_write(self.run_dir / HOLDER_NAME, json.dumps(info) + "\n")
        return self

    def __exit__(self, *exc) -> None:
        if self._lock is not None:
            self._lock.release()


def running_sweep(run_dir: str | os.PathLike) -> str | None:
    """The holder of the run directory's lock if a sweep is running now, else None (takes no lock)."""
    path = Path(run_dir) / LOCK_NAME
    if not path.is_file() or not os.access(path.parent, os.W_OK):
        return None
    probe = FileLock(str(path), timeout=0)
    try:
        probe.acquire()
    except Timeout:
        return holder(run_dir)
    except OSError:
        return None
    probe.release()
    return None
