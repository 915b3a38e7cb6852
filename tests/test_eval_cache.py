"""The quality-score cache: a rerun scores only new (prompt, response) pairs and gives the same results."""

import json
from pathlib import Path

import pytest

from baco.evaluate.cache import ScoreCache
from baco.evaluate.io import Record
from baco.evaluate.registry import resolve_metrics
from baco.evaluate.resources import EvalOptions, Resources
from baco.evaluate.runner import evaluate_records

PAIRS = [("Name a fruit.", "An apple."), ("Name a fruit.", "A ripe pear, sliced."),
         ("Tell me a story.", "Once upon a time a dragon walked."), ("Tell me a story.", "The end.")]


def records(pairs):
    return [Record(task="t", method="m", prompt=p, response=r, order=(i, 0), where=f"#{i}")
            for i, (p, r) in enumerate(pairs)]


@pytest.fixture(scope="module")
def reward_dir(tmp_path_factory):
    from baco.testing import make_tiny_classifier

    return make_tiny_classifier(tmp_path_factory.mktemp("reward"), num_labels=1, seed=3)


def run(pairs, model_dir, cache_path, **provided):
    resources = Resources(EvalOptions(reward_model=model_dir, device="cpu",
                                      score_cache=str(cache_path) if cache_path else None))
    for name, value in provided.items():
        resources.provide(name, value)
    return evaluate_records(records(pairs), resolve_metrics(["reward", "distinct-1"]), resources)


def scores(result):
    return [row["reward"] for row in result.per_prompt]


def test_a_fully_cached_evaluation_loads_no_model_and_gives_the_same_scores(reward_dir, tmp_path):
    cache = tmp_path / "scores.jsonl"
    first = run(PAIRS, reward_dir, cache)
    assert len(cache.read_text().splitlines()) == len(PAIRS)
    # the reward model handed over now cannot score anything: any cache miss would fail
    second = run(PAIRS, reward_dir, cache, reward_model=object())
    assert scores(second) == scores(first)
    assert scores(first) == scores(run(PAIRS, reward_dir, None))  # the cache changes nothing


def test_only_new_pairs_are_scored_and_appended(reward_dir, tmp_path):
    cache = tmp_path / "scores.jsonl"
    run(PAIRS[:2], reward_dir, cache)
    run(PAIRS, reward_dir, cache)
    assert len(cache.read_text().splitlines()) == len(PAIRS)  # the first two were not scored again
    # equal up to float round-off: the first two were scored in a batch of another shape
    assert scores(run(PAIRS, reward_dir, cache)) == pytest.approx(scores(run(PAIRS, reward_dir, None)), abs=1e-5)


def test_an_answer_given_twice_is_scored_once_and_a_rerun_from_the_cache_repeats_the_run(reward_dir, tmp_path):
    """Samples often repeat (short answers, greedy cells): each distinct (prompt, response) is scored once, so
    both copies get one value, the cache holds one line for it, and a rerun reading the cache gives exactly the
    first run's scores (scored twice in batches of other shapes, a bf16 model gave the copies different values,
    the cache kept the last, and a rerun's table moved)."""
    cache = tmp_path / "scores.jsonl"
    doubled = PAIRS + PAIRS[:2]
    first = run(doubled, reward_dir, cache)
    assert len(cache.read_text().splitlines()) == len(PAIRS)
    assert scores(run(doubled, reward_dir, cache, reward_model=object())) == scores(first)


def test_another_model_is_another_scorer(reward_dir, tmp_path):
    from baco.testing import make_tiny_classifier

    cache = tmp_path / "scores.jsonl"
    other = make_tiny_classifier(tmp_path / "other", num_labels=1, seed=4)
    first, second = run(PAIRS, reward_dir, cache), run(PAIRS, other, cache)
    assert len(cache.read_text().splitlines()) == 2 * len(PAIRS)
    assert scores(first) != scores(second)


def test_a_line_cut_by_a_kill_is_ignored_and_the_next_line_starts_fresh(tmp_path):
    path = tmp_path / "scores.jsonl"
    cache = ScoreCache(path)
    cache.add("s", [("p", "a"), ("p", "b")], [1.0, None])
    path.write_text(path.read_text() + '{"key": "abc", "val')  # killed mid-write
    reread = ScoreCache(path)
    assert reread.get("s", "p", "a") == 1.0 and reread.get("s", "p", "b") is None
    reread.add("s", [("p", "c")], [2.5])
    lines = path.read_text().splitlines()
    assert json.loads(lines[-1])["value"] == 2.5
    assert ScoreCache(path).get("s", "p", "c") == 2.5


def test_scores_handed_in_twice_are_stored_once(tmp_path):
    """A score shard that Ray ran again after its worker died sends its scores twice; the cache file keeps one line
    per score, so it reads as the file of a run without the failure (as does a pair repeated within one batch)."""
    path = tmp_path / "scores.jsonl"
    ScoreCache(path).add("s", [("p", "a"), ("p", "b")], [1.0, None])
    once = path.read_text()
    cache = ScoreCache(tmp_path / "twice.jsonl")
    cache.add("s", [("p", "a"), ("p", "b")], [1.0, None])
    cache.add("s", [("p", "a"), ("p", "b"), ("p", "a")], [1.0, None, 1.0])
    assert (tmp_path / "twice.jsonl").read_text() == once
    cache.add("t", [("p", "a")], [0.5])  # another scorer's score of the same pair is its own
    assert len((tmp_path / "twice.jsonl").read_text().splitlines()) == 3


@pytest.mark.parametrize("content", [
    '{"prompt": "Name a fruit.", "response": "fig"}\n',  # a samples file: JSON rows that are not scores
    "my notes\nmore notes\n",  # not JSON at all
    '{"key": "a", "value": 0.5}\n{"prompt": "Name a fruit.", "response": "fig"}\n',  # scores, and a sample
])
def test_a_file_that_is_not_a_score_cache_is_refused_and_left_as_it_was(tmp_path, content):
    from baco.errors import OutputError

    path = tmp_path / "cache.jsonl"
    path.write_text(content)
    with pytest.raises(OutputError, match="is not a score cache file"):
        ScoreCache(path)
    assert path.read_text() == content


def test_a_score_cache_that_is_a_file_being_evaluated_is_refused_before_scoring(tmp_path):
    from baco.errors import OutputError
    from baco.evaluate.runner import evaluate_files

    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps({"prompt": p, "response": r, "method": "m"}) + "\n" for p, r in PAIRS))
    before = samples.read_text()
    (tmp_path / "sub").mkdir()
    options = EvalOptions(score_cache=str(tmp_path / "sub" / ".." / "samples.jsonl"), reward_model="/no/such/model")
    with pytest.raises(OutputError, match="is the samples file"):
        evaluate_files([samples], ["reward"], options)
    assert samples.read_text() == before


# one evaluation's appends: it waits for GO to exist (so that both start together), then adds BATCHES batches
APPENDER = """
import os, sys, time
from baco.evaluate.cache import ScoreCache
path, go, writer, batches, per_batch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
cache = ScoreCache(path)
while not os.path.exists(go):
    time.sleep(0.001)
for batch in range(batches):
    pairs = [(f"prompt {writer}", f"response {batch}-{i}") for i in range(per_batch)]
    cache.add(f"scorer {writer}", pairs, [float(i) for i in range(per_batch)])
"""


def test_two_evaluations_appending_to_one_cache_at_once_leave_only_whole_lines(tmp_path):
    """`baco eval --score-cache` takes no lock: two evaluations may append to one cache at the same time. Each
    batch goes out in one write of whole lines, so their lines never interleave inside a line, and every
    score of both is read back."""
    import os
    import subprocess
    import sys

    import baco

    env = dict(os.environ, PYTHONPATH=str(Path(baco.__file__).parents[1]))  # this baco, wherever it is installed
    path, go = tmp_path / "scores.jsonl", tmp_path / "go"
    writers, batches, per_batch = 2, 100, 400  # a batch of ~36 KB: several buffer flushes if written buffered
    procs = [subprocess.Popen([sys.executable, "-c", APPENDER, str(path), str(go), str(w), str(batches),
                               str(per_batch)], env=env) for w in range(writers)]
    go.touch()
    assert [proc.wait(timeout=300) for proc in procs] == [0] * writers
    lines = path.read_bytes().split(b"\n")
    assert lines.pop() == b""  # the file ends with a whole line
    assert all(json.loads(line).keys() == {"key", "value"} for line in lines)
    assert len(lines) == len(ScoreCache(path).values) == writers * batches * per_batch
