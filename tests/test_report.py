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


def tiny_config(prompts, methods=METHODS):
    return parse_config({
        "name": "tiny", "n": 2, "seeds": [0, 1], "tasks": [{"path": str(prompts), "name": "mine"}],
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
