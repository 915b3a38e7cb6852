"""`baco eval` and `baco metrics` end to end: baco samples, other tools' JSONL, bad input."""

import csv
import json
import subprocess
import sys

import pytest

from baco.cli import main
from baco.evaluate.io import SamplesError, group_records, read_records
from baco.evaluate.registry import UnknownMetricError, list_metrics, resolve_metrics
from baco.evaluate.runner import evaluate_files


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def load(out):
    return json.loads(out.read_text()), list(csv.DictReader(out.with_suffix(".csv").open()))


def test_eval_reads_baco_generate_samples_and_writes_json_and_csv(collab, tmp_path, capsys):
    from baco import SamplingParams
    from baco.decode.records import write_jsonl

    path = tmp_path / "samples.jsonl"
    with path.open("w") as handle:
        for router in ("p-punc:0.3", "p-punc:0.7", "aligned"):
            write_jsonl(collab.generate(["Name a fruit.", "Tell me a story."], router=router, n=3,
                                        sampling=SamplingParams(max_new_tokens=16, seed=0)), handle)
    out = tmp_path / "eval" / "metrics.json"
    assert main(["eval", str(path), "--metrics", "lexical", "--out", str(out), "--quiet"]) == 0
    data, rows = load(out)
    methods = data["summary"]["default"]
    assert set(methods) == {"p-punc:0.3", "p-punc:0.7", "aligned"}
    assert data["counts"]["default"]["aligned"]["prompts"] == 2
    assert data["counts"]["default"]["aligned"]["responses"] == 6
    assert set(methods["aligned"]) == {s.name for s in list_metrics() if s.group == "lexical" and s.kind != "quality"}
    assert data["pareto"] is None  # no quality metric selected, no plane
    assert [r["method"] for r in rows] == list(methods)
    assert len(data["per_prompt"]) == 6 and all(r["n"] == 3 for r in data["per_prompt"])
    assert capsys.readouterr().out == ""  # --quiet


def test_eval_groups_other_tools_rows_by_prompt_and_method(tmp_path, capsys):
    a = write_rows(tmp_path / "tool_a.jsonl", [{"prompt": "Name a fruit.", "response": r}
                                               for r in ["apple", "apple", "apple"]])
    b = write_rows(tmp_path / "b.jsonl", [{"prompt": "Name a fruit.", "response": r, "method": "mine"}
                                          for r in ["apple pie", "kiwi jam", "ripe mango"]])
    nb = write_rows(tmp_path / "nb.jsonl", [{"prompt": "Name a fruit.", "generations": ["fig", "plum", "lime"]}])
    out = tmp_path / "m.json"
    assert main(["eval", str(a), str(b), str(nb), "--metrics", "distinct-1,first-sentences", "--out", str(out)]) == 0
    summary = json.loads(out.read_text())["summary"]["default"]
    assert summary["tool_a"]["distinct-1"] == pytest.approx(1 / 3)  # identical samples: 1 type / 3 tokens
    assert summary["mine"]["distinct-1"] == 1.0 and summary["nb"]["distinct-1"] == 1.0
    table = capsys.readouterr().out
    assert "tool_a" in table and "mine" in table and "distinct-1" in table
    # --method-from file ignores the "method" field
    assert main(["eval", str(b), "--metrics", "distinct-1", "--method-from", "file", "--out", str(out),
                 "--quiet"]) == 0
    assert list(json.loads(out.read_text())["summary"]["default"]) == ["b"]


def test_bad_lines_are_reported_with_their_number_and_the_rest_is_kept(tmp_path, capsys):
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b'{"prompt": "p", "response": "one two"}\n'
                     b'{oops\n'
                     b'{"prompt": "p", "response": "caf\xe9 three"}\n'  # Latin-1 byte, not UTF-8
                     b'{"prompt": "p"}\n'
                     b'["not", "an", "object"]\n'
                     b'\n'
                     b'{"prompt": "p", "response": "four five"}\n')
    out = tmp_path / "m.json"
    assert main(["eval", str(path), "--metrics", "distinct-1", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"{path}:2: not valid JSON" in err
    assert f"{path}:3: not valid UTF-8" in err
    assert f"{path}:4: no response field" in err
    assert f"{path}:5: expected an object" in err
    data = json.loads(out.read_text())
    assert data["counts"]["default"]["mixed"]["responses"] == 3  # lines 1, 3 and 7
    assert len(data["warnings"]) == 4
    records, _ = read_records([path])
    assert records[1].response == "caf\ufffd three"


def test_a_file_given_twice_or_through_a_link_is_read_once_with_a_warning(tmp_path, capsys):
    path = write_rows(tmp_path / "tool.jsonl", [{"prompt": "p", "response": r} for r in ("a b", "a c")])
    link = tmp_path / "link.jsonl"
    link.symlink_to(path)
    once, _ = read_records([path])
    records, warnings = read_records([path, path, link])
    assert [(r.method, r.response) for r in records] == [(r.method, r.response) for r in once]
    assert warnings == [f"{path} is given twice; read once", f"{link} is the file {str(path)!r} again; read once"]
    out = tmp_path / "m.json"
    assert main(["eval", str(path), str(path), "--metrics", "distinct-1", "--out", str(out), "--quiet"]) == 0
    assert json.loads(out.read_text())["summary"]["default"]["tool"]["distinct-1"] == 3 / 4  # a, b, c of 4 words


def test_a_gzipped_samples_file_reads_as_its_jsonl_under_the_same_method_name(tmp_path):
    import gzip

    (tmp_path / "plain").mkdir()
    plain = write_rows(tmp_path / "plain" / "tool.jsonl", [{"prompt": "p", "response": r} for r in ("a b", "a c")])
    packed = tmp_path / "tool.jsonl.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    records, warnings = read_records([packed])
    assert [(r.method, r.prompt, r.response) for r in records] == [(r.method, r.prompt, r.response)
                                                                   for r in read_records([plain])[0]]
    assert records[0].method == "tool" and warnings == []
    cut = tmp_path / "cut.jsonl.gz"  # a writer killed mid-file
    cut.write_bytes(packed.read_bytes()[:-12])
    with pytest.raises(SamplesError, match="cut.jsonl.gz: a gzip file that cannot be decompressed"):
        read_records([cut])


def test_methods_sampled_at_different_n_are_named_in_a_warning(tmp_path):
    """Distinct-n and self-BLEU over 2 responses are not those over 4: the comparison is flagged."""
    rows = [{"prompt": p, "response": f"{p} {i}", "method": "two"} for p in ("x", "y") for i in range(2)]
    rows += [{"prompt": p, "response": f"{p} {i}", "method": "four"} for p in ("x", "y") for i in range(4)]
    result = evaluate_files([write_rows(tmp_path / "s.jsonl", rows)], metrics=["distinct-1"])
    assert [w for w in result.warnings if "different numbers of responses" in w] == [
        "task 'default': the methods have different numbers of responses per prompt (two n=2, four n=4); diversity "
        "metrics depend on n, so compare methods sampled at the same n"]
    same = evaluate_files([write_rows(tmp_path / "t.jsonl", [r for r in rows if r["method"] == "four"])],
                          metrics=["distinct-1"])
    assert not [w for w in same.warnings if "different numbers" in w]


def test_files_of_one_name_in_two_folders_are_two_methods_named_with_their_folders(tmp_path):
    for folder, answers in (("llama", ["a b", "a c"]), ("qwen", ["x y", "z w"])):
        (tmp_path / folder).mkdir()
        write_rows(tmp_path / folder / "samples.jsonl", [{"prompt": "p", "response": r} for r in answers])
    write_rows(tmp_path / "samples.json", [{"prompt": "p", "response": r} for r in ("a", "b")])
    paths = [tmp_path / "llama" / "samples.jsonl", tmp_path / "qwen" / "samples.jsonl"]
    for method_from in ("auto", "file"):
        records, _ = read_records(paths, method_from=method_from)
        assert {r.method: r.response for r in records if r.response in ("a b", "x y")} == \
            {"llama/samples": "a b", "qwen/samples": "x y"}
    records, _ = read_records([tmp_path / "llama" / "samples.jsonl", tmp_path / "samples.json"])
    assert {r.method for r in records} == {"llama/samples", f"{tmp_path.name}/samples"}
    records, _ = read_records([tmp_path / "llama" / "samples.jsonl", tmp_path / "samples.json", tmp_path / "qwen"
                               / ".." / "samples.json"])  # one file twice: no third method
    assert len({r.method for r in records}) == 2
    records, _ = read_records([paths[0]])  # alone: named as ever
    assert {r.method for r in records} == {"samples"}


def test_list_rows_skip_only_their_bad_items_and_an_empty_list_is_reported(tmp_path):
    path = write_rows(tmp_path / "lists.jsonl", [{"prompt": "p", "generations": ["a", 3, None, "b"]},
                                                 {"prompt": "q", "responses": []},
                                                 {"prompt": "q", "response": ["x", "y"]}])
    records, warnings = read_records([path])
    assert [r.response for r in records] == ["a", "", "b"]
    assert warnings == [f'{path}:1: "generations"[1] is int, not a string; skipped',
                        f'{path}:1: "generations"[2] is null; read as an empty response',
                        f'{path}:2: empty "responses" list; line skipped',
                        f'{path}:3: "response" is list, not a string; line skipped']


def test_chat_rows_and_alpaca_rows_are_read_as_prompt_and_response(tmp_path):
    """The shapes other datasets and tools write: chat "messages" (the last user turn and the reply to it) and
    Alpaca's instruction / input / output; a chat row that does not end with a reply is named, not guessed."""
    chat = [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi."},
                          {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Name a fruit."},
                          {"role": "assistant", "content": reply}]} for reply in ("Fig.", "Kiwi.")]
    alpaca = [{"instruction": "Name a fruit.", "input": "", "output": "Plum."},
              {"instruction": "Translate.", "input": "pomme", "output": "apple"}]
    bad = [{"messages": [{"role": "user", "content": "Name a fruit."}]},
           {"messages": [{"role": "user", "content": [{"type": "image"}]}, {"role": "assistant", "content": "x"}]}]
    path = write_rows(tmp_path / "other.jsonl", chat + alpaca + bad)
    records, warnings = read_records([path])
    assert [(r.prompt, r.response) for r in records] == [("Name a fruit.", "Fig."), ("Name a fruit.", "Kiwi."),
                                                         ("Name a fruit.", "Plum."), ("Translate.\n\npomme", "apple")]
    assert warnings == [f"{path}:5: a chat row's \"messages\" must end with a user turn and the assistant's reply "
                        f"to it; line skipped",
                        f'{path}:6: a "messages" turn is not an object with a string "content"; line skipped']


def test_a_chat_rows_text_parts_are_read_as_its_text_as_the_task_loader_and_batch_requests_read_them(tmp_path):
    """OpenAI's chat format lets a content be a list of parts ([{"type": "text", "text": ...}]): joined by newlines."""
    parts = [{"type": "text", "text": "Name a fruit."}, {"type": "text", "text": "Only one."}]
    rows = [{"messages": [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello."},
                          {"role": "user", "content": parts},
                          {"role": "assistant", "content": [{"type": "text", "text": "Fig."}]}]}]
    records, warnings = read_records([write_rows(tmp_path / "parts.jsonl", rows)])
    assert [(r.prompt, r.response) for r in records] == [("Name a fruit.\nOnly one.", "Fig.")]
    assert records[0].messages == [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello."},
                                   {"role": "user", "content": "Name a fruit.\nOnly one."}]
    assert warnings == []


def test_a_folder_given_as_samples_is_named_a_folder_with_the_run_directorys_samples_file(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    assert main(["eval", str(run)]) == 2
    assert f"samples file {str(run)!r} is a folder; give a JSONL file" in capsys.readouterr().err
    write_rows(run / "samples.jsonl", [{"prompt": "p", "response": "r"}])
    assert main(["eval", str(run)]) == 2
    assert f"is a folder; its samples are in {str(run / 'samples.jsonl')!r}" in capsys.readouterr().err


def test_eval_refuses_an_out_or_score_cache_that_is_a_samples_file_it_evaluates(tmp_path, capsys):
    samples = write_rows(tmp_path / "samples.json", [{"prompt": "p", "response": "r"}])
    other = write_rows(tmp_path / "other.jsonl", [{"prompt": "p", "response": "s"}])
    before = samples.read_text()
    assert main(["eval", str(other), str(samples), "--metrics", "distinct-1", "--out", str(samples)]) == 2
    assert f"--out {str(samples)!r} would write {str(samples)!r}, a samples file being evaluated" in \
        capsys.readouterr().err
    assert main(["eval", str(samples), "--metrics", "relevance", "--score-cache", str(samples)]) == 2
    assert f"score cache {str(samples)!r} is the samples file" in capsys.readouterr().err
    assert samples.read_text() == before


def test_an_out_named_csv_is_refused_rather_than_have_the_csv_written_over_the_json(tmp_path, capsys):
    path = write_rows(tmp_path / "s.jsonl", [{"prompt": "p", "response": r} for r in ("a b", "c d")])
    for name in ("m.csv", "m.CSV"):
        assert main(["eval", str(path), "--metrics", "distinct-1", "--out", str(tmp_path / name), "--quiet"]) == 2
        assert f"--out {str(tmp_path / name)!r} names the JSON output" in capsys.readouterr().err
    assert not list(tmp_path.glob("m.*"))


def test_eval_makes_the_out_files_missing_folders(tmp_path):
    path = write_rows(tmp_path / "s.jsonl", [{"prompt": "p", "response": r} for r in ("a b", "c d")])
    out = tmp_path / "runs" / "x" / "m.json"
    assert main(["eval", str(path), "--metrics", "distinct-1", "--out", str(out), "--quiet"]) == 0
    assert out.is_file() and out.with_suffix(".csv").is_file()


def test_one_sample_per_prompt_is_reported_undefined_not_zero(tmp_path, capsys):
    path = write_rows(tmp_path / "single.jsonl", [{"prompt": f"q{i}", "response": "only answer"} for i in range(3)])
    out = tmp_path / "m.json"
    assert main(["eval", str(path), "--metrics", "lexical", "--out", str(out)]) == 0
    data, rows = load(out)
    values = data["summary"]["default"]["single"]
    assert all(v is None for v in values.values())
    assert all(data["counts"]["default"]["single"][name] == 0 for name in values)
    assert rows[0]["distinct-1"] == "" and rows[0]["self-bleu"] == ""
    shown = capsys.readouterr()
    assert "n/a" in shown.out
    # the table's n/a is explained: `baco generate` writes one sample per prompt unless given --n
    warning = "method 'single' (task 'default') has one response per prompt: diversity is undefined"
    assert warning in shown.err and "--n" in shown.err
    assert any(warning in w for w in data["warnings"])
    # a method sampled n >= 2 times on some prompt is not warned about; nor are quality metrics alone
    both = write_rows(tmp_path / "both.jsonl", [{"prompt": "q", "response": r} for r in ("a", "b")]
                      + [{"prompt": "p", "response": "c"}])
    assert main(["eval", str(both), str(path), "--metrics", "distinct-1", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "method 'single'" in err and "method 'both'" not in err
    assert main(["eval", str(path), "--metrics", "relevance", "--quiet"]) == 0
    assert "one response per prompt" not in capsys.readouterr().err


def test_empty_responses_and_mixed_languages(tmp_path):
    path = write_rows(tmp_path / "odd.jsonl", [
        {"prompt": "empty", "response": ""}, {"prompt": "empty", "response": ""},
        {"prompt": "mixed", "response": "我爱苹果"}, {"prompt": "mixed", "response": "I love apples"},
        {"prompt": "mixed", "response": "Я люблю яблоки"}, {"prompt": "mixed", "response": None},
    ])
    out = tmp_path / "m.json"
    assert main(["eval", str(path), "--metrics", "distinct-1,homogenization,self-bleu", "--out", str(out),
                 "--quiet"]) == 0
    rows = {r["prompt"]: r for r in json.loads(out.read_text())["per_prompt"]}
    assert rows["empty"]["distinct-1"] is None and rows["empty"]["self-bleu"] is None
    assert rows["empty"]["homogenization"] == 1.0  # two empty answers are the same answer
    assert rows["mixed"]["n"] == 4 and rows["mixed"]["distinct-1"] == 1.0  # null read as ""
    assert rows["mixed"]["homogenization"] == 0.0


def test_default_metrics_with_judge_fluency_utility_and_pareto_on_the_tiny_pair(tiny_dirs, tmp_path, capsys):
    base, aligned = map(str, tiny_dirs)
    rows = []
    for method, answers in {"aligned": ["An apple is a fruit."] * 3,
                            "p-punc:0.5": ["An apple is a fruit.", "Try a ripe mango.", "Kiwis are green inside."],
                            "base": ["zz qq", "fruit fruit fruit", "Bananas are yellow and sweet."]}.items():
        rows += [{"prompt": "Name a fruit.", "response": a, "method": method} for a in answers]
    path = write_rows(tmp_path / "s.jsonl", rows)
    out = tmp_path / "m.json"
    assert main(["eval", str(path), "--metrics", "default,judge,fluency", "--judge-model", aligned,
                 "--fluency-model", base, "--device", "cpu", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    summary = data["summary"]["default"]
    assert data["utility_quality"] == "judge"
    assert summary["aligned"]["partitions"] == 1.0 and summary["p-punc:0.5"]["partitions"] == 3.0
    assert 1.0 <= summary["base"]["judge"] <= 5.0 and summary["base"]["fluency"] < 0
    diversity = [s.name for s in list_metrics("diversity")]
    assert len(data["pareto"]["planes"]) == len(diversity) * 3  # x relevance, judge, fluency
    overall = data["pareto"]["overall"]
    assert set(overall) == {"aligned", "p-punc", "base"}
    assert sum(m["dominance"] for m in overall.values()) == pytest.approx(1.0)
    table = capsys.readouterr().out
    assert "coverage" in table and "utility [judge]" in table


def test_metrics_command_lists_every_metric(capsys):
    assert main(["metrics"]) == 0
    listed = capsys.readouterr().out
    names = [s.name for s in list_metrics()]
    assert len([s for s in list_metrics("diversity")]) >= 11
    assert {"reward", "judge", "fluency", "relevance", "utility", "partitions", "self-bleu"} <= set(names)
    for name in names:
        assert name in listed


def test_metric_selection_by_group_and_errors(tmp_path, capsys):
    assert [s.name for s in resolve_metrics("distinct-2,distinct-1")] == ["distinct-1", "distinct-2"]
    assert {s.name for s in resolve_metrics("default")} >= {"distinct-1", "embedding-vendi", "relevance", "utility"}
    assert not {"judge", "fluency", "reward"} & {s.name for s in resolve_metrics("default")}
    with pytest.raises(UnknownMetricError, match="unknown metric 'nope'"):
        resolve_metrics("nope")
    path = write_rows(tmp_path / "s.jsonl", [{"prompt": "p", "response": "r"}])
    assert main(["eval", str(path), "--metrics", "nope"]) == 2
    assert main(["eval", str(tmp_path / "missing.jsonl")]) == 2
    (tmp_path / "junk.jsonl").write_text("nope\n")
    assert main(["eval", str(tmp_path / "junk.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "baco: error: unknown metric 'nope'" in err and "does not exist" in err
    assert "no usable rows" in err and "junk.jsonl:1: not valid JSON" in err
    assert main(["eval", str(path), "--metrics", "reward", "--quiet"]) == 2
    assert "--reward-model" in capsys.readouterr().err


@pytest.fixture
def metrics_restored():
    """Metrics registered by a test are gone after it."""
    from baco.evaluate.registry import _REGISTRY

    list_metrics()  # the built-ins registered first, so that they are kept
    saved = dict(_REGISTRY)
    yield
    _REGISTRY.clear()
    _REGISTRY.update(saved)


def test_a_metric_of_ones_own_follows_the_routers_naming_rules(tmp_path, metrics_restored):
    from baco.errors import BacoError
    from baco.evaluate.registry import register_metric

    def notebook_cell():  # a notebook runs its cell again: the metric is replaced, not refused
        @register_metric("Mean-Words", kind="diversity", higher_is_better=True, library="mine",
                         help="mean number of words per response")
        def mean_words(responses):
            return sum(len(r.split()) for r in responses) / len(responses)

    notebook_cell()
    notebook_cell()
    path = write_rows(tmp_path / "s.jsonl", [{"prompt": "p", "response": r} for r in ("a b", "c d e f")])
    out = tmp_path / "m.json"
    assert main(["eval", str(path), "--metrics", "MEAN-WORDS,distinct-1", "--out", str(out), "--quiet"]) == 0
    assert load(out)[1][0]["mean-words"] == "3.0"
    mine = dict(kind="diversity", higher_is_better=True, library="mine", help="another")
    with pytest.raises(BacoError, match="'self-bleu' is already registered .*baco.evaluate.lexical.self_bleu"):
        register_metric("Self-BLEU", **mine)(lambda responses: 0.0)
    for name, refusal in [("my,metric", "without spaces or ','"), ("my metric", "without spaces"),
                          ("Default", "'default' already names a group of metrics")]:
        with pytest.raises(BacoError, match=refusal):
            register_metric(name, **mine)


def test_a_built_in_metrics_name_is_refused_even_before_the_built_ins_load():
    """The built-ins load lazily; in a fresh interpreter, the first metric of one's own under a built-in's name is
    refused where it is registered, and the built-ins load afterwards as ever."""
    code = ("from baco.evaluate.registry import get_metric, list_metrics, register_metric\n"
            "try:\n"
            "    register_metric('Distinct-1', kind='diversity', higher_is_better=True, help='mine', library='mine')("
            "lambda responses: 1.0)\n"
            "except Exception as error:\n"
            "    print('refused:', error)\n"
            "print(get_metric('distinct-1').library != 'mine', 'distinct-2' in [s.name for s in list_metrics()])\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    refusal, listed = done.stdout.splitlines()
    assert refusal.startswith("refused: metric 'distinct-1' is already registered (by baco.evaluate.lexical")
    assert listed == "True True"  # the built-in kept its name; the others loaded


def test_an_unknown_utility_quality_metric_is_an_error_not_a_silently_missing_utility(tmp_path, capsys):
    path = write_rows(tmp_path / "s.jsonl", [{"prompt": "p", "response": r} for r in ("a b", "c d")])
    for name in ("relevence", "distinct-1"):  # a typo; a diversity metric
        assert main(["eval", str(path), "--metrics", "distinct-1,relevance,utility", "--utility-quality", name,
                     "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("baco: error: --utility-quality") and name in err and "relevance" in err


def test_responses_keep_sample_order_within_a_group(tmp_path):
    path = write_rows(tmp_path / "s.jsonl", [
        {"prompt": "p", "text": "third", "router": "r", "sample_index": 2},
        {"prompt": "p", "text": "first", "router": "r", "sample_index": 0},
        {"prompt": "p", "text": "second", "router": "r", "sample_index": 1},
    ])
    records, warnings = read_records([path])
    assert not warnings
    assert [r.response for r in group_records(records)[("default", "r", None, "p")]] == ["first", "second", "third"]
    with pytest.raises(SamplesError, match="does not exist"):
        read_records([tmp_path / "none.jsonl"])


def test_byte_order_mark_and_windows_line_ends_are_read(tmp_path):
    path = tmp_path / "win.jsonl"
    path.write_bytes('\ufeff{"prompt": "p", "response": "a"}\r\n{"prompt": "p", "response": "b"}\r\n'.encode())
    records, warnings = read_records([path])
    assert [r.response for r in records] == ["a", "b"] and not warnings


def test_one_router_at_two_temperatures_is_pooled_with_a_warning_and_sweep_configs_stay_apart(collab, tmp_path):
    from baco import SamplingParams

    cool, hot = ([s.to_dict() for s in collab.generate(["Name a fruit."], router="base", n=2,
                                                     sampling=SamplingParams(temperature=t, max_new_tokens=6, seed=1))]
                 for t in (0.7, 1.2))
    write_rows(tmp_path / "cool.jsonl", cool)
    write_rows(tmp_path / "hot.jsonl", hot)
    records, warnings = read_records([tmp_path / "cool.jsonl", tmp_path / "hot.jsonl"])
    assert {r.method for r in records} == {"base"} and len(records) == 4
    assert any("method 'base' holds samples made with 2 different sampling settings" in w and "--method-from file" in w
               for w in warnings)
    records, warnings = read_records([tmp_path / "cool.jsonl", tmp_path / "hot.jsonl"], method_from="file")
    assert {r.method for r in records} == {"cool", "hot"} and not warnings
    # a sweep's samples name their configuration: router, knob and sampling
    swept = [{**row, "config": f"base@temperature={t}"} for rows, t in ((cool, 0.7), (hot, 1.2)) for row in rows]
    records, warnings = read_records([write_rows(tmp_path / "sweep.jsonl", swept)])
    assert {r.method for r in records} == {"base@temperature=0.7", "base@temperature=1.2"} and not warnings


SWEEP_ANSWERS = {  # (config, seed) -> each prompt's three answers: the seeds differ, so pooling them would show
    ("a", 0): ["red apple", "red apple", "green pear"], ("a", 1): ["ripe mango", "sweet fig", "tart lime"],
    ("b", 0): ["a kiwi", "the plum", "one lime"], ("b", 1): ["kiwi kiwi", "kiwi", "a kiwi"],
}


def sweep_rows(seeds, prompts=("Name a fruit.", "Pick a fruit.")):
    """Rows as `baco sweep` writes them (trimmed): each names its cell and records its seed in `sampling`."""
    return [{"id": f"{config}-{seed}-{i}-{k}", "cell": f"t|{config}|seed={seed}", "task": "t", "method": config,
             "config": config, "router": "aligned", "prompt": prompt, "prompt_index": i, "sample_index": k,
             "seed": 1000 * seed + 10 * i + k,  # the row's own stream seed, derived from the run's
             "text": f"{answer} {i}", "token_ids": [], "sampling": {"temperature": 1.0, "seed": seed}}
            for (config, seed), answers in SWEEP_ANSWERS.items() if seed in seeds
            for i, prompt in enumerate(prompts) for k, answer in enumerate(answers)]


def evaluate(tmp_path, name, *files):
    """float32 embeddings: in bf16 (the default on CPUs with native bf16) a text's embedding, so its relevance,
    moves by ~1e-4 with the batch it is embedded in (measured on a CPU with AMX), and this file's seeds are
    embedded in other batches than each seed's file alone."""
    out = tmp_path / f"{name}.json"
    assert main(["eval", *map(str, files), "--metrics", "distinct-1,self-bleu,relevance", "--embedding-dtype",
                 "float32", "--out", str(out)]) == 0
    return load(out)


def test_a_two_seed_sweep_file_is_evaluated_seed_by_seed_with_the_mean_over_seeds(tmp_path, capsys):
    import statistics

    both = write_rows(tmp_path / "samples.jsonl", sweep_rows({0, 1}))
    # another tool's samples carry no seed: they are the same in every seed's planes
    tool = write_rows(tmp_path / "tool.jsonl", [{"prompt": p, "response": r, "method": "tool", "task": "t"}
                                                for p in ("Name a fruit.", "Pick a fruit.") for r in ("fig", "a fig")])
    data, csv_rows = evaluate(tmp_path, "both", both, tool)
    table = capsys.readouterr().out
    alone = {seed: evaluate(tmp_path, f"seed{seed}", write_rows(tmp_path / f"s{seed}.jsonl", sweep_rows({seed})), tool)
             for seed in (0, 1)}
    assert data["seeds"] == [0, 1]
    for seed, (single, single_csv) in alone.items():
        # each seed's numbers are those of its samples evaluated alone: diversity over n, not 2n, samples
        assert data["by_seed"][str(seed)]["summary"] == single["summary"]
        assert data["by_seed"][str(seed)]["counts"] == single["counts"]
        assert data["by_seed"][str(seed)]["pareto"]["overall"] == single["pareto"]["overall"]
        assert [r for r in csv_rows if r["seed"] == str(seed)] == [{**r, "seed": str(seed)} for r in single_csv]
    for method in ("a", "b"):
        for metric in ("distinct-1", "self-bleu", "relevance"):
            values = [alone[seed][0]["summary"]["t"][method][metric] for seed in (0, 1)]
            assert data["summary"]["t"][method][metric] == pytest.approx(statistics.fmean(values))
            assert data["spread"]["t"][method][metric]["std"] == pytest.approx(statistics.stdev(values))
        dominance = [alone[seed][0]["pareto"]["overall"][method]["dominance"] for seed in (0, 1)]
        spread = data["coverage_dominance"]["overall"][method]["dominance"]
        assert spread["mean"] == pytest.approx(statistics.fmean(dominance)) and spread["seeds"] == 2
    counts = data["counts"]["t"]["a"]
    assert (counts["seeds"], counts["prompts"], counts["responses"]) == (2, 2, 12)  # distinct prompts, all samples
    assert data["counts"]["t"]["tool"]["seeds"] == 2  # in each seed's evaluation
    assert {r["seed"] for r in data["per_prompt"]} == {0, 1, None}
    assert "mean ± sample standard deviation over seeds" in table and " ± " in table


def test_a_one_seed_sweep_file_is_evaluated_as_before(tmp_path, capsys):
    rows = sweep_rows({1})
    data, csv_rows = evaluate(tmp_path, "swept", write_rows(tmp_path / "samples.jsonl", rows))
    table = capsys.readouterr().out
    # the same rows without the cell that marks them as a sweep's: no seed at all
    unswept = [{k: v for k, v in r.items() if k != "cell"} for r in rows]
    plain, plain_csv = evaluate(tmp_path, "plain", write_rows(tmp_path / "plain.jsonl", unswept))
    assert table == capsys.readouterr().out and " ± " not in table and "seeds" not in table
    assert {k: v for k, v in data.items() if k != "files"} == {k: v for k, v in plain.items() if k != "files"}
    assert csv_rows == plain_csv and "seed" not in csv_rows[0]
    assert "seeds" not in data and all("seed" not in r for r in data["per_prompt"])


def test_baco_generate_runs_with_different_seeds_in_one_file_are_pooled(tmp_path):
    # `baco generate` records its run's seed whether given or drawn at random: one method, pooled as one
    rows = [{k: v for k, v in r.items() if k not in ("cell", "config", "task", "method")}
            for r in sweep_rows({0, 1})]
    records, _ = read_records([write_rows(tmp_path / "generated.jsonl", rows)])
    assert {r.seed for r in records} == {None}
    assert main(["eval", str(tmp_path / "generated.jsonl"), "--metrics", "distinct-1", "--out",
                 str(tmp_path / "m.json"), "--quiet"]) == 0
    data = json.loads((tmp_path / "m.json").read_text())
    assert "seeds" not in data and data["counts"]["default"]["aligned"] == {"prompts": 2, "responses": 24,
                                                                             "distinct-1": 2}


def test_rows_shaped_like_baco_samples_without_sampling_settings_are_read(tmp_path):
    # an id, a sample index and token ids make a row look like a baco sample; a hand-made or trimmed file may
    # lack the sampling settings, which only feed the "pooled settings" warning
    rows = [{"id": f"s{k}", "sample_index": k, "token_ids": [1], "prompt": "Name a fruit.", "response": text}
            for k, text in enumerate(["apple", "kiwi jam"])]
    records, warnings = read_records([write_rows(tmp_path / "trimmed.jsonl", rows)])
    assert [r.response for r in records] == ["apple", "kiwi jam"] and warnings == []


def test_a_sweeps_sampling_knob_configurations_are_one_method_in_the_pareto_table(tmp_path):
    # `baco sweep` writes `base@temperature=0.7` for a method swept over temperature, and reports it as the
    # method `base` (the paper's baselines are swept this way); `baco eval` on its samples groups them alike
    # (the two seeds of sweep_rows made into two temperatures of one seed)
    rows = [{**row, "config": f"base@temperature={t:g}", "method": "base", "cell": f"t|base@temperature={t:g}|seed=0",
             "sampling": {"temperature": t, "seed": 0}}
            for row in sweep_rows({0, 1}) for t in [row["sampling"]["seed"] + 0.7]]
    path = write_rows(tmp_path / "samples.jsonl", rows)
    out = tmp_path / "m.json"
    assert main(["eval", str(path), "--metrics", "distinct-1,relevance", "--out", str(out), "--quiet"]) == 0
    data = json.loads(out.read_text())
    assert set(data["summary"]["t"]) == {"base@temperature=0.7", "base@temperature=1.7"}  # two configurations
    assert set(data["pareto"]["overall"]) == {"base"}  # of one method
    assert data["pareto"]["overall"]["base"]["coverage"] == 1.0


def test_models_whose_names_hold_a_colon_are_not_pooled_in_the_pareto_table(tmp_path):
    # Ollama tags and OpenAI fine-tuned model names hold colons; the part before one is no method of baco's
    answers = {"llama3.1:8b": ["apple", "pear", "fig"], "llama3.1:70b": ["apple", "apple", "apple"],
               "ft:gpt-4o-mini:acme::A1": ["kiwi", "kiwi jam", "lime"]}
    path = write_rows(tmp_path / "models.jsonl", [{"prompt": "Name a fruit.", "response": r, "method": m}
                                                   for m, rs in answers.items() for r in rs])
    out = tmp_path / "m.json"
    assert main(["eval", str(path), "--metrics", "distinct-1,relevance", "--out", str(out), "--quiet"]) == 0
    overall = json.loads(out.read_text())["pareto"]["overall"]
    assert set(overall) == set(answers)
    assert sum(m["dominance"] for m in overall.values()) == pytest.approx(1.0)


def test_a_metric_that_returns_nan_is_undefined_there_as_none_is(tmp_path, metrics_restored):
    # numpy gives NaN for a mean over nothing; a metric of one's own may return it where it is undefined
    from baco.evaluate.registry import register_metric

    @register_metric("nan-on-red", kind="diversity", higher_is_better=True, library="mine", help="NaN for red")
    def nan_on_red(responses):
        return float("nan") if "red" in responses else 1.0

    @register_metric("nan-quality", kind="quality", higher_is_better=True, library="mine", help="NaN for red")
    def nan_quality(prompts, responses):
        return [float("nan") if r == "red" else 0.5 for r in responses]

    rows = [{"prompt": p, "response": r} for p, rs in (("fruit", ("apple", "pear")), ("colour", ("red", "blue")))
            for r in rs]
    out = tmp_path / "m.json"
    assert main(["eval", str(write_rows(tmp_path / "s.jsonl", rows)), "--metrics", "nan-on-red,nan-quality,utility",
                 "--out", str(out), "--quiet"]) == 0

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    data = json.loads(out.read_text(), parse_constant=refuse)  # strict JSON: no NaN
    colour = next(r for r in data["per_prompt"] if r["prompt"] == "colour")
    assert colour["nan-on-red"] is None and colour["nan-quality"] == 0.5
    # utility: red (first, undefined quality) earns 0, blue (a class of its own) 0.5 at weight 0.8
    assert colour["utility"] == pytest.approx(0.8 * 0.5 / 1.8)
    counts = data["counts"]["default"]["s"]
    assert (counts["nan-on-red"], counts["nan-quality"], counts["utility"]) == (1, 2, 2)
    assert data["summary"]["default"]["s"]["nan-on-red"] == 1.0


def test_the_csv_gives_each_configuration_its_methods_coverage_and_dominance(tmp_path):
    # Coverage and Dominance belong to a method (p-punc), the rows to its configurations (p-punc:0.3, ...)
    answers = {"p-punc:0.3": ["apple", "pear", "fig"], "p-punc:0.7": ["apple pie", "apple", "kiwi"],
               "aligned": ["apple", "apple", "apple"]}
    path = write_rows(tmp_path / "s.jsonl", [{"prompt": "Name a fruit.", "response": r, "method": m}
                                              for m, rs in answers.items() for r in rs])
    out = tmp_path / "m.json"
    assert main(["eval", str(path), "--metrics", "distinct-1,relevance", "--out", str(out), "--quiet"]) == 0
    data, rows = load(out)
    per_task = data["pareto"]["per_task"]["default"]
    assert [(r["method"], r["family"]) for r in rows] == [("p-punc:0.3", "p-punc"), ("p-punc:0.7", "p-punc"),
                                                           ("aligned", "aligned")]
    for row in rows:
        assert float(row["coverage"]) == per_task[row["family"]]["coverage"]
        assert float(row["dominance"]) == per_task[row["family"]]["dominance"]


def test_eval_reads_standard_input_as_a_samples_file_named_stdin(tmp_path, monkeypatch, capsys):
    """`baco generate ... --out - | baco eval -`: '-' is standard input, evaluated as a file of the same rows is,
    and named `<stdin>` in warnings (not the temporary copy it is read into); given twice, it is refused."""
    import io

    rows = [{"prompt": "Name a fruit.", "response": r, "method": "mine"} for r in ("apple pie", "pear", "apple")]
    text = "".join(json.dumps(row) + "\n" for row in rows) + "not json\n"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(text.encode())))
    assert main(["eval", "-", "--metrics", "distinct-1", "--out", str(tmp_path / "piped.json"), "--quiet"]) == 0
    assert capsys.readouterr().err == ("baco: warning: <stdin>:4: not valid JSON (Expecting value at column 1); "
                                       "line skipped\n")
    as_file = write_rows(tmp_path / "rows.jsonl", rows)
    assert main(["eval", str(as_file), "--metrics", "distinct-1", "--out", str(tmp_path / "file.json"), "--quiet"]) == 0
    piped, filed = load(tmp_path / "piped.json")[0], load(tmp_path / "file.json")[0]
    assert piped["summary"] == filed["summary"] and piped["summary"]["default"]["mine"]["distinct-1"] > 0
    assert piped["warnings"] == ["<stdin>:4: not valid JSON (Expecting value at column 1); line skipped"]
    assert main(["eval", "-", "-", "--metrics", "distinct-1", "--quiet"]) == 2
    assert "can be given once" in capsys.readouterr().err


def test_eval_plots_each_tasks_pareto_planes_as_a_sweep_draws_them(tmp_path, capsys):
    import hashlib

    rows = [{"prompt": prompt, "response": f"{word} {k}", "method": method, "task": task}
            for task in ("open/ended", "dialogue") for method, word in (("a", "fig"), ("b:0.3", "kiwi jam"),
                                                                         ("b:0.7", "a plum and a fig"))
            for prompt in ("Name a fruit.", "Pick a fruit.") for k in range(3)]
    path = write_rows(tmp_path / "samples.jsonl", rows)
    flags = ["eval", str(path), "--metrics", "distinct-1,self-bleu,relevance", "--embedding-dtype", "float32"]
    assert main([*flags, "--plots", str(tmp_path / "plots")]) == 0
    assert "wrote 2 Pareto plots (PNG and SVG)" in capsys.readouterr().err
    names = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert names == ["pareto-dialogue.png", "pareto-dialogue.svg", "pareto-open_ended.png", "pareto-open_ended.svg"]
    assert (tmp_path / "plots" / "pareto-dialogue.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main([*flags, "--plots", str(tmp_path / "again"), "--quiet"]) == 0  # the same bytes every time
    assert all((tmp_path / "plots" / name).read_bytes() == (tmp_path / "again" / name).read_bytes() for name in names)

    alike = write_rows(tmp_path / "alike.jsonl", [{**row, "task": "open_ended" if row["task"] == "dialogue" else
                                                   row["task"]} for row in rows])
    assert main(["eval", str(alike), *flags[2:], "--plots", str(tmp_path / "alike"), "--quiet"]) == 0  # not drawn
    # over one another: open/ended's file-safe name meets the task open_ended, so it gets its original's hash
    hashed = f"pareto-open_ended-{hashlib.sha1(b'open/ended').hexdigest()[:8]}"
    assert sorted(p.name for p in (tmp_path / "alike").iterdir()) == sorted(
        f"{name}.{suffix}" for name in ("pareto-open_ended", hashed) for suffix in ("png", "svg"))

    seeds = write_rows(tmp_path / "seeds.jsonl", sweep_rows({0, 1}))  # a two-seed sweep's file: a plot per seed
    assert main(["eval", str(seeds), "--metrics", "distinct-1,relevance", "--plots", str(tmp_path / "s"), "--quiet"]) == 0
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [
        f"pareto-t-seed{seed}.{suffix}" for seed in (0, 1) for suffix in ("png", "svg")]


def test_eval_plots_need_both_kinds_of_metric_and_values_to_draw(tmp_path, capsys):
    path = write_rows(tmp_path / "samples.jsonl", [{"prompt": "Name a fruit.", "response": "fig", "method": "a"}])
    assert main(["eval", str(path), "--metrics", "distinct-1", "--plots", str(tmp_path / "plots")]) == 2
    assert "--plots draws (diversity, quality) planes: --metrics 'distinct-1' has no quality metric" in (
        capsys.readouterr().err)
    assert not (tmp_path / "plots").exists()  # refused before anything was scored or made
    assert main(["eval", str(path), "--metrics", "distinct-1,relevance", "--plots", str(tmp_path / "plots"),
                 "--quiet"]) == 0  # one response per prompt: diversity undefined, no plane to draw
    assert "--plots: no (diversity, quality) plane has values to draw" in capsys.readouterr().err
    assert not (tmp_path / "plots").exists()


def test_the_table_lines_up_method_names_in_cjk_and_with_accents_as_a_terminal_shows_them(tmp_path, capsys):
    from baco.display import text_width

    assert [text_width(t) for t in ("abc", "中文", "e\u0301", "ｆｕｌｌ", "")] == [3, 4, 1, 8, 0]
    rows = [{"prompt": "Name a fruit.", "response": f"{word} {k}", "method": method}
            for method, word in (("中文方法", "fig"), ("q\u0301q", "kiwi"), ("b", "plum")) for k in range(2)]
    assert main(["eval", str(write_rows(tmp_path / "s.jsonl", rows)), "--metrics", "distinct-1,distinct-2"]) == 0
    block = capsys.readouterr().out.split("\n\n")[0].splitlines()[1:]  # the task's table, under its title
    assert block[0].split()[2:] == ["中文方法", "q\u0301q", "b"]  # (q with an accent: no precomposed form)
    assert len({text_width(line) for line in block}) == 1  # every column ends where its header ends
