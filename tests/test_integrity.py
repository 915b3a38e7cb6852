"""Results are treated like a database: nothing lost, nothing doubled, every problem found and named.

Findings of issue 11: `generate --out` appends and never wipes (1), one sweep per run directory (2),
cells keyed by task identity with no duplicate seeds or configurations (3), completeness read from
the samples themselves (4), provenance of single-model rows (7); plus `baco check` and `baco eval`
reporting duplicates and torn lines.
"""

import io
import json
import os
import signal
from pathlib import Path

import pytest

import baco
from baco.cli import main
from baco.sweep import Engines, SampleStore, SweepConfigError, parse_config, run_cells


@pytest.fixture(scope="module")
def engines(tiny_dirs):
    base, aligned = tiny_dirs
    return Engines.load(str(base), str(aligned), device="cpu")


def write_prompts(path, prompts):
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    return path


def small_config(tmp_path, tiny_dirs, methods=None, **extra):
    prompts = write_prompts(tmp_path / "prompts.jsonl", ["Name a fruit.", "Why?"])
    raw = {"name": "tiny", "n": 2, "models": {"base": str(tiny_dirs[0]), "aligned": str(tiny_dirs[1])},
           "tasks": [{"path": str(prompts), "name": "mine"}], "sampling": {"max_new_tokens": 5},
           "methods": methods or {"p": {"router": "p", "values": [0.5]}, "base": {"router": "base"}},
           "metrics": {"diversity": ["distinct-2"], "quality": ["relevance"]}, **extra}
    return raw


def generate_argv(tiny_dirs, out, *more):
    base, aligned = map(str, tiny_dirs)
    return ["generate", "--base", base, "--aligned", aligned, "--max-new-tokens", "6", "--seed", "3", "--quiet",
            "--device", "cpu", "--out", str(out), *more]


# ---------------------------------------------------------------- 1: generate --out appends, never wipes

# a sample an earlier baco wrote (before samples had ids): a row of a samples file, which generate appends to
EARLIER = ('{"prompt": "kept", "prompt_index": 0, "sample_index": 0, "router": "aligned", "seed": 1, '
           '"text": "an earlier result"}\n')


def test_a_failed_generate_leaves_an_existing_out_file_untouched(tiny_dirs, tmp_path, capsys):
    out = tmp_path / "samples.jsonl"
    out.write_text(EARLIER)
    before = out.read_bytes()
    assert main(generate_argv(tiny_dirs, out, "--prompt", "word " * 400)) == 2  # too long, after models load
    assert "tokens once templated" in capsys.readouterr().err
    assert out.read_bytes() == before


def test_generate_appends_and_a_rerun_with_the_same_seed_completes_instead_of_doubling(tiny_dirs, tmp_path, capsys):
    out = tmp_path / "samples.jsonl"
    out.write_text(EARLIER)
    assert main(generate_argv(tiny_dirs, out, "--prompt", "Name a fruit.", "--n", "2")) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0]["prompt"] == "kept" and len(rows) == 3
    assert len({r["id"] for r in rows[1:]}) == 2
    # a killed run lost its second sample and cut its last line: the same command completes the file
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:2]) + lines[2][:40])
    assert main(generate_argv(tiny_dirs, out, "--prompt", "Name a fruit.", "--n", "2")) == 0
    again = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r.get("id") for r in again] == [r.get("id") for r in rows]
    assert again[2]["token_ids"] == rows[2]["token_ids"]
    assert "incomplete last line" in capsys.readouterr().err
    # everything there: nothing to do, nothing written
    before = out.read_bytes()
    assert main(generate_argv(tiny_dirs, out, "--prompt", "Name a fruit.", "--n", "2")) == 0
    assert out.read_bytes() == before and "nothing to do" in capsys.readouterr().err
    # another seed appends new samples
    assert main(generate_argv(tiny_dirs, out, "--prompt", "Name a fruit.", "--n", "2", "--seed", "4")) == 0
    assert len(out.read_text().splitlines()) == 5


def test_generate_refuses_to_append_to_a_file_that_is_not_jsonl(tiny_dirs, tmp_path, capsys):
    notes = tmp_path / "notes.jsonl"
    notes.write_text("my notes\nmore notes\n")
    assert main(generate_argv(tiny_dirs, notes, "--prompt", "hi")) == 2
    assert "notes.jsonl:1: not valid JSON" in capsys.readouterr().err
    assert notes.read_text() == "my notes\nmore notes\n"


@pytest.mark.parametrize("content, line", [
    ('{"prompt": "Name a fruit."}\n{"prompt": "Name a colour."}\n', 1),  # another prompts file
    ('[{"prompt": "Name a fruit."}]', 1),  # a one-line JSON array
    (EARLIER + '{"prompt": "p", "response": "r"}\n', 2),  # a samples file someone added a row of their own to
])
def test_generate_refuses_to_append_to_json_rows_that_are_not_samples(tiny_dirs, tmp_path, capsys, content, line):
    out = tmp_path / "q2.jsonl"
    out.write_text(content)
    assert main(generate_argv(tiny_dirs, out, "--prompt", "hi")) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"baco: error: --out {str(out)!r} is not a JSON Lines samples file ({out}:{line}: not a "
                          f"baco sample")
    assert err.count("\n") == 1 and out.read_text() == content


@pytest.mark.parametrize("content", [b"my only important line, no newline", b"\x80\x81"])
def test_generate_keeps_a_file_whose_unfinished_last_line_follows_no_sample(tiny_dirs, tmp_path, capsys, content):
    """A last line without its newline is a row cut off by a kill only in a file of samples: in any other file
    (one line of text, a few binary bytes) it is the user's, refused before any model loads, not dropped."""
    out = tmp_path / "single.txt"
    out.write_bytes(content)
    assert main(generate_argv(tiny_dirs, out, "--prompt", "hi")) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"baco: error: --out {str(out)!r} is not a JSON Lines samples file ({out}:1: ")
    assert err.count("\n") == 1 and out.read_bytes() == content


def test_generate_resumes_a_file_whose_only_line_is_its_first_sample_cut_by_a_kill(tiny_dirs, tmp_path, capsys):
    """Killed while writing its very first sample, a run leaves one unfinished line that begins as every sample
    row begins: that line is baco's own, so the same command drops it and completes the file."""
    whole = tmp_path / "whole.jsonl"
    assert main(generate_argv(tiny_dirs, whole, "--prompt", "Name a fruit.")) == 0
    first = whole.read_bytes()
    out = tmp_path / "killed.jsonl"
    out.write_bytes(first[:50])
    assert main(generate_argv(tiny_dirs, out, "--prompt", "Name a fruit.")) == 0
    (again,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert (again["id"], again["token_ids"]) == (json.loads(first)["id"], json.loads(first)["token_ids"])
    assert "incomplete last line" in capsys.readouterr().err


def test_a_sweep_keeps_an_unfinished_line_of_a_samples_file_it_did_not_write(tiny_dirs, tmp_path, capsys):
    config = tmp_path / "sweep.yaml"
    config.write_text(json.dumps(small_config(tmp_path, tiny_dirs)))
    run = tmp_path / "mine"
    run.mkdir()
    (run / "samples.jsonl").write_bytes(b"notes of mine, no newline")
    assert main(["sweep", str(config), "--out", str(run), "--quiet", "--no-eval"]) == 2
    assert "samples.jsonl is not a sweep's samples file" in capsys.readouterr().err
    assert (run / "samples.jsonl").read_bytes() == b"notes of mine, no newline"


# ---------------------------------------------------------------- 2: one sweep per run directory

def test_a_second_sweep_on_a_locked_run_directory_is_refused_naming_the_holder(tiny_dirs, tmp_path, capsys):
    import socket

    from baco.sweep.lock import RunLock

    config = tmp_path / "sweep.yaml"
    config.write_text(json.dumps(small_config(tmp_path, tiny_dirs)))
    run = tmp_path / "run"
    with RunLock(run):
        assert main(["sweep", str(config), "--out", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"pid {os.getpid()} on {socket.gethostname()}" in err and "in use by another baco sweep" in err
    assert not (run / "samples.jsonl").exists()
    assert main(["sweep", str(config), "--out", str(run), "--quiet", "--no-eval"]) == 0  # released


def test_a_second_generate_on_the_same_out_file_is_refused_naming_the_holder_and_writes_nothing(tiny_dirs, tmp_path,
                                                                                                  capsys):
    """Two `baco generate --out F` at once would both make the missing samples and append them: the second
    one is refused while another process holds F's lock, and the lock's files stay out of globs of *.json*."""
    import glob
    import socket
    import subprocess
    import sys

    out = tmp_path / "samples.jsonl"
    assert main(generate_argv(tiny_dirs, out, "--prompt", "Name a fruit.")) == 0
    before = out.read_bytes()
    source = str(Path(baco.__file__).parents[1])
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from baco.decode.records import out_lock\n"
         f"with out_lock({str(out)!r}):\n    print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([source, os.environ.get("PYTHONPATH", "")])})
    try:
        assert holder.stdout.readline() == "held\n"
        assert main(generate_argv(tiny_dirs, out, "--prompt", "Why?")) == 2
    finally:
        holder.communicate("")
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"pid {holder.pid} on {socket.gethostname()}" in err
    assert err.startswith(f"baco: error: --out {str(out)!r} is in use by another baco generate")
    assert out.read_bytes() == before
    assert sorted(glob.glob(str(tmp_path / "*.json*"))) == [str(out)]
    assert main(generate_argv(tiny_dirs, out, "--prompt", "Why?")) == 0  # released when its holder ended
    assert len(rows_of(out)) == 2


def test_an_out_file_named_through_a_symbolic_link_takes_the_same_lock_as_the_file_itself(tmp_path):
    """`--out latest.jsonl` (a link to run3.jsonl) while another generate writes run3.jsonl would store the same
    samples twice: the lock sits next to the file the link leads to, so the second writer is refused."""
    from baco.decode.records import out_lock
    from baco.errors import RunLockedError

    target = tmp_path / "run3.jsonl"
    target.write_text("")
    (tmp_path / "latest.jsonl").symlink_to("run3.jsonl")
    with out_lock(target):
        with pytest.raises(RunLockedError, match="latest.jsonl' is in use by another baco generate"):
            out_lock(tmp_path / "latest.jsonl").acquire()
    with out_lock(tmp_path / "latest.jsonl"):
        with pytest.raises(RunLockedError, match="run3.jsonl' is in use"):
            out_lock(target).acquire()


def test_two_hard_links_of_an_out_file_take_one_lock(tmp_path):
    """A hard link is a second name of the same file, in the same folder or another: a generate writing through
    one name while another writes through the other would store the same samples twice. The lock is also on the
    file itself, so the second writer is refused, whichever name it uses; the lock files stay hidden."""
    import glob

    from baco.decode.records import out_lock
    from baco.errors import RunLockedError

    target = tmp_path / "run3.jsonl"
    target.write_text("")
    (tmp_path / "elsewhere").mkdir()
    for name in (tmp_path / "latest.jsonl", tmp_path / "elsewhere" / "run3.jsonl"):
        os.link(target, name)
        with out_lock(target):
            with pytest.raises(RunLockedError, match=f"--out '{name}' is in use by another baco generate under "
                                                     f"another name"):
                out_lock(name).acquire()
        with out_lock(name):
            with pytest.raises(RunLockedError, match="run3.jsonl' is in use"):
                out_lock(target).acquire()
        with out_lock(name):  # released: each name takes it again
            pass
    assert sorted(glob.glob(str(tmp_path / "*.json*"))) == [str(tmp_path / n) for n in ("latest.jsonl", "run3.jsonl")]


def test_a_new_out_file_is_locked_by_name_and_by_itself_once_made(tmp_path):
    """A file that does not exist yet is locked by its name; once the run has made it, a hard link made to it
    then finds it locked too."""
    from baco.decode.records import Sample, SampleFile
    from baco.errors import RunLockedError

    out = tmp_path / "new.jsonl"
    with SampleFile(out, {"router": "aligned"}) as written:
        assert not out.exists()
        with pytest.raises(RunLockedError, match="new.jsonl' is in use"):
            SampleFile(out, {"router": "aligned"})
        written.append(Sample(prompt="Hi.", prompt_index=0, sample_index=0, router="aligned", seed=7, text="Hello.",
                              sampling={"seed": 1}))
        os.link(out, tmp_path / "link.jsonl")
        with pytest.raises(RunLockedError, match="link.jsonl' is in use by another baco generate under another name"):
            SampleFile(tmp_path / "link.jsonl", {"router": "aligned"})
    with SampleFile(tmp_path / "link.jsonl", {"router": "aligned"}) as again:  # released with the first
        assert len(again.stored) == 1


def test_run_cells_takes_the_lock_too(tiny_dirs, tmp_path, engines):
    from baco.errors import RunLockedError
    from baco.sweep.lock import RunLock

    config = parse_config(small_config(tmp_path, tiny_dirs))
    with RunLock(tmp_path / "run"), pytest.raises(RunLockedError, match="in use"):
        run_cells(config, tmp_path / "run", engines, progress=False)


# ---------------------------------------------------------------- 3: cell identity

def test_two_task_files_with_the_same_stem_are_refused(tmp_path, tiny_dirs):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = write_prompts(tmp_path / "a" / "qs.jsonl", ["one?"])
    second = write_prompts(tmp_path / "b" / "qs.jsonl", ["two?"])
    raw = {**small_config(tmp_path, tiny_dirs), "tasks": [{"path": str(first)}, {"path": str(second)}]}
    with pytest.raises(SweepConfigError, match="two tasks are named 'qs'.*give each its own `name`"):
        parse_config(raw)
    raw["tasks"][1]["name"] = "qs-b"
    assert [t.name for t in parse_config(raw).tasks] == ["qs", "qs-b"]


def test_duplicate_seeds_and_duplicate_configurations_are_config_errors(tmp_path, tiny_dirs, capsys):
    with pytest.raises(SweepConfigError, match=r"seeds \[0\] are listed more than once"):
        parse_config(small_config(tmp_path, tiny_dirs, seeds=[0, 0]))
    same = {"a": {"router": "p", "values": [0.5]}, "b": {"router": "p", "values": [0.5]}}
    with pytest.raises(SweepConfigError, match="'a:0.5' and 'b:0.5' are the same"):
        parse_config(small_config(tmp_path, tiny_dirs, methods=same))
    config = tmp_path / "sweep.yaml"
    config.write_text(json.dumps(small_config(tmp_path, tiny_dirs)))
    assert main(["sweep", str(config), "--seeds", "1,1", "--dry-run"]) == 2
    assert "--seeds: seeds [1] are listed more than once" in capsys.readouterr().err


# ---------------------------------------------------------------- 4: completeness from the samples

def test_a_torn_line_in_a_finished_cell_is_generated_again(tiny_dirs, tmp_path, engines, capsys):
    config = parse_config(small_config(tmp_path, tiny_dirs))
    run = tmp_path / "run"
    run_cells(config, run, engines, progress=False)
    path = run / "samples.jsonl"
    full = path.read_bytes()
    expected = {r["id"]: r["token_ids"] for r in SampleStore(path).read()}
    assert len(expected) == 2 * 2 * 2
    path.write_bytes(full[:-30])  # the last sample's line torn after its cell was logged complete
    assert main(["check", str(run)]) == 1
    assert "1 missing" in capsys.readouterr().out
    with pytest.warns(UserWarning, match="incomplete last line"):
        counts = run_cells(config, run, engines, progress=False)
    assert counts["generated"] == 1
    rows = SampleStore(path).read()
    assert {r["id"]: r["token_ids"] for r in rows} == expected and len(path.read_text().splitlines()) == 8
    assert main(["check", str(run)]) == 0


# ---------------------------------------------------------------- 7: provenance

def test_single_model_rows_record_only_the_model_that_ran(tiny_dirs, tmp_path, engines):
    methods = {"base": {"router": "base"}, "aligned": {"router": "aligned"}, "p": {"router": "p"}}
    config = parse_config(small_config(tmp_path, tiny_dirs, methods=methods))
    run_cells(config, tmp_path / "run", engines, progress=False)
    models = {r["config"]: r["models"] for r in SampleStore(tmp_path / "run" / "samples.jsonl").read()}
    base, aligned = map(str, tiny_dirs)
    assert models == {"base": {"base": base}, "aligned": {"aligned": aligned}, "p": {"base": base, "aligned": aligned}}


# ---------------------------------------------------------------- baco check, baco eval

def test_check_reports_missing_duplicate_and_torn_samples_per_cell(tiny_dirs, tmp_path, engines, capsys):
    config = parse_config(small_config(tmp_path, tiny_dirs))
    run = tmp_path / "run"
    run_cells(config, run, engines, progress=False)
    assert main(["check", str(run), "--verbose"]) == 0
    out = capsys.readouterr()
    assert "mine|p:0.5|seed=0: 4/4 stored" in out.out and "ok: 2 cells, 8 of 8 samples stored" in out.err
    lines = (run / "samples.jsonl").read_text().splitlines(keepends=True)
    # the first sample twice, the second gone, the last line torn
    (run / "samples.jsonl").write_text(lines[0] + lines[0] + "".join(lines[2:-1]) + lines[-1][:25])
    assert main(["check", str(run)]) == 1
    out = capsys.readouterr()
    assert "mine|p:0.5|seed=0: 3/4 stored, 1 missing, 1 stored twice" in out.out
    assert "mine|base|seed=0: 3/4 stored, 1 missing" in out.out
    assert "samples.jsonl:8: torn last line" in out.out
    assert out.err.startswith("problems: 2 cells, 6 of 8 samples stored, 2 missing, 1 stored twice")
    # the sweep says so too, makes what is missing, and uses the doubled sample once
    log = io.StringIO()
    with pytest.warns(UserWarning, match="incomplete last line"):
        assert run_cells(config, run, engines, progress=False, log=log)["generated"] == 2
    assert "cell mine|p:0.5|seed=0: 3/4 stored, 1 missing, 1 stored twice; each sample is used once" in log.getvalue()
    assert main(["check", str(run)]) == 1  # append-only: the second copy stays, and is reported
    assert capsys.readouterr().out == "mine|p:0.5|seed=0: 4/4 stored, 1 stored twice\n"


def test_check_repair_moves_the_lines_no_reader_uses_aside_and_the_sweep_completes_the_rest(tiny_dirs, tmp_path,
                                                                                               engines, capsys):
    """Two files joined with `cat` (samples twice), a corrupt line, a hand-edited row and a torn tail: `check
    --repair` moves exactly those lines, as they were, to samples.rejected.jsonl and keeps every used sample in its
    order; the sweep then makes only what is missing, and `check` passes (before: exit 1 for ever, append-only)."""
    config = parse_config(small_config(tmp_path, tiny_dirs))
    run = tmp_path / "run"
    run_cells(config, run, engines, progress=False)
    path = run / "samples.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    expected = {r["id"]: r["token_ids"] for r in SampleStore(path).read()}
    edited = json.loads(lines[3])
    del edited["text"]
    bad = ["{not json\n", json.dumps(edited) + "\n", lines[5][:25]]
    path.write_text("".join(lines[:3]) + bad[0] + "".join(lines[:2]) + bad[1] + "".join(lines[4:]) + bad[2])
    assert main(["check", str(run)]) == 1
    capsys.readouterr()
    assert main(["check", str(run), "--repair"]) == 1  # the edited row's sample is still missing
    out = capsys.readouterr()
    assert out.err.startswith(f"repair: moved 5 lines to {run / 'samples.rejected.jsonl'}\n")
    assert out.out.endswith(": 3/4 stored, 1 missing\n") and out.out.count("\n") == 1
    assert "problems: 2 cells, 7 of 8 samples stored, 1 missing, 0 stored twice, 0 torn or corrupt lines" in out.err
    rejected = (run / "samples.rejected.jsonl").read_text()
    assert rejected == bad[0] + "".join(lines[:2]) + bad[1] + bad[2] + "\n"
    assert path.read_text() == "".join(lines[:3]) + "".join(lines[4:])
    assert run_cells(config, run, engines, progress=False)["generated"] == 1
    assert main(["check", str(run)]) == 0
    assert {r["id"]: r["token_ids"] for r in SampleStore(path).read()} == expected
    capsys.readouterr()
    assert main(["check", str(run), "--repair"]) == 0
    assert capsys.readouterr().err.startswith("repair: no line to move\n")
    from baco.sweep import RunLock

    with RunLock(run):  # a sweep writing the directory: nothing is moved under it
        assert main(["check", str(run), "--repair"]) == 2
    assert "in use by another baco sweep" in capsys.readouterr().err
    assert main(["check", str(run), "--repair", "--config", str(tmp_path / "any.yaml")]) == 2


def test_check_notes_cells_that_ran_with_another_thread_count(tiny_dirs, tmp_path, engines, capsys):
    """A cell made again with one CPU thread beside cells made with the default: samples may round differently
    (docs/engine.md), so `baco check` says so, without calling the run directory broken."""
    import torch

    config = parse_config(small_config(tmp_path, tiny_dirs))
    run = tmp_path / "run"
    run_cells(config, run, engines, progress=False)
    assert main(["check", str(run)]) == 0
    assert "numerics" not in capsys.readouterr().out
    redo = config.cells[0].key  # its samples and its log line go; the sweep makes them again with one thread
    for name in ("samples.jsonl", "cells.jsonl"):
        lines = (run / name).read_text().splitlines(keepends=True)
        (run / name).write_text("".join(line for line in lines if json.loads(line).get("cell") != redo))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert run_cells(config, run, engines, progress=False)["generated"] == 4
    finally:
        torch.set_num_threads(threads)
    assert main(["check", str(run)]) == 0
    out = capsys.readouterr().out
    if threads == 1:  # a one-core machine: both runs had one thread
        assert "numerics" not in out
    else:
        assert "different numerics, so their samples may round differently" in out
        assert f"threads 1 (1 cell), {threads} (1 cell)" in out


def test_check_names_the_line_of_a_corrupt_plan_instead_of_calling_it_missing(tiny_dirs, tmp_path, engines, capsys):
    run = tmp_path / "run"
    run_cells(parse_config(small_config(tmp_path, tiny_dirs)), run, engines, progress=False)
    plan = run / "plan.jsonl"
    plan.write_text(plan.read_text() + "not json\n")
    assert main(["check", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"{plan}:3: not valid JSON" in err and "plan.jsonl is corrupt" in err and "has no" not in err
    plan.write_text('[1, 2]\n')
    assert main(["check", str(run)]) == 2
    assert f"{plan}:1: not a plan row" in capsys.readouterr().err
    plan.write_text('{"cell": "mine|base|se')  # killed while the first plan line was written
    assert main(["check", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"{plan} holds no complete plan line" in err and "--config" in err and "does not exist" not in err


def test_check_names_a_corrupt_cell_log_line_as_a_note_and_the_samples_stay_ok(tiny_dirs, tmp_path, engines, capsys):
    """cells.jsonl logs each finished cell; a line of it hand-edited or cut off (a kill) was skipped without a word."""
    run = tmp_path / "run"
    run_cells(parse_config(small_config(tmp_path, tiny_dirs)), run, engines, progress=False)
    log = run / "cells.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    log.write_text(lines[0] + "{oops\n" + "".join(lines[1:]) + '{"cell": "mi')  # a corrupt line, a torn last one
    assert main(["check", str(run)]) == 0  # every sample is stored once: the log is not the samples
    out = capsys.readouterr().out
    assert f"note: {log}:2: not valid JSON" in out and f"note: {log}:{len(lines) + 2}: torn last line" in out


def test_check_and_dry_run_need_no_lock_and_change_nothing(tiny_dirs, tmp_path, engines, capsys):
    from baco.sweep.lock import RunLock

    config_path = tmp_path / "sweep.yaml"
    config_path.write_text(json.dumps(small_config(tmp_path, tiny_dirs)))
    run = tmp_path / "run"
    run_cells(parse_config(small_config(tmp_path, tiny_dirs)), run, engines, progress=False)
    path = run / "samples.jsonl"
    path.write_bytes(path.read_bytes()[:-10])
    torn = path.read_bytes()
    with RunLock(run):
        assert main(["sweep", str(config_path), "--out", str(run), "--dry-run"]) == 0
        assert main(["check", str(run)]) == 1
    out = capsys.readouterr()
    assert "mine|base|seed=0" in out.out and "3/4 stored, 1 missing" in out.out
    assert out.err.count("a sweep is writing") == 2
    assert path.read_bytes() == torn


def test_a_changed_configuration_is_refused_on_the_same_run_directory(tiny_dirs, tmp_path, engines):
    from baco.errors import IntegrityError

    run = tmp_path / "run"
    run_cells(parse_config(small_config(tmp_path, tiny_dirs)), run, engines, progress=False)
    changed = small_config(tmp_path, tiny_dirs, sampling={"max_new_tokens": 9})
    with pytest.raises(IntegrityError, match="already holds cell 'mine|p:0.5|seed=0' made with other settings"):
        run_cells(parse_config(changed), run, engines, progress=False)
    grown = small_config(tmp_path, tiny_dirs, n=3)  # more samples per prompt: the same ids, and more
    assert run_cells(parse_config(grown), run, engines, progress=False)["generated"] == 2 * 2


def test_a_dry_run_of_a_changed_configuration_says_the_run_would_be_refused(tiny_dirs, tmp_path, engines, capsys):
    """The dry run previews the real one: it listed the changed cells as '0/4 stored, 4 missing' and exited 0,
    while the sweep it previews stops at once."""
    run = tmp_path / "run"
    run_cells(parse_config(small_config(tmp_path, tiny_dirs)), run, engines, progress=False)
    before = {name: (run / name).read_bytes() for name in ("samples.jsonl", "plan.jsonl")}
    changed = tmp_path / "changed.yaml"
    changed.write_text(json.dumps(small_config(tmp_path, tiny_dirs, sampling={"max_new_tokens": 9})))
    assert main(["sweep", str(changed), "--out", str(run), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"baco: error: {run} already holds cell 'mine|p:0.5|seed=0' made with other settings")
    assert {name: (run / name).read_bytes() for name in before} == before


def test_a_sweep_rerun_with_a_smaller_n_records_its_plan_and_its_report_leaves_the_rest_out(tiny_dirs, tmp_path,
                                                                                             engines, capsys):
    """The plan read back is what the latest run asked for: after n=3 then n=2, `baco check` and `baco report`
    count against n=2; the third samples stay in the file (append-only), unused, and the page says how many it
    leaves out and why. Growing n again plans them again, and they are used without being made twice."""
    import html
    import re

    from baco.report import build_report
    from baco.sweep import ledger

    run = tmp_path / "run"
    run_cells(parse_config(small_config(tmp_path, tiny_dirs, n=3)), run, engines, progress=False)
    log = io.StringIO()
    assert run_cells(parse_config(small_config(tmp_path, tiny_dirs, n=2)), run, engines, progress=False,
                     log=log)["generated"] == 0
    assert "note: 4 stored samples are outside this run's plan" in log.getvalue()  # 2 cells x 2 prompts x 1
    plan = ledger.read_plan(run)
    assert {key: sorted(ids) for key, ids in plan.items()} == {
        key: [(i, k) for i in range(2) for k in range(2)] for key in ("mine|p:0.5|seed=0", "mine|base|seed=0")}
    assert main(["check", str(run), "--verbose"]) == 0
    out = capsys.readouterr()
    assert "mine|p:0.5|seed=0: 4/4 stored, 2 outside the plan" in out.out
    assert out.err.startswith("ok: 2 cells, 8 of 8 samples stored, 0 missing") and "; 4 outside the plan" in out.err
    page = build_report(run)
    assert ("<p class='meta' id='left-out'>" + html.escape("4 stored samples left out: 4 outside their cell's "
                                                            "latest plan (an earlier run asked for more).")) in page
    assert set(re.findall(r"· sample (\d+) ·", page)) == {"0", "1"}
    assert run_cells(parse_config(small_config(tmp_path, tiny_dirs, n=3)), run, engines, progress=False,
                     log=io.StringIO())["generated"] == 0
    assert len(ledger.read_plan(run)["mine|base|seed=0"]) == 2 * 3
    assert "id='left-out'" not in build_report(run)


def test_eval_counts_a_sample_stored_twice_once_and_names_a_torn_line(tiny_dirs, tmp_path, capsys):
    out = tmp_path / "samples.jsonl"
    assert main(generate_argv(tiny_dirs, out, "--prompt", "Name a fruit.", "--n", "3")) == 0
    lines = out.read_text().splitlines(keepends=True)
    doubled = tmp_path / "doubled.jsonl"
    doubled.write_text("".join(lines) + lines[0] + lines[1][:30])
    result = tmp_path / "m.json"
    assert main(["eval", str(doubled), "--metrics", "distinct-1", "--out", str(result), "--quiet"]) == 0
    data = json.loads(result.read_text())
    assert data["counts"]["default"]["p-punc:0.5"]["responses"] == 3
    assert any("stored twice" in w for w in data["warnings"])
    assert any("doubled.jsonl:5: torn last line" in w for w in data["warnings"])


def test_the_quality_score_cache_survives_a_line_torn_inside_a_utf8_character(tmp_path):
    from baco.evaluate.cache import ScoreCache

    path = tmp_path / "quality-scores.jsonl"
    path.write_bytes(b'{"key": "a", "value": 0.5}\n{"key": "b\xe2\x82')
    cache = ScoreCache(path)
    assert cache.values == {"a": 0.5}
    cache.add("scorer", [("p", "r")], [1.0])
    assert len(ScoreCache(path).values) == 2


def test_a_run_directory_from_before_ids_resumes_without_regenerating(tiny_dirs, tmp_path, engines, capsys):
    config = parse_config(small_config(tmp_path, tiny_dirs))
    run = tmp_path / "run"
    run_cells(config, run, engines, progress=False)
    rows = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    legacy = [{k: v for k, v in r.items() if k != "id"} for r in rows[:-1]]  # no ids, one sample missing
    (run / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in legacy))
    (run / "plan.jsonl").unlink()
    (run / "cells.jsonl").write_text("".join(json.dumps({"cell": c.key, "complete": True}) + "\n"
                                             for c in config.cells))
    assert main(["check", str(run)]) == 2  # no plan: says to pass --config
    assert "--config" in capsys.readouterr().err
    counts = run_cells(config, run, engines, progress=False)
    assert counts == {"generated": 1, "kept": 7, "cells": 2}
    assert main(["check", str(run)]) == 0
    assert SampleStore(run / "samples.jsonl").read()[-1]["id"] == rows[-1]["id"]


def test_eval_leaves_other_tools_id_fields_alone(tmp_path):
    from baco.evaluate.io import read_records

    path = tmp_path / "tool.jsonl"
    path.write_text("".join(json.dumps({"id": "q1", "prompt": "Name a fruit.", "response": r}) + "\n"
                            for r in ["fig", "plum", "lime"]))
    records, warnings = read_records([path])
    assert [r.response for r in records] == ["fig", "plum", "lime"] and not warnings


def test_read_jsonl_reads_each_sample_once_and_rows_without_ids_all(tiny_dirs, tmp_path):
    from baco.decode.records import read_jsonl

    out = tmp_path / "samples.jsonl"
    assert main(generate_argv(tiny_dirs, out, "--prompt", "Name a fruit.", "--n", "2")) == 0
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines) + lines[1] + lines[0][:20])
    with pytest.warns(UserWarning) as caught:
        assert len(read_jsonl(out)) == 2
    assert {"torn last line", "stored twice"} <= {w for m in caught for w in ("torn last line", "stored twice")
                                                  if w in str(m.message)}
    old = tmp_path / "old.jsonl"  # written before ids
    old.write_text("".join(json.dumps({k: v for k, v in json.loads(line).items() if k != "id"}) + "\n"
                           for line in lines * 2))
    assert len(read_jsonl(old)) == 4


def test_atomic_write_gives_files_the_umask_permissions_not_0600(tmp_path):
    """results.json, table.md, plots and report.html are written via a temporary file; the file a
    reader gets must have the permissions any other new file has (umask), like samples.jsonl."""
    from baco.storage import atomic_write

    old = os.umask(0o022)
    try:
        written = atomic_write(tmp_path / "report.html", "<html></html>")
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
    finally:
        os.umask(old)
    assert oct(written.stat().st_mode & 0o777) == oct(plain.stat().st_mode & 0o777) == oct(0o644)


def test_generate_rerun_with_reordered_or_added_prompts_does_not_store_the_same_samples_again(tiny_dirs, tmp_path,
                                                                                              capsys):
    """A sample depends on its prompt's text and sample index, not on the prompt's place in the list: a rerun
    after a prompt was added at the top must not append the finished samples again under new ids (which
    `baco eval` would then count twice)."""
    out = tmp_path / "samples.jsonl"
    assert main(generate_argv(tiny_dirs, out, "--prompt", "Name a fruit.", "--prompt", "Why?", "--n", "2")) == 0
    first = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(first) == 4
    assert main(generate_argv(tiny_dirs, out, "--prompt", "Tell a joke.", "--prompt", "Name a fruit.",
                              "--prompt", "Why?", "--n", "2")) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[:4] == first
    assert [(r["prompt"], r["sample_index"]) for r in rows[4:]] == [("Tell a joke.", 0), ("Tell a joke.", 1)]
    made = [(r["prompt"], r["sample_index"], tuple(r["token_ids"])) for r in rows]
    assert len(set(made)) == len(made)  # no sample stored twice
    # all there, in any order: nothing to do
    before = out.read_bytes()
    assert main(generate_argv(tiny_dirs, out, "--prompt", "Why?", "--prompt", "Tell a joke.",
                              "--prompt", "Name a fruit.", "--n", "2")) == 0
    assert out.read_bytes() == before and "nothing to do" in capsys.readouterr().err
    # another seed is another sample
    assert main(generate_argv(tiny_dirs, out, "--prompt", "Why?", "--n", "2", "--seed", "4")) == 0
    assert len(out.read_text().splitlines()) == 8


def rows_of(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def prompt_flags(*prompts):
    return [flag for p in prompts for flag in ("--prompt", p)]


class Killed(BaseException):
    """The process died (nothing in baco catches a BaseException that is not KeyboardInterrupt)."""


def test_a_killed_generate_of_a_repeated_prompt_resumes_to_the_file_of_an_uninterrupted_run(tiny_dirs, tmp_path,
                                                                                             monkeypatch):
    """A prompts file holding one line twice: each copy has its own samples, and a run killed after any
    number of them (or a file holding only the second copy's) completes to the uninterrupted run's samples."""
    from baco.storage import JsonlAppender

    prompts = write_prompts(tmp_path / "prompts.jsonl", ["Name a fruit.", "Why?", "Name a fruit."])
    argv = lambda out: generate_argv(tiny_dirs, out, "--prompts", str(prompts), "--n", "2")  # noqa: E731
    whole = tmp_path / "whole.jsonl"
    assert main(argv(whole)) == 0
    expected = {r["id"]: r["token_ids"] for r in rows_of(whole)}
    assert len(expected) == 6
    copies = [{tuple(r["token_ids"]) for r in rows_of(whole) if r["prompt_index"] == i} for i in (0, 2)]
    assert len(copies[0]) == len(copies[1]) == 2 and copies[0].isdisjoint(copies[1])

    def killed_after(count):
        written, append = [], JsonlAppender.append

        def dying(self, row):
            if len(written) == count:
                raise Killed
            written.append(row)
            append(self, row)
        return dying

    for count in (1, 3, 5):
        out = tmp_path / f"killed-{count}.jsonl"
        with monkeypatch.context() as patch:
            patch.setattr(JsonlAppender, "append", killed_after(count))
            with pytest.raises(Killed):
                main(argv(out))
        assert len(rows_of(out)) == count
        assert main(argv(out)) == 0
        assert {r["id"]: r["token_ids"] for r in rows_of(out)} == expected and len(rows_of(out)) == 6
    partial = tmp_path / "second-copy-only.jsonl"  # the first copy's samples are not found under the second's
    partial.write_text("".join(json.dumps(r) + "\n" for r in rows_of(whole) if r["prompt_index"] == 2))
    assert main(argv(partial)) == 0
    assert {r["id"]: r["token_ids"] for r in rows_of(partial)} == expected and len(rows_of(partial)) == 6


def test_a_generate_stopped_by_sigterm_keeps_its_finished_samples_says_so_and_a_rerun_completes_them(tiny_dirs,
                                                                                                     tmp_path):
    """SIGTERM (`kill`, `timeout`, a scheduler ending a job) stops `baco generate` as Ctrl-C does: the samples
    finished so far are in the file, whole, the command says how many and exits 143; the rerun completes the file
    to an uninterrupted run's samples. (Before, SIGTERM killed the process without a word.)"""
    import signal
    import subprocess
    import sys
    import time

    argv = lambda out: generate_argv(tiny_dirs, out, "--prompt", "Name a fruit.", "--n", "40",  # noqa: E731
                                     "--batch-size", "1", "--max-new-tokens", "12")
    out = tmp_path / "stopped.jsonl"
    source = str(Path(baco.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([source, os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, "-m", "baco", *argv(out)], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out.is_file() and out.read_text().count("\n") >= 2) and child.poll() is None:
        assert time.monotonic() < deadline, "no sample written in 120 s"
        time.sleep(0.05)
    child.send_signal(signal.SIGTERM)
    stderr = child.communicate(timeout=120)[1]
    assert child.returncode == 143, stderr[-2000:]
    kept = rows_of(out)  # every line whole
    assert 2 <= len(kept) < 40
    assert f"terminated (SIGTERM): {len(kept)} finished samples kept in {out}; rerun the same command" in stderr
    whole = tmp_path / "whole.jsonl"
    assert main(argv(whole)) == 0
    expected = {r["id"]: r["token_ids"] for r in rows_of(whole)}
    assert all(expected[r["id"]] == r["token_ids"] for r in kept)
    assert main(argv(out)) == 0
    assert {r["id"]: r["token_ids"] for r in rows_of(out)} == expected and len(rows_of(out)) == 40


@pytest.mark.parametrize("signum, code, said", [(signal.SIGTERM, 143, "terminated (SIGTERM)"),
                                                (signal.SIGINT, 130, "interrupted")], ids=["SIGTERM", "Ctrl-C"])
def test_a_stop_signal_landing_just_after_a_sample_is_written_counts_that_sample_as_kept(tiny_dirs, tmp_path,
                                                                                       monkeypatch, capsys, signum,
                                                                                       code, said):
    """The signal arrives right after the first sample's line is written, before the command has counted it: the
    line saying what was kept counts it (it said 0 with the sample in the file, a race CI met on a Ray run)."""
    from baco.storage import JsonlAppender

    write = JsonlAppender.append

    def write_then_signal(self, row):
        write(self, row)
        os.kill(os.getpid(), signum)

    monkeypatch.setattr(JsonlAppender, "append", write_then_signal)
    out = tmp_path / "stopped.jsonl"
    argv = generate_argv(tiny_dirs, out, "--prompt", "Name a fruit.", "--n", "4", "--batch-size", "1",
                         "--max-new-tokens", "6")
    assert main(argv) == code
    assert len(rows_of(out)) == 1
    assert f"{said}: 1 finished samples kept in {out}" in capsys.readouterr().err


def test_generate_rerun_finds_each_copy_of_a_repeated_prompt_after_reordering_or_adding_prompts(tiny_dirs, tmp_path,
                                                                                                capsys):
    """A copy is known by its prompt text and its number among the copies (kept when the prompts are
    reordered with the copies in their order, or one is added), not by its place in the list."""
    fruit, why, joke = "Name a fruit.", "Why?", "Tell a joke."
    out = tmp_path / "samples.jsonl"
    assert main(generate_argv(tiny_dirs, out, *prompt_flags(fruit, why, fruit), "--n", "2")) == 0
    # as written before copies were told apart: the first copy's rows have no occurrence field
    out.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "occurrence" or v}) + "\n"
                           for r in rows_of(out)))
    first = rows_of(out)
    assert main(generate_argv(tiny_dirs, out, *prompt_flags(why, fruit, joke, fruit), "--n", "2")) == 0
    rows = rows_of(out)
    assert rows[:6] == first
    assert [(r["prompt"], r["occurrence"], r["sample_index"]) for r in rows[6:]] == [(joke, 0, 0), (joke, 0, 1)]
    # a third copy is new: its samples are made, and differ from the other copies'
    assert main(generate_argv(tiny_dirs, out, *prompt_flags(fruit, fruit, why, fruit, joke), "--n", "2")) == 0
    rows = rows_of(out)
    assert [(r["prompt"], r["occurrence"]) for r in rows[8:]] == [(fruit, 2), (fruit, 2)]
    assert len({(r["prompt"], r.get("occurrence", 0), r["sample_index"]) for r in rows}) == len(rows) == 10
    assert len({tuple(r["token_ids"]) for r in rows if r["prompt"] == fruit}) == 6
    before = out.read_bytes()  # all there, in any order with the copies in theirs: nothing to do
    assert main(generate_argv(tiny_dirs, out, *prompt_flags(joke, fruit, why, fruit, fruit), "--n", "2")) == 0
    assert out.read_bytes() == before and "nothing to do" in capsys.readouterr().err


def test_a_row_whose_config_or_task_field_was_edited_is_not_filed_under_another_method(tiny_dirs, tmp_path, engines,
                                                                                       capsys):
    """Results file each sample by its `config` and `task` fields: a row whose fields contradict its cell
    (an edit by hand) must be reported and left out, not counted as a sample of another method."""
    from baco.sweep import ledger
    from baco.sweep.results import sweep_records
    from baco.sweep.run import plan_sweep

    config = parse_config(small_config(tmp_path, tiny_dirs))
    run = tmp_path / "run"
    run_cells(config, run, engines, progress=False)
    path = run / "samples.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    expected = {r["id"]: r["token_ids"] for r in rows}
    edited = next(i for i, r in enumerate(rows) if r["config"] == "base")
    rows[edited]["config"] = "p:0.5"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["check", str(run)]) == 1
    assert "mine|base|seed=0: 3/4 stored, 1 missing, 1 not in the plan" in capsys.readouterr().out
    log = io.StringIO()
    assert run_cells(config, run, engines, progress=False, log=log)["generated"] == 1  # made again, in its cell
    assert "mine|base|seed=0: 3/4 stored, 1 missing, 1 not in the plan" in log.getvalue()
    used = ledger.audit(run, plan_sweep(config)[1]).rows
    assert {r["id"]: r["token_ids"] for r in used} == expected
    by_method = {}
    for record in sweep_records(config, used):
        by_method[record.method] = by_method.get(record.method, 0) + 1
    assert by_method == {"p:0.5": 4, "base": 4}


def test_the_lines_of_a_samples_file_that_hold_no_sample_are_named_in_file_order(tmp_path):
    from baco.storage import scan_jsonl
    from baco.sweep.ledger import store_problems

    path = tmp_path / "samples.jsonl"
    path.write_text('{"note": "not a sample"}\nnot json\n[1, 2]\n{"prompt": "cut')
    problems = store_problems(scan_jsonl(path))
    assert [p.split(": ", 1)[0] for p in problems] == [f"{path}:{n}" for n in (1, 2, 3, 4)]
    assert "not a sample row" in problems[0] and "not valid JSON" in problems[1] and "torn" in problems[3]


def test_a_sample_row_edited_to_lack_what_readers_use_is_named_skipped_and_made_again(tiny_dirs, tmp_path, engines,
                                                                                      capsys):
    """A row that is valid JSON and names its cell, but lacks its text, or holds per-token lists of another length
    (a hand edit, a line patched by another tool), failed the sweep's evaluation and `baco report` with a
    KeyError while `baco check` called the run directory fine: it is a corrupt line, named and left out, and
    its sample is made again."""
    from baco.report import build_report
    from baco.sweep import ledger
    from baco.sweep.results import sweep_records
    from baco.sweep.run import plan_sweep

    config = parse_config(small_config(tmp_path, tiny_dirs))
    run = tmp_path / "run"
    run_cells(config, run, engines, progress=False)
    path = run / "samples.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    expected = {r["id"]: r["token_ids"] for r in rows}
    del rows[1]["text"]
    rows[3]["sources"] = None
    rows[5]["reasons"] = rows[5]["reasons"][:-1]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["check", str(run)]) == 1
    out = capsys.readouterr()
    assert f"{path}:2: a sample row without a valid text" in out.out and f"{path}:4: " in out.out
    assert f"{path}:6: a sample row whose per-token lists" in out.out
    assert "5 of 8 samples stored, 3 missing, 0 stored twice, 3 torn or corrupt lines" in out.err
    with pytest.warns(UserWarning, match="3 corrupt lines skipped"):
        assert "class='sample'" in build_report(run)
    assert run_cells(config, run, engines, progress=False)["generated"] == 3
    used = ledger.audit(run, plan_sweep(config)[1]).rows
    assert {r["id"]: r["token_ids"] for r in used} == expected
    assert len(sweep_records(config, used)) == 8
