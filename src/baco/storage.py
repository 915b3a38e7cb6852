"""The files baco writes, written so that a kill, a full disk or a second writer loses or doubles nothing.

- Whole files (results.json, table.md, plots, report.html, `baco eval --out`) are written to a
  temporary file in the same folder and renamed over the target (`atomic_write`): a reader sees
  the old file or the new one, never half of one.
- Append-only JSON Lines (samples, cell logs): `JsonlAppender` writes each row as one complete line
  in one `os.write` to a file opened with O_APPEND, so rows never interleave within a line and a
  kill leaves at most one torn last line. Opening repairs such a line first (`repair_tail`): a
  complete row that only lacks its newline gets one; a cut-off row is dropped (it was never
  finished, so nothing that was written completely is lost) and the caller is told. Writers to a
  user's `--out` first check that the file holds a row of theirs (`foreign_tail`): in a file with
  none, the unfinished line is someone's text, refused rather than dropped.
- `scan_jsonl` reads a file the way `baco check` and `baco eval` report it: rows with their line
  numbers, the torn last line, corrupt lines (not JSON, not UTF-8), never raising on content.
- `stable_id`: a row's identity, a hash of everything that determines the sample, so the same
  sample written twice is recognised whatever run wrote it.
- `check_output_file` / `check_output_dir`: an unusable output path is a clear error before any
  model loads.
- `WriterLock`: one writer per output (a sweep's run directory, a `baco generate --out` file); a
  second one is refused, naming the first. A file's lock also locks the file itself, so that two
  names of one file (hard links) take one lock.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import socket
import stat
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from baco.errors import OutputError, RunLockedError

try:
    import fcntl
except ImportError:  # not a Unix: a file is locked by its name alone
    fcntl = None


@dataclass
class JsonlScan:
    """What a JSON Lines file holds: complete rows, a torn last line, corrupt lines (1-based line numbers)."""

    path: Path
    rows: list[tuple[int, object]] = field(default_factory=list)
    torn: tuple[int, int] | None = None  # (line number, bytes) of a last line cut off mid-write
    torn_head: bytes = b""  # that line's first bytes (`foreign_tail`: is it the start of one of baco's rows?)
    corrupt: list[tuple[int, str]] = field(default_factory=list)  # (line number, what is wrong)

    def problems(self) -> list[str]:
        out = [f"{self.path}:{number}: {what}" for number, what in self.corrupt]
        if self.torn:
            out.append(f"{self.path}:{self.torn[0]}: torn last line ({self.torn[1]} bytes cut off mid-write)")
        return out


def _parse(raw: bytes) -> tuple[object, str | None]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        return None, f"not valid UTF-8 (byte 0x{raw[error.start]:02x} at column {error.start + 1})"
    try:
        return json.loads(text.removeprefix("\ufeff")), None
    except json.JSONDecodeError as error:
        return None, f"not valid JSON ({error.msg} at column {error.colno})"


def scan_jsonl(path: str | os.PathLike) -> JsonlScan:
    """Every line of a JSON Lines file, sorted into rows, corrupt lines and a torn last line."""
    path = Path(path)
    scan = JsonlScan(path)
    if not path.is_file():
        return scan
    lines = read_bytes(path).split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline
    for number, raw in enumerate(lines, start=1):
        if raw.strip():
            row, problem = _parse(raw)
            if problem:
                scan.corrupt.append((number, problem))
            else:
                scan.rows.append((number, row))
    if tail.strip():
        row, problem = _parse(tail)
        if problem:
            scan.torn, scan.torn_head = (len(lines) + 1, len(tail)), tail[:64]
        else:
            scan.rows.append((len(lines) + 1, row))  # complete, only its newline is missing
    return scan


def foreign_tail(scan: JsonlScan, is_row: Callable[[object], bool], row_start: bytes = b"") -> str | None:
    """Why the torn last line of a file may not be dropped, or None when it may.

    Dropping an unfinished last line is a repair only in a file of baco's own rows, where it is a row a
    kill cut off; in a file with none of them (`is_row`), such as a text whose only line lacks a newline,
    it is someone else's text, and is refused rather than lost. A lone torn line that begins as baco's
    rows begin (`row_start`) is the first row of a run killed while writing it: dropped, so the run resumes."""
    if scan.torn is None or any(is_row(row) for _, row in scan.rows):
        return None
    if row_start and scan.torn_head.startswith(row_start) and not scan.rows and not scan.corrupt:
        return None
    return f"{scan.path}:{scan.torn[0]}: its last line is not JSON, and no line before it is one baco wrote"


def read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise OutputError(f"cannot read {path}: {error.strerror or error}") from None


def repair_tail(path: str | os.PathLike) -> str | None:
    """Make a file end with a complete line; returns what was done (None: nothing to do).

    A last line without its newline is either a complete row (the newline is added) or a row
    cut off by a kill (it is dropped: it never finished, and the run that wanted it makes it again).
    """
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return None
    with open(path, "rb") as handle:
        handle.seek(-1, os.SEEK_END)
        if handle.read(1) == b"\n":
            return None
    data = read_bytes(path)
    cut = data.rfind(b"\n") + 1
    tail = data[cut:]
    try:
        if tail.strip():
            _, problem = _parse(tail)
            if problem is None:
                with open(path, "ab") as handle:
                    handle.write(b"\n")
                return f"{path}: added the newline missing after the last row"
        with open(path, "r+b") as handle:
            handle.truncate(cut)
    except OSError as error:
        raise OutputError(f"cannot repair {path}: {error.strerror or error}") from None
    return (f"{path}: dropped an incomplete last line ({len(tail)} bytes) left by an interrupted run; "
            "that row is written again when its run resumes")


class JsonlAppender:
    """Append rows to a JSON Lines file, one whole line per `os.write`; use as a context manager."""

    def __init__(self, path: str | os.PathLike, *, repair: bool = True):
        self.path = Path(path)
        if repair:
            message = repair_tail(self.path)
            if message:
                warnings.warn(message, stacklevel=2)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as error:
            raise OutputError(f"cannot write {self.path}: {error.strerror or error}") from None

    @staticmethod
    def encode(row: dict) -> bytes:
        """A row as the bytes of one line."""
        return (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")

    def append(self, row: dict) -> None:
        self._write(self.encode(row))

    def append_rows(self, rows: list[dict]) -> None:
        """Several rows in one `os.write`, for a file that writers share without a run lock (a score cache): another
        process appending at the same time has its lines land before or after these, never inside one.

        A last line that a kill left unfinished is ended with a newline first: it then reads as one corrupt line,
        and is not truncated away (with other writers about, the end of the file may be theirs by the time it
        would be cut). The check and the write hold an `flock` on the file, so that the end checked is never a
        line another such writer has half written (without flock, as on some network mounts, that race costs at
        most a blank line)."""
        data = b"".join(self.encode(row) for row in rows)
        if not data:
            return
        locked = self._flock(fcntl.LOCK_EX) if fcntl is not None else False
        try:
            self._write(data if _ends_with_newline(self.path) else b"\n" + data)
        finally:
            if locked:
                self._flock(fcntl.LOCK_UN)

    def _flock(self, operation: int) -> bool:
        """flock this file (waits for another holder); False where the file system has no flock."""
        try:
            fcntl.flock(self._fd, operation)
        except OSError:
            return False
        return True

    def _write(self, data: bytes) -> None:
        try:
            while data:  # a regular file takes it in one write; loop in case the OS takes less
                data = data[os.write(self._fd, data):]
        except OSError as error:
            raise OutputError(f"cannot write {self.path}: {error.strerror or error}") from None

    def sync(self) -> None:
        """Flush to disk (rows survive a power cut, not only a killed process)."""
        try:
            os.fsync(self._fd)
        except OSError as error:
            if error.errno not in (errno.EINVAL, errno.ENOTSUP):  # a pipe or a terminal: nothing to sync
                raise OutputError(f"cannot write {self.path}: {error.strerror or error}") from None

    def close(self) -> None:
        if self._fd is not None:
            try:
                self.sync()
            finally:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> "JsonlAppender":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _ends_with_newline(path: Path) -> bool:
    """Whether the file is empty, absent or ends with a newline (a kill can leave a last line without one)."""
    try:
        with path.open("rb") as handle:
            if handle.seek(0, os.SEEK_END) == 0:
                return True
            handle.seek(-1, os.SEEK_END)
            return handle.read(1) == b"\n"
    except FileNotFoundError:
        return True
    except OSError as error:
        raise OutputError(f"cannot read {path}: {error.strerror or error}") from None


def append_row(path: str | os.PathLike, row: dict) -> None:
    """One row appended and synced (for small logs written once per cell)."""
    with JsonlAppender(path) as out:
        out.append(row)


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write a whole file via a temporary file in the same folder and a rename: all or nothing."""
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:
        raise OutputError(f"cannot write {path}: {error.strerror or error}") from None
    try:
        os.fchmod(fd, _new_file_mode())  # mkstemp makes 0600; a reader expects what open() would have made
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise OutputError(f"cannot write {path}: {error.strerror or error}") from None
        raise
    return path


def _new_file_mode() -> int:
    """0666 less the process umask: the mode open() gives a new file."""
    try:  # Linux: read the umask without changing it (os.umask would, for a moment, in every thread)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def stable_id(identity: dict) -> str:
    """16 hex digits naming a sample by everything that determines it (same inputs, same id)."""
    text = json.dumps(identity, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _probe(folder: Path, flag: str, path: Path) -> None:
    """Create and remove a scratch file in `folder`: the only sure test that files can be made there."""
    try:
        fd, scratch = tempfile.mkstemp(prefix=".baco-probe-", dir=folder)
        os.close(fd)
        os.unlink(scratch)
    except OSError as error:
        raise OutputError(f"{flag} {str(path)!r}: cannot create files in {str(folder)!r} "
                          f"({error.strerror or error})") from None


def check_output_file(path: str | os.PathLike, flag: str = "--out", *, make_folder: bool = False) -> Path:
    """A file baco may create or append to: its folder exists (or, with `make_folder`, is made now: `--out
    runs/x/samples.jsonl`) and is writable, it is not a folder.

    Leaves an existing file as it is (opened for appending, nothing written)."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{flag} {str(path)!r} is a folder; give a file name")
    folder = path.parent
    if not folder.is_dir():
        blocker = next((p for p in (folder, *folder.parents) if p.exists()), None)
        if blocker is not None and not blocker.is_dir():  # no folder can be made where a file is
            raise OutputError(f"{flag} {str(path)!r}: {str(blocker)!r} is a file, not a folder")
        if not make_folder:
            raise OutputError(f"{flag} {str(path)!r}: the folder {str(folder)!r} does not exist; create it first")
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise OutputError(f"{flag} {str(path)!r}: cannot create the folder {str(folder)!r} "
                              f"({error.strerror or error})") from None
    if path.exists():
        try:
            open(path, "ab").close()
        except OSError as error:
            raise OutputError(f"{flag} {str(path)!r} cannot be written ({error.strerror or error})") from None
    else:
        _probe(folder, flag, path)
    return path


def check_output_dir(path: str | os.PathLike, flag: str = "--out") -> Path:
    """A folder baco may create and write into: not a file, and files can be made in its nearest existing ancestor."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{flag} {str(path)!r} is a file; give a folder")
    existing = path.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"{flag} {str(path)!r}: {str(existing)!r} is a file, so the folder cannot be made")
    _probe(existing, flag, path)
    return path


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name one file (through links, `..` or another spelling of the same path)."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one does not exist (yet): compare where they would be
        return Path(a).resolve() == Path(b).resolve()


def lock_holder(holder_file: str | os.PathLike) -> str:
    """Who holds (or last held) a WriterLock, in words, from its holder file."""
    try:
        info = json.loads(Path(holder_file).read_text(encoding="utf-8"))
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["started"]))
        return f"pid {info['pid']} on {info['host']}, since {started}: {info['command']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not written its name yet"


class WriterLock:
    """`with WriterLock(lock_file, holder_file, in_use, why):` one writer at a time, the others refused.

    The lock is an OS file lock on `lock_file` (`filelock`: flock on Unix): the kernel releases it when
    its holder exits or is killed, so a crash never leaves a stale lock. The holder writes its pid, host,
    start time and command to `holder_file` (a separate file: the lock file's content is not ours), and a
    second writer gets RunLockedError "{in_use} ({holder}); wait for it to finish or stop it. {why}".
    On file systems without flock (some network mounts) filelock falls back to a marker file.

    `data_file`: the file written under the lock. `lock_file` is found by a name, and a file may have
    several (hard links, in any folders), so the holder also takes an flock on the file itself, which
    every name of it shares: at `acquire` when the file exists, else with `hold_file()` once the writer
    has created it. A second writer through another name is then refused too.
    """

    def __init__(self, lock_file: str | os.PathLike, holder_file: str | os.PathLike, in_use: str, why: str, *,
                 data_file: str | os.PathLike | None = None):
        self.lock_file, self.holder_file = Path(lock_file), Path(holder_file)
        self.data_file = None if data_file is None else Path(data_file)
        self.in_use, self.why = in_use, why
        self._lock = None
        self._file_fd: int | None = None

    def acquire(self) -> "WriterLock":
        from filelock import FileLock, Timeout

        try:
            self.lock_file.parent.mkdir(parents=True, exist_ok=True)
            lock = FileLock(str(self.lock_file), timeout=0)
            lock.acquire()
        except Timeout:
            raise RunLockedError(f"{self.in_use} ({lock_holder(self.holder_file)}); wait for it to finish or stop "
                                 f"it. {self.why}") from None
        except OSError as error:
            raise OutputError(f"cannot lock {self.lock_file}: {error.strerror or error}") from None
        self._lock = lock
        try:
            self.hold_file()
        except BaseException:
            self.release()
            raise
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                "command": " ".join(sys.argv)}
        atomic_write(self.holder_file, json.dumps(info) + "\n")
        return self

    def hold_file(self) -> None:
        """Lock `data_file` itself (its inode: every name of it), if it exists and is not locked by this holder yet.

        A writer that creates the file calls this right after, so that a hard link made to it later finds it
        locked. Where flock does not work (some network mounts), the lock by name stands alone."""
        if self.data_file is None or self._file_fd is not None or self._lock is None or fcntl is None:
            return
        try:
            if not stat.S_ISREG(os.stat(self.data_file).st_mode):  # a pipe (opening it would wait for a writer)
                return
            fd = os.open(self.data_file, os.O_RDONLY | os.O_NONBLOCK)
        except FileNotFoundError:  # not made yet: locked by its name until the writer creates it
            return
        except OSError as error:
            raise OutputError(f"cannot lock {self.data_file}: {error.strerror or error}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunLockedError(f"{self.in_use} under another name ({str(self.data_file)!r} is a hard link to a "
                                 f"file that a running baco writes through another of its names); wait for it to "
                                 f"finish or stop it. {self.why}") from None
        except OSError:  # no flock on this file system
            os.close(fd)
            return
        self._file_fd = fd

    def release(self) -> None:
        if self._file_fd is not None:
            os.close(self._file_fd)  # closing the descriptor releases its flock
            self._file_fd = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> "WriterLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def holder_now(self) -> str | None:
        """The holder if another process holds the lock now, else None (takes no lock, creates no file)."""
        from filelock import FileLock, Timeout

        if not self.lock_file.is_file() or not os.access(self.lock_file.parent, os.W_OK):
            return None
        probe = FileLock(str(self.lock_file), timeout=0)
        try:
            probe.acquire()
        except Timeout:
            return lock_holder(self.holder_file)
        except OSError:
            return None
        probe.release()
        return None
