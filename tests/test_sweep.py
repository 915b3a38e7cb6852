"""`baco sweep` on the tiny pair: the grid, resume after a kill, the evaluation outputs, config errors."""

import json
from pathlib import Path

import pytest

from baco.storage import JsonlAppender
from baco.sweep import Engines, SampleStore, SweepConfigError, parse_config, run_cells, run_sweep
from baco.sweep.store import SampleStore as Store


@pytest.fixture(scope="module")
def engines(tiny_dirs):
    base, aligned = tiny_dirs
    return Engines.load(str(base), str(aligned), device="cpu")


def raw_config(tmp_path, seeds=(0,)) -> dict:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["Name a fruit.", "Why?", "Tell a joke."]))
    return {
        "name": "tiny", "n": 3, "seeds": list(seeds),
        "tasks": [{"path": str(prompts), "name": "mine"}],
        "sampling": {"max_new_tokens": 6, "min_p": 0.05},
        "methods": {"base": {"router": "base", "sweep": {"temperature": [0.7, 1.2]}},
                    "p-punc": {"router": "p-punc", "values": [0.3, 0.7]},
                    "eft": {"router": "eft", "values": [0.5]}},
        "metrics": {"diversity": ["distinct-2", "self-bleu"], "quality": ["relevance"]},
    }


@pytest.fixture
def config(tmp_path, tiny_dirs):
    return parse_config(raw_config(tmp_path))


def keyed(rows):
    return {(r["cell"], r["prompt_index"], r["sample_index"]): r["token_ids"] for r in rows}


def test_the_grid_is_methods_times_values_times_tasks_times_seeds(config):
    names = [c.name for c in config.configurations]
    assert names == ["base@temperature=0.7", "base@temperature=1.2", "p-punc:0.3", "p-punc:0.7", "eft:0.5"]
    assert [c.sampling.temperature for c in config.configurations[:2]] == [0.7, 1.2]
    assert len(config.cells) == 5


def test_every_cell_writes_n_samples_per_prompt_once(config, engines, tmp_path):
    run_cells(config, tmp_path / "run", engines, progress=False)
    rows = Store(tmp_path / "run" / "samples.jsonl").read()
    assert len(rows) == 5 * 3 * 3 == len(keyed(rows))
    by_config = {r["config"]: r for r in rows}
    assert set(by_config["base@temperature=0.7"]["sources"]) == {"base"}
    assert by_config["base@temperature=0.7"]["sampling"]["temperature"] == 0.7
    assert set(by_config["eft:0.5"]["sources"]) == {"mix"}
    costs = [json.loads(line) for line in (tmp_path / "run" / "cells.jsonl").read_text().splitlines()]
    assert [c["cell"] for c in costs] == [c.key for c in config.cells]
    assert all(c["samples"] == 9 and c["seconds"] > 0 for c in costs)


def test_a_prompt_repeated_in_a_task_file_is_planned_once(tmp_path):
    # the evaluation groups by prompt text and measures each prompt over its n samples, so a repeat
    # would give one prompt twice as many samples as the others
    from baco.sweep.run import plan_sweep
    from baco.tasks import TaskWarning

    texts = ["Name a fruit.", "Why?", "Name a fruit.", "Tell a joke.", "Why?"]
    path = tmp_path / "repeats.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in texts))
    raw = {**raw_config(tmp_path), "tasks": [{"path": str(path), "name": "rep"}, {"path": str(path), "name": "rep3",
                                                                                   "limit": 3}]}
    config = parse_config(raw)
    with pytest.warns(TaskWarning, match="skipped 2 item"):
        items_of, plan = plan_sweep(config)
    distinct = list(dict.fromkeys(texts))
    for task in config.tasks:
        assert [item.prompt for item in items_of[task]] == distinct  # each text once; limit 3 = all three
    for cell in config.cells:
        assert len(plan[cell.key]) == len(distinct) * config.n


def test_slots_sized_from_memory_store_the_samples_of_fixed_batches(tmp_path, engines):
    raw = raw_config(tmp_path)
    fixed = parse_config({**raw, "batch_size": 2})
    auto = parse_config({**raw, "batch_size": "auto",
                         "methods": {**raw["methods"], "eft": {"router": "eft", "values": [0.5], "batch_size": "auto"}}})
    assert auto.batch_size == "auto" and auto.configurations[-1].batch_size == "auto"
    auto.memory_fraction = 0.95
    run_cells(fixed, tmp_path / "fixed", engines, progress=False)
    run_cells(auto, tmp_path / "auto", engines, progress=False)
    assert keyed(Store(tmp_path / "auto" / "samples.jsonl").read()) == \
        keyed(Store(tmp_path / "fixed" / "samples.jsonl").read())


def run_killed_after(stored: int, config, out, engines, monkeypatch) -> None:
    """run_cells, interrupted (as by Ctrl-C) when it tries to store sample number `stored` + 1."""
    appended = []
    original = JsonlAppender.append

    def dies(self, row):
        if self.path.name == "samples.jsonl":
            if len(appended) == stored:
                raise KeyboardInterrupt
            appended.append(row)
        original(self, row)

    monkeypatch.setattr(JsonlAppender, "append", dies)
    with pytest.raises(KeyboardInterrupt):
        run_cells(config, out, engines, progress=False)
    monkeypatch.setattr(JsonlAppender, "append", original)


def test_a_killed_sweep_resumes_without_redoing_or_losing_work(config, engines, tmp_path, monkeypatch):
    run_cells(config, tmp_path / "full", engines, progress=False)
    expected = keyed(Store(tmp_path / "full" / "samples.jsonl").read())

    run_killed_after(7, config, tmp_path / "killed", engines, monkeypatch)
    path = tmp_path / "killed" / "samples.jsonl"
    with open(path, "a") as handle:  # the kill also cut a line in half
        handle.write('{"cell": "mine|eft:0.5|seed=0", "prompt_ind')
    kept = path.read_text().splitlines()[:7]

    with pytest.warns(UserWarning, match="incomplete last line"):
        counts = run_cells(config, tmp_path / "killed", engines, progress=False)
    assert counts["kept"] == 7 and counts["generated"] == len(expected) - 7
    rows = Store(path).read()
    assert path.read_text().splitlines()[:7] == kept  # finished samples untouched
    assert len(rows) == len(expected) and keyed(rows) == expected  # same results, no duplicates
    assert run_cells(config, tmp_path / "killed", engines, progress=False)["generated"] == 0


def test_a_killed_multi_pass_cell_resumes_with_only_its_missing_samples(engines, tmp_path, monkeypatch):
    """Negative prompting's sample k depends on samples < k: the cell reruns, only missing samples are stored."""
    raw = {**raw_config(tmp_path), "methods": {"negative": {"router": "negative", "values": [1.5]}}}
    config = parse_config(raw)
    run_cells(config, tmp_path / "full", engines, progress=False)
    expected = keyed(Store(tmp_path / "full" / "samples.jsonl").read())
    assert len(expected) == 3 * 3

    run_killed_after(4, config, tmp_path / "killed", engines, monkeypatch)
    counts = run_cells(config, tmp_path / "killed", engines, progress=False)
    assert counts["kept"] == 4 and counts["generated"] == len(expected) - 4
    rows = Store(tmp_path / "killed" / "samples.jsonl").read()
    assert len(rows) == len(expected) and keyed(rows) == expected
    assert {r["router"] for r in rows} == {"negative:1.5"}
    assert run_cells(config, tmp_path / "killed", engines, progress=False)["generated"] == 0

def test_the_sweep_evaluates_and_writes_table_json_and_plots(config, engines, tmp_path):
    summary = run_sweep(config, tmp_path / "out", engines, progress=False)
    out = tmp_path / "out"
    assert {p.name for p in (out / "plots").iterdir()} == {"pareto-mine-seed0.png", "pareto-mine-seed0.svg"}
    table = (out / "table.md").read_text()
    for method in ("base", "p-punc", "eft"):
        assert f"| {method} |" in table
    overall = summary["coverage_dominance"]["overall"]
    assert all(0 <= overall[m]["coverage"]["mean"] <= 1 for m in overall)
    assert sum(overall[m]["dominance"]["mean"] for m in overall) == pytest.approx(1.0)
    planes = summary["planes"][0]
    assert {(p["x"], p["y"]) for p in planes} == {("distinct-2", "relevance"), ("self-bleu", "relevance")}
    saved = json.loads((out / "results.json").read_text())
    assert saved["methods"] == ["base", "p-punc", "eft"]
    # quality scores are cached beside the samples (one relevance score per sample) and reused
    cached = (out / "quality-scores.jsonl").read_text().splitlines()
    assert len(cached) == len(SampleStore(out / "samples.jsonl").read()) == 45
    again = run_sweep(config, tmp_path / "out", engines, progress=False, results_dir=tmp_path / "again")
    assert (out / "quality-scores.jsonl").read_text().splitlines() == cached
    assert again["coverage_dominance"] == summary["coverage_dominance"]


@pytest.mark.parametrize("raw, message", [
    ({"methods": {"x": {"router": "nope"}}, "tasks": ["open-ended"]}, "methods.x: unknown router 'nope'"),
    ({"methods": {"x": {"router": "p", "values": [7, -1]}}, "tasks": ["open-ended"]}, r"methods.x: .*threshold must be >= 0, got -1"),
    ({"methods": {"x": {"router": "p"}}, "tasks": []}, "tasks. is empty"),
    ({"methods": {"x": {"router": "base", "sweep": {"colour": [1]}}}, "tasks": ["open-ended"]}, "not sweepable"),
    ({"methods": {"x": {"router": "p", "values": [0.3]}}, "tasks": ["open-ended"], "n": 1}, "samples per prompt"),
    ({"methods": {"x": {"router": "p", "values": [0.3]}}, "tasks": ["open-ended"], "sampling": {"top_p": 2}}, "top_p"),
    ({"methods": {"x": {"router": "p", "values": [0.3]}}, "tasks": ["open-ended"], "colour": 1}, "unknown keys"),
])
def test_bad_configurations_are_refused_before_anything_runs(raw, message):
    with pytest.raises(SweepConfigError, match=message):
        parse_config(raw)


def test_multi_pass_methods_run_in_a_sweep_and_are_not_rerun(verbalizing_dirs, tmp_path):
    # the aligned model answers verbalized sampling's request with a numbered list (conftest's NUMBERED_ANSWERS)
    engines = Engines.load(*map(str, verbalizing_dirs), device="cpu")
    prompts = tmp_path / "p.jsonl"
    asked = ["Name a fruit.", "Tell me a story about a dragon."]
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in asked))
    config = parse_config({"n": 3, "tasks": [{"path": str(prompts), "name": "mine"}],
                           "sampling": {"max_new_tokens": 24},
                           "methods": {"negative": {"router": "negative", "values": [0.5]},
                                       "verbalized": {"router": "verbalized", "values": [2]}}})
    assert [c.name for c in config.configurations] == ["negative:0.5", "verbalized:2"]
    run_cells(config, tmp_path / "run", engines, progress=False)
    rows = Store(tmp_path / "run" / "samples.jsonl").read()
    negative = [r for r in rows if r["config"] == "negative:0.5"]
    assert len(negative) == 6 and {r["router"] for r in negative} == {"negative:0.5"}
    verbalized = [r for r in rows if r["config"] == "verbalized:2"]
    indices = sorted((r["prompt_index"], r["sample_index"]) for r in verbalized)
    assert indices == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert {r["router"] for r in verbalized} == {"verbalized:2"}
    assert {r["text"] for r in verbalized} <= {"Apple", "Mango", "A red dragon", "A tiny dragon"}  # items only
    # verbalized sampling may yield fewer samples than asked; its cell is complete and not rerun
    assert run_cells(config, tmp_path / "run", engines, progress=False)["generated"] == 0


def test_strategy_knobs_are_validated_like_router_knobs():
    with pytest.raises(SweepConfigError, match="verbalized: k must be an integer"):
        parse_config({"methods": {"v": {"router": "verbalized", "values": [1.5]}}, "tasks": ["open-ended"]})


CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_configuration_parses_and_names_its_cells(path):
    from baco.sweep import load_config

    config = load_config(path)
    assert config.cells and len({c.key for c in config.cells}) == len(config.cells)
    assert len(config.cells) == len(config.configurations) * len(config.tasks) * len(config.seeds)



def test_two_seeds_give_each_seeds_value_and_their_spread(engines, tmp_path):
    import statistics

    config = parse_config(raw_config(tmp_path, seeds=(0, 1)))
    summary = run_sweep(config, tmp_path / "out", engines, progress=False)
    for method, aggregates in summary["coverage_dominance"]["overall"].items():
        for agg, spread in aggregates.items():
            values = list(spread["by_seed"].values())
            assert sorted(spread["by_seed"]) == [0, 1], (method, agg)
            assert spread["mean"] == pytest.approx(statistics.fmean(values))
            assert spread["std"] == pytest.approx(statistics.stdev(values))
    # each seed is its own set of planes: a seed's dominance shares sum to 1 over the methods
    for seed in (0, 1):
        shares = [a["dominance"]["by_seed"][seed] for a in summary["coverage_dominance"]["overall"].values()]
        assert sum(shares) == pytest.approx(1.0)
    table = (tmp_path / "out" / "table.md").read_text()
    assert "Per seed (average over tasks):" in table and "| method | Cov. seed 0 | Cov. seed 1 |" in table


@pytest.mark.parametrize("table", ["table-3seeds.md", "table-3seeds-wide.md", "table-1130-3seeds.md",
                                   "table-1130-3seeds-wide.md"])
def test_docs_results_quotes_the_three_seed_tables_it_cites(table):
    # docs/results.md shows these sweeps' table.md outputs; a row edited or left from another run would
    # disagree with the per-seed values printed under it
    docs = Path(__file__).resolve().parents[1] / "docs"
    page = (docs / "results.md").read_text(encoding="utf-8").splitlines()
    rows = [line for line in (docs / "results" / table).read_text(encoding="utf-8").splitlines() if line.startswith("| ")]
    assert rows and [row for row in rows if row not in page] == []
