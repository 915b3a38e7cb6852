"""Fault test: a sweep killed at random points, including in the middle of writing a line of any of its
files (plan, samples, cell log), then resumed, holds exactly the samples of an uninterrupted run:
the same ids with the same token ids, each stored once, and `baco check` passes.

A kill point is a byte budget: the run dies as soon as it has written that many bytes to its
JSONL files, so a budget ending inside a line leaves that line torn, exactly as a kill during the
write would. In-process runs raise a BaseException the sweep does not catch; one run is a real
child process killed with SIGKILL (no cleanup runs; the kernel releases the lock).
"""

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import baco
from baco.cli import main
from baco.storage import JsonlAppender, scan_jsonl
from baco.sweep import Engines, parse_config, run_cells
from baco.sweep.store import SampleStore


class Killed(BaseException):
    """The process died (nothing in baco catches a BaseException that is not KeyboardInterrupt)."""


@pytest.fixture(scope="module")
def engines(tiny_dirs):
    return Engines.load(*map(str, tiny_dirs), device="cpu")


@pytest.fixture(scope="module")
def raw(tiny_dirs, tmp_path_factory):
    prompts = tmp_path_factory.mktemp("fault") / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["Name a fruit.", "Why?", "Tell a joke."]))
    return {"name": "fault", "n": 2, "models": {"base": str(tiny_dirs[0]), "aligned": str(tiny_dirs[1])},
            "tasks": [{"path": str(prompts), "name": "mine"}], "sampling": {"max_new_tokens": 6},
            "methods": {"p-punc": {"router": "p-punc", "values": [0.3]}, "base": {"router": "base"},
                        "negative": {"router": "negative", "values": [1.0]}, "eft": {"router": "eft", "values": [0.5]}}}


def writes_of(run) -> list[tuple[str, int]]:
    """Run to the end, recording every line written: (file name, bytes)."""
    writes, original = [], JsonlAppender.append

    def recording(self, row):
        writes.append((self.path.name, len(JsonlAppender.encode(row))))
        original(self, row)

    JsonlAppender.append = recording
    try:
        run()
    finally:
        JsonlAppender.append = original
    return writes


def run_killed(run, budget: int) -> bool:
    """Run until `budget` bytes are written (the last line cut where the budget ends); True if it died."""
    left, original = [budget], JsonlAppender.append

    def dying(self, row):
        data = JsonlAppender.encode(row)
        if len(data) >= left[0]:
            os.write(self._fd, data[:left[0]])
            raise Killed
        left[0] -= len(data)
        original(self, row)

    JsonlAppender.append = dying
    try:
        run()
    except Killed:
        return True
    finally:
        JsonlAppender.append = original
    return False


def stored(out: Path) -> dict[str, list[int]]:
    return {r["id"]: r["token_ids"] for r in SampleStore(out / "samples.jsonl").read()}


def assert_exactly_once(out: Path, expected: dict[str, list[int]]) -> None:
    scan = scan_jsonl(out / "samples.jsonl")
    assert scan.torn is None and not scan.corrupt
    assert sorted(row["id"] for _, row in scan.rows) == sorted(expected)  # every sample once, none twice
    assert stored(out) == expected  # the same samples: ids and token ids
    assert main(["check", str(out)]) == 0


def kill_points(writes: list[tuple[str, int]], rng: random.Random) -> list[int]:
    """Byte budgets: inside a random line of each file, on a line boundary, and anywhere at random."""
    starts, position = [], 0
    for name, size in writes:
        starts.append((name, position, size))
        position += size
    points = [0]
    for name in ("plan.jsonl", "samples.jsonl", "cells.jsonl"):
        _, start, size = rng.choice([w for w in starts if w[0] == name])
        points.append(start + rng.randrange(1, size))  # mid-write
    points.append(rng.choice(starts)[1])  # between two writes
    points += [rng.randrange(position) for _ in range(2)]
    return points


def test_a_sweep_killed_anywhere_resumes_to_exactly_the_uninterrupted_result(raw, engines, tmp_path, capsys):
    config = parse_config(raw)
    reference = tmp_path / "reference"
    writes = writes_of(lambda: run_cells(config, reference, engines, progress=False))
    expected = stored(reference)
    assert len(expected) == 4 * 3 * 2
    rng = random.Random(11)
    points = kill_points(writes, rng)
    for trial, point in enumerate(points):
        out = tmp_path / f"killed-{trial}"
        run = lambda: run_cells(config, out, engines, progress=False)  # noqa: E731
        assert run_killed(run, point), point
        # the resumed run dies too, at a random point of what is left, before a last clean resume
        run_killed(run, rng.randrange(sum(size for _, size in writes) // 2))
        run()
        assert_exactly_once(out, expected)
    capsys.readouterr()


def test_a_sweep_killed_by_sigkill_mid_write_resumes_to_the_same_result(raw, engines, tmp_path):
    config_path = tmp_path / "sweep.yaml"
    config_path.write_text(json.dumps(raw))
    reference = tmp_path / "reference"
    writes = writes_of(lambda: run_cells(parse_config(raw), reference, engines, progress=False))
    samples = [i for i, (name, _) in enumerate(writes) if name == "samples.jsonl"]
    cut = samples[len(samples) // 2]  # half way through the samples, in the middle of a line
    budget = sum(size for _, size in writes[:cut]) + writes[cut][1] // 2
    out = tmp_path / "killed"
    child = f"""
import os, signal, sys
from baco.storage import JsonlAppender
left, original = [{budget}], JsonlAppender.append
def dying(self, row):
    data = JsonlAppender.encode(row)
    if len(data) >= left[0]:
        os.write(self._fd, data[:left[0]])
        os.kill(os.getpid(), signal.SIGKILL)
    left[0] -= len(data)
    original(self, row)
JsonlAppender.append = dying
from baco.cli import main
sys.exit(main(["sweep", {str(config_path)!r}, "--out", {str(out)!r}, "--no-eval", "--quiet"]))
"""
    source = str(Path(baco.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([source, os.environ.get("PYTHONPATH", "")]),
           "CUDA_VISIBLE_DEVICES": ""}  # the CPU, like the reference (batch shapes differ after a resume)
    done = subprocess.run([sys.executable, "-c", child], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    assert scan_jsonl(out / "samples.jsonl").torn is not None  # it died in the middle of a line
    assert main(["check", str(out)]) == 1
    run_cells(parse_config(raw), out, engines, progress=False)  # takes the lock: it died with its holder
    assert_exactly_once(out, stored(reference))


def test_a_full_disk_while_caching_quality_scores_is_a_clear_error_and_keeps_the_scores_written(tmp_path):
    """A file-size limit (as a full disk would) cuts the cache's append: one clean `cannot write` error
    (exit 2 from the CLI, not an 'unexpected' exit 1), the complete lines are kept, and the next run adds on."""
    import resource

    from baco.errors import OutputError
    from baco.evaluate.cache import ScoreCache

    path = tmp_path / "quality-scores.jsonl"
    pairs = [(f"prompt {i}", f"response {i}") for i in range(100)]
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))  # Python ignores SIGXFSZ: the write fails with EFBIG
    try:
        with pytest.raises(OutputError, match="cannot write .*quality-scores.jsonl"):
            ScoreCache(path).add("scorer", pairs, [i / 100 for i in range(100)])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    kept = ScoreCache(path).values
    assert 0 < len(kept) < 100
    assert all(kept[ScoreCache.key("scorer", p, r)] == i / 100 for i, (p, r) in enumerate(pairs)
               if ScoreCache.key("scorer", p, r) in kept)
    ScoreCache(path).add("scorer", pairs, [i / 100 for i in range(100)])
    again = ScoreCache(path)
    assert [again.get("scorer", p, r) for p, r in pairs] == [i / 100 for i in range(100)]
