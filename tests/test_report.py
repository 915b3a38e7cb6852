"""`baco report`: a self-contained HTML page with the table, the plots and coloured tokens; rendered in Chromium."""

import html
import json
import re
import shutil
import subprocess

import pytest

from baco.report import build_report, token_spans, write_report
from baco.sweep import Engines, parse_config, run_sweep

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


METHODS = {"aligned": {"router": "aligned", "sweep": {"temperature": [0.7, 1.3]}},
           "p-punc": {"router": "p-punc", "values": [0.3, 0.9]}}


def tiny_config(prompts, methods=METHODS, seeds=(0, 1), n=2):
    return parse_config({
        "name": "tiny", "n": n, "seeds": list(seeds), "tasks": [{"path": str(prompts), "name": "mine"}],
        "sampling": {"max_new_tokens": 12, "min_p": 0.05}, "methods": methods,
        "metrics": {"diversity": ["distinct-2"], "quality": ["relevance"]},
    })


@pytest.fixture(scope="module")
def run_dir(tiny_dirs, tmp_path_factory):
    base, aligned = tiny_dirs
    tmp = tmp_path_factory.mktemp("report")
    prompts = tmp / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["Name a fruit.", "Why <b>not</b>?"]))
    run_sweep(tiny_config(prompts), tmp / "run", Engines.load(str(base), str(aligned), device="cpu"), progress=False)
    return tmp / "run"


def test_the_page_is_self_contained_with_table_plots_and_coloured_tokens(run_dir):
    page = build_report(run_dir)
    assert "<table id='results'>" in page and "<td>p-punc</td>" in page and "<td>aligned</td>" in page
    assert page.count("data:image/png;base64,") == 2  # one task x two seeds
    # the per-seed table is a table of its own, not rows glued onto the main one
    assert ("<table id='results-1'><tr><th>method</th><th>Cov. seed 0</th><th>Cov. seed 1</th>"
            "<th>Dom. seed 0</th>") in page
    assert "class='tok-base'" in page and "class='tok-aligned'" in page
    assert "base top-1" in page and "nats" in page
    assert "src='http" not in page and "<script" not in page  # nothing to fetch, nothing to run


def test_the_coloured_spans_spell_each_samples_text(run_dir):
    rows = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    for row in rows:
        spans = token_spans(row)
        assert html.unescape(re.sub(r"<[^>]+>", "", spans)) == row["text"]
        assert spans.count("<span") == len(re.findall("tok-(?:base|aligned|mix)", spans))


def test_a_run_cut_short_before_a_configurations_first_prompt_still_reports_the_others(run_dir, tmp_path):
    cut = tmp_path / "cut"
    shutil.copytree(run_dir, cut)
    rows = [json.loads(line) for line in (cut / "samples.jsonl").read_text().splitlines()]
    kept = [r for r in rows if not (r["method"] == "aligned" and r["prompt_index"] == 0)]  # killed before them
    (cut / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    shown = re.findall(r"<div class='meta'>([^<]*) · sample", build_report(cut))
    assert shown and all(name.startswith("p-punc") for name in shown)


def test_a_method_removed_from_the_configuration_leaves_the_page_as_it_leaves_the_tables(run_dir, tiny_dirs, tmp_path):
    edited = tmp_path / "edited"
    shutil.copytree(run_dir, edited)
    # the user drops p-punc from the YAML and reruns: nothing to generate, the tables are remade without it
    config = tiny_config(run_dir.parent / "prompts.jsonl", {"aligned": METHODS["aligned"]})
    run_sweep(config, edited, Engines.load(*map(str, tiny_dirs), device="cpu"), progress=False)
    assert json.loads((edited / "results.json").read_text())["methods"] == ["aligned"]
    page = build_report(edited)
    shown = re.findall(r"<div class='meta'>([^<]*) · sample", page)
    assert shown and all(name.startswith("aligned") for name in shown)
    stored = [json.loads(line) for line in (edited / "samples.jsonl").read_text().splitlines()]
    dropped = sum(row["method"] == "p-punc" for row in stored)  # 2 configurations x 2 seeds x 2 prompts x n=2
    assert dropped == 16
    assert (f"<p class='meta' id='left-out'>{dropped} stored samples left out: {dropped} of cells the configuration "
            f"of results.json does not list.</p>") in page
    assert "id='left-out'" not in build_report(run_dir)  # the run as configured leaves nothing out
    (edited / "plan.jsonl").unlink()  # a run directory from before plans were recorded: selected by cell
    assert re.findall(r"<div class='meta'>([^<]*) · sample", build_report(edited)) == shown


def test_a_method_name_with_asterisks_is_shown_as_named_in_the_table(run_dir, tiny_dirs, tmp_path):
    # table.md puts the averages in bold (**0.500**); the page drops those markers, not the name's own
    config = tiny_config(run_dir.parent / "prompts.jsonl", {"*wild*": METHODS["p-punc"], "aligned": METHODS["aligned"]})
    run_sweep(config, tmp_path / "run", Engines.load(*map(str, tiny_dirs), device="cpu"), progress=False)
    page = build_report(tmp_path / "run")
    assert "<td>*wild*</td>" in page and "<td>wild</td>" not in page
    assert "<td>**" not in page  # the averages are shown without their markers


def test_no_run_directory_is_a_clear_error(tmp_path):
    from baco.errors import BacoError

    with pytest.raises(BacoError, match="no samples.jsonl"):
        build_report(tmp_path)


@pytest.mark.parametrize("name", ["samples.jsonl", "plan.jsonl", "cells.jsonl", "results.json", "table.md",
                                  "quality-scores.jsonl", "plots/pareto-mine-seed0.png"])
def test_report_out_naming_a_file_of_the_run_directory_is_refused_and_the_file_kept(run_dir, tmp_path, capsys, name):
    """`--out RUN/samples.jsonl` (a slip of the tab key) would write the page over hours of samples: refused, as
    `baco eval --out` refuses the samples file it evaluates."""
    from baco.cli import main

    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    before = (copy / name).read_bytes()
    assert main(["report", str(copy), "--out", str(copy / name)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"baco: error: --out {str(copy / name)!r} is ") and "give --out another name" in err
    assert (copy / name).read_bytes() == before
    assert main(["report", str(copy), "--out", str(copy / "report.html")]) == 0  # an earlier page is replaced


def test_a_results_file_that_is_not_an_object_is_a_one_line_error(run_dir, tmp_path, capsys):
    from baco.cli import main

    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    (broken / "results.json").write_text("[1, 2, 3]\n")
    assert main(["report", str(broken)]) == 2
    err = capsys.readouterr().err
    assert err == (f"baco: error: {broken / 'results.json'} is not a sweep's results (a JSON object), it holds a "
                   f"list; rerun `baco sweep` to rewrite it\n")


def test_a_results_file_with_hand_edited_metric_lists_still_gives_the_page(run_dir, tmp_path):
    edited = tmp_path / "edited"
    shutil.copytree(run_dir, edited)
    summary = json.loads((edited / "results.json").read_text())
    summary["diversity"], summary["quality"] = {"distinct-2": 1}, [3]
    (edited / "results.json").write_text(json.dumps(summary))
    page = build_report(edited)
    assert ("diversity metrics: (unreadable in results.json: dict); quality metrics: (unreadable in results.json: "
            "list)") in page
    assert "<h2>Samples</h2>" in page


@pytest.mark.parametrize("plan", [True, False])
def test_a_page_made_from_corrupt_samples_says_how_many_lines_it_skipped(run_dir, tmp_path, capsys, plan):
    """Every line unreadable (a disk error's garbage): the page has no samples and says why, and so does the
    command, rather than a page that looks like a run with nothing in it."""
    from baco.cli import main

    corrupt = tmp_path / "corrupt"
    shutil.copytree(run_dir, corrupt)
    lines = len((corrupt / "samples.jsonl").read_bytes().splitlines())
    (corrupt / "samples.jsonl").write_bytes(b"\xab\xcd garbage\n" * lines)
    if not plan:
        (corrupt / "plan.jsonl").unlink()  # a run directory from before plans were recorded
    assert main(["report", str(corrupt)]) == 0
    said = (f"{lines} corrupt lines skipped (first: {corrupt / 'samples.jsonl'}:1: not valid UTF-8 (byte 0xab at "
            f"column 1)); run `baco check {corrupt}`")
    assert f"baco: warning: {said}\n" in capsys.readouterr().err
    page = (corrupt / "report.html").read_text()
    assert f"<p class='meta' id='skipped'>{html.escape(said)}</p>" in page and "class='sample'" not in page
    assert "id='skipped'" not in build_report(run_dir)


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it where it can)")
def test_headless_chromium_renders_the_page_with_plots_and_colours(run_dir, tmp_path):
    page = write_report(run_dir, tmp_path / "report.html")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert "tok-base" in dom.stdout and "class=\"plot\"" in dom.stdout
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, *flags, f"--screenshot={shot}", "--window-size=1200,3000", page.as_uri()],
                   capture_output=True, timeout=120)
    from PIL import Image

    image = Image.open(shot).convert("RGB")
    colours = set(image.getdata())
    assert (0xFF, 0xE0, 0x8A) in colours  # base-written tokens (yellow background) are painted
    assert (0xA8, 0xE6, 0xF0) in colours  # aligned-written tokens (cyan background)
    assert len(colours) > 50  # the plot's anti-aliased lines and markers, not a blank page


def test_the_samples_shown_come_from_the_lowest_seed_by_number_not_by_text():
    """Seeds 2 and 10: the page shows seed 2's samples ("...@seed10" sorts before "...@seed2" as text)."""
    from baco.report import pick_samples
    from baco.sweep.config import cell_key

    rows = [{"task": "t", "method": "m", "config": "m", "prompt_index": 0, "sample_index": i, "cell": cell_key("t", "m", seed),
             "sampling": {"seed": seed}, "text": f"seed {seed}"} for seed in (10, 2) for i in range(2)]
    shown = pick_samples(rows)["t"]["m"]
    assert [r["text"] for r in shown] == ["seed 2", "seed 2"]


# ---------------------------------------------------------------- the outputs belong together

STALE = "id='stale'"  # the page's line saying that results.json, table.md, the plots or the samples disagree


def output_files(run) -> dict[str, bytes]:
    """results.json, table.md and every file in plots/, by their path in the run directory."""
    names = ["results.json", "table.md"] + [f"plots/{p.name}" for p in sorted((run / "plots").iterdir())]
    return {name: (run / name).read_bytes() for name in names if (run / name).is_file()}


def shown_plots(page: str) -> dict[str, bytes]:
    """The plots a page shows: name -> PNG bytes."""
    import base64

    return {name: base64.b64decode(data) for name, data in
            re.findall(r"<img class='plot' alt='([^']*)' src='data:image/png;base64,([^']*)'>", page)}


class Killed(BaseException):
    """A kill while the evaluation writes its outputs (raised in place of a file's write)."""


def test_an_evaluation_killed_between_its_output_files_leaves_a_page_that_is_whole_or_says_it_is_not(
        run_dir, tiny_dirs, tmp_path, monkeypatch):
    """results.json, table.md and the plots are written one after another. An evaluation killed between any two
    of them leaves some of its files beside the previous evaluation's: the page must then show one evaluation
    whole (the table and the plots of the results.json that picks its samples) or say that they disagree."""
    import baco.sweep.plots
    import baco.sweep.results
    from baco.storage import atomic_write
    from baco.sweep.results import write_outputs

    # the user drops a method and a seed and evaluates again: every output file changes, seed 1's plot goes
    new = tmp_path / "new"
    shutil.copytree(run_dir, new)
    config = tiny_config(run_dir.parent / "prompts.jsonl", {"aligned": METHODS["aligned"]}, seeds=[0])
    summary = run_sweep(config, new, Engines.load(*map(str, tiny_dirs), device="cpu"), progress=False)
    old_files, new_files = output_files(run_dir), output_files(new)
    assert STALE not in build_report(run_dir) and STALE not in build_report(new)

    kill_at, writes = None, []

    def write(path, data):
        if len(writes) == kill_at:
            raise Killed
        writes.append(path)
        return atomic_write(path, data)

    monkeypatch.setattr(baco.sweep.results, "atomic_write", write)
    monkeypatch.setattr(baco.sweep.plots, "atomic_write", write)
    write_outputs(summary, tmp_path / "counted")
    count, flagged = len(writes), 0
    for kill_at in range(count):
        writes.clear()
        killed = tmp_path / f"killed-{kill_at}"
        shutil.copytree(run_dir, killed)
        with pytest.raises(Killed):
            write_outputs(summary, killed)
        page = build_report(killed)
        if STALE in page:
            flagged += 1
            continue
        files = output_files(killed)
        made = old_files if files["results.json"] == old_files["results.json"] else new_files
        assert files["results.json"] == made["results.json"], kill_at
        assert files["table.md"] == made["table.md"], f"killed before write {kill_at}: table.md of the other run"
        pngs = {name[len("plots/"):-len(".png")]: data for name, data in made.items() if name.endswith(".png")}
        assert shown_plots(page) == pngs, f"killed before write {kill_at}: the plots of another evaluation"
    assert flagged  # some kill left a mixture, and the page said so


def test_table_and_plots_without_results_json_are_flagged_as_unfinished(run_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    (run / "results.json").unlink()  # an evaluation killed before it wrote results.json, the last of its files
    page = build_report(run)
    assert STALE in page and "no results.json" in page


def test_plots_of_seeds_no_longer_evaluated_are_removed_and_not_shown(run_dir, tiny_dirs, tmp_path):
    """A sweep evaluated again with fewer seeds removes the plots its evaluation no longer makes (its own files
    only), and the page shows only the plots results.json names."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    (run / "plots" / "my-figure.png").write_bytes(b"the user's own file")
    config = tiny_config(run_dir.parent / "prompts.jsonl", seeds=[0])
    run_sweep(config, run, Engines.load(*map(str, tiny_dirs), device="cpu"), progress=False)
    assert sorted(p.name for p in (run / "plots").iterdir()) == ["my-figure.png", "pareto-mine-seed0.png",
                                                                  "pareto-mine-seed0.svg"]
    page = build_report(run)
    assert list(shown_plots(page)) == ["pareto-mine-seed0"] and STALE not in page
    # a plot results.json does not name (left by an older baco, or copied in) is not shown either
    shutil.copy(run_dir / "plots" / "pareto-mine-seed1.png", run / "plots")
    assert list(shown_plots(build_report(run))) == ["pareto-mine-seed0"]


def test_report_results_shows_the_table_and_plots_a_sweep_wrote_with_results_dir_beside_the_samples_they_describe(
        run_dir, tiny_dirs, tmp_path, capsys):
    """`baco sweep --seeds 0 --results DIR` evaluates a seed subset of a shared run directory into DIR; `baco report
    RUN --results DIR` is its page (DIR/report.html): DIR's table and plots, the samples of its cells. Before, the
    page could only show the run directory's own results."""
    from baco.cli import main

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    one_seed = tmp_path / "seed0"
    config = tiny_config(run_dir.parent / "prompts.jsonl", seeds=[0])
    run_sweep(config, run, Engines.load(*map(str, tiny_dirs), device="cpu"), progress=False, results_dir=one_seed)
    assert main(["report", str(run), "--results", str(one_seed)]) == 0
    page = (one_seed / "report.html").read_text()
    assert list(shown_plots(page)) == ["pareto-mine-seed0"] and STALE not in page
    # the samples of its cells: seed 1's (2 prompts x n=2 x 4 configurations) are left out, and said so
    assert "16 stored samples left out: 16 of cells the configuration of results.json does not list." in page
    assert "Cov. seed 1" not in page and "Cov. seed 1" in build_report(run)  # DIR's table; RUN's own has both seeds
    assert list(shown_plots(build_report(run))) == ["pareto-mine-seed0", "pareto-mine-seed1"]  # RUN's own page
    assert main(["report", str(run), "--results", str(tmp_path / "nowhere")]) == 2
    assert "holds no results.json" in capsys.readouterr().err
    assert main(["report", str(run), "--results", str(one_seed), "--out", str(one_seed / "results.json")]) == 2


def test_a_sample_text_edited_after_the_evaluation_is_named_by_the_page_and_by_check(run_dir, tmp_path, capsys):
    """A text changed by hand keeps its sample's id and its row valid, so the table silently described the old
    texts; results.json now records a hash of the texts it was made from, and the page and `check` say so. A
    results.json written before that (no hash) is not called stale."""
    from baco.cli import main

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    assert STALE not in build_report(run)
    lines = (run / "samples.jsonl").read_text().splitlines(keepends=True)
    row = json.loads(lines[2])
    row["text"] = row["text"] + " (improved by hand)"
    (run / "samples.jsonl").write_text("".join(lines[:2]) + json.dumps(row) + "\n" + "".join(lines[3:]))
    says = "the texts of the samples results.json was made from differ from those in the run directory now"
    assert says in html.unescape(build_report(run))
    assert main(["check", str(run)]) == 1 and says in capsys.readouterr().out
    summary = json.loads((run / "results.json").read_text())
    del summary["made_from"]["texts"]  # as an older baco wrote it
    (run / "results.json").write_text(json.dumps(summary))
    assert says not in html.unescape(build_report(run))


def test_samples_planned_after_the_evaluation_are_named_by_the_page_and_by_check(run_dir, tiny_dirs, tmp_path,
                                                                                capsys):
    """A sweep rerun with a larger n and killed before its evaluation finished (or run with --no-eval) has a
    new plan: the samples the page picks are no longer those results.json was made from. The page, `baco
    report` and `baco check` say so, until the sweep is evaluated again."""
    from baco.cli import main

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    config = tiny_config(run_dir.parent / "prompts.jsonl", n=3)
    engines = Engines.load(*map(str, tiny_dirs), device="cpu")
    run_sweep(config, run, engines, evaluate=False, progress=False)
    page = build_report(run)
    assert STALE in page and "results.json was made from 32 samples" in html.unescape(page)
    assert main(["report", str(run)]) == 0
    assert "baco: warning: results.json was made from 32 samples" in capsys.readouterr().err
    assert main(["check", str(run)]) == 1
    out = capsys.readouterr()
    assert "results.json was made from 32 samples" in out.out and out.err.startswith("problems: ")
    run_sweep(config, run, engines, progress=False)
    assert STALE not in build_report(run)
    assert main(["check", str(run)]) == 0


def test_a_sample_lost_after_the_evaluation_is_not_blamed_on_a_changed_plan(run_dir, tmp_path, capsys):
    """A line deleted from samples.jsonl: the plan is unchanged, so the line must not say it changed, and it points
    to `baco check`, which names what is missing."""
    from baco.cli import main

    lost = tmp_path / "lost"
    shutil.copytree(run_dir, lost)
    lines = (lost / "samples.jsonl").read_text().splitlines(keepends=True)
    (lost / "samples.jsonl").write_text("".join(lines[1:]))
    assert main(["check", str(lost)]) == 1
    said = capsys.readouterr().out
    assert f"results.json was made from {len(lines)} samples, but the run directory now has {len(lines) - 1} " \
           f"planned samples" in said
    assert "or samples were lost or edited since: see `baco check`" in said and "plan now selects" not in said


def test_a_results_json_of_an_older_baco_shows_the_plots_its_tasks_and_seeds_name(run_dir, tmp_path):
    """results.json written before it listed its files and samples: nothing to check, and the plots shown are
    those its tasks and seeds name, not every PNG in plots/."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    summary = json.loads((run / "results.json").read_text())
    del summary["files"], summary["made_from"]
    (run / "results.json").write_text(json.dumps(summary))
    (run / "plots" / "my-figure.png").write_bytes((run / "plots" / "pareto-mine-seed0.png").read_bytes())
    page = build_report(run)
    assert list(shown_plots(page)) == ["pareto-mine-seed0", "pareto-mine-seed1"] and STALE not in page


def test_the_page_says_what_the_cells_ran_with_and_where_they_differ(run_dir, tmp_path):
    """The page names the library versions, thread count and CPU the samples were made with (cells.jsonl), as
    lm-eval's results record their environment; a cell made with another thread count is named, not hidden."""
    import torch
    import transformers

    page = build_report(run_dir)
    line = re.search(r"<p class='meta' id='numerics'>([^<]*)</p>", page).group(1)
    assert f"torch {torch.__version__}" in line and f"transformers {transformers.__version__}" in line
    assert f"threads {torch.get_num_threads()}" in line and "differ" not in line
    other = tmp_path / "other"
    shutil.copytree(run_dir, other)
    rows = [json.loads(line) for line in (other / "cells.jsonl").read_text().splitlines()]
    rows[-1]["numerics"]["threads"] = torch.get_num_threads() + 1  # the last cell, as if resumed with more threads
    (other / "cells.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    line = re.search(r"<p class='meta' id='numerics'>([^<]*)</p>", build_report(other)).group(1)
    assert f"torch {torch.__version__}" in line and "threads" in line.split("differ")[1]
    assert f"threads {torch.get_num_threads()} (" in line and f"{torch.get_num_threads() + 1} (1 cell)" in line
