"""Every input a user can give ends in a one-line error (exit 2) naming the flag, key or line, before any
model loads; `--debug` / BACO_DEBUG=1 shows the traceback (findings 5 and 6 of issue 11).

The models passed are paths that do not exist: had a check come after loading, the error would be
"no model directory" instead of the one expected.
"""

import json
import os
import tempfile

import numpy
import pytest
import yaml

from baco import SamplingParams
from baco.cli import main
from baco.errors import InvalidSamplingParams, UnknownRouterError
from baco.routers import get_router
from baco.strategies import parse_strategy
from baco.sweep import SweepConfigError, load_config

NOWHERE = ["--base", "/no/such/base", "--aligned", "/no/such/aligned"]


def read_only_folder() -> str | None:
    """A folder where files cannot be created even by root (sysfs), or None."""
    try:
        fd, name = tempfile.mkstemp(dir="/sys")
    except OSError:
        return "/sys"
    os.close(fd)
    os.unlink(name)
    return None


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def one_line_error(capsys, code, expected_code=2) -> str:
    err = capsys.readouterr().err
    assert code == expected_code, err
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("baco: error: ")
    return err


def test_generate_checks_every_flag_before_loading_a_model(tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes(b"Name a fruit.\nWhy is the sky \xff blue?\n")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    folder = tmp_path / "folder.jsonl"
    folder.mkdir()
    (tmp_path / "a-file.json").write_text("{}\n")
    cases = [
        (["--prompt", "hi", "--out", str(tmp_path / "a-file.json" / "sub" / "s.jsonl")],
         f"{str(tmp_path / 'a-file.json')!r} is a file, not a folder", ""),
        (["--prompt", "hi", "--router", "p-punc:"], "router 'p-punc:' has an empty value after ':'", ""),
        (["--prompt", "hi", "--router", "negative:"], "router 'negative:' has an empty value after ':'", ""),
        (["--prompt", "hi", "--out", str(folder)], "--out", "is a folder"),
        (["--prompt", "hi", "--n", "0"], "--n must be an integer >= 1", "got 0"),
        (["--prompt", "hi", "--anchor", "some/model"], "--anchor is proxy-tuning's third model", "'p-punc:0.5'"),
        (["--prompt", "hi", "--batch-size", "0"], "--batch-size must be", "got 0"),
        (["--prompt", "hi", "--router", "p:nan"], "router 'p' needs a finite number for threshold", "'nan'"),
        (["--prompt", "hi", "--router", "p-punc:-1"], "threshold must be >= 0, got -1", ""),
        (["--prompt", "hi", "--router", "verbalized:inf"], "verbalized needs an integer in [1, 100] for k", "'inf'"),
        (["--prompts", str(prompts)], "prompts.txt:2: not valid UTF-8", "byte 0xff"),
        (["--prompts", str(empty)], "empty.jsonl: no prompts found", ""),
        (["--prompts", str(tmp_path)], "is a folder", ""),
        (["--prompt", "hi", "--chat-template", str(tmp_path / "none.jinja")], "--chat-template", "No such file"),
        (["--prompt", "hi", "--base-template", "no placeholder"], "base_template must contain {prompt}", ""),
        (["--prompt", "hi", "--temperature", "nan"], "--temperature must be a finite number", ""),
        (["--prompt", "hi", "--top-k", "-2"], "--top-k must be an integer >= 0", "got -2"),
        (["--prompt", "hi", "--min-p", "1.5"], "--min-p must be in [0, 1]", "got 1.5"),
        (["--prompt", "hi", "--max-new-tokens", "0"], "--max-new-tokens must be an integer >= 1", "got 0"),
        (["--prompt", "hi", "--stop", ""], "--stop strings must be non-empty strings", ""),
        (["--prompt", "hi", "--dtype", "float8"], "unknown dtype 'float8'", ""),
        (["--prompt", "hi", "--device", "gpu"], "unknown device 'gpu'", ""),
    ]
    for args, *words in cases:
        err = one_line_error(capsys, main(["generate", *NOWHERE, "--quiet", *args]))
        assert all(w in err for w in words), (args, err)
        assert "no model directory" not in err


def test_generate_refuses_prompts_no_model_can_read_naming_their_line_before_loading(tmp_path, capsys):
    """A lone surrogate (a JSON escape, or a byte that is not UTF-8 in the command's arguments, which Python reads
    as U+DC80..U+DCFF) reaches no tokenizer; an empty prompt read from a file is named by its line."""
    surrogate = tmp_path / "surrogate.jsonl"
    surrogate.write_text('{"prompt": "fine"}\n{"prompt": "hi \\ud800 there"}\n')
    blank = tmp_path / "blank.jsonl"
    blank.write_text('{"prompt": "fine"}\n{"prompt": "  "}\n')
    array = tmp_path / "prompts.json"
    array.write_text('[{"prompt": "caf\\ud800"}]')
    latin1 = "caf\udce9"  # what `--prompt $'caf\xe9'` (a Latin-1 byte) arrives as
    cases = [
        (["--prompt", latin1], "prompt 0 is not valid Unicode text (byte 0xe9 at character 4 is not UTF-8"),
        (["--prompt", "fine", "--prompt", "\ud800"], "prompt 1 is not valid Unicode text (a lone surrogate U+D800 "
                                                     "at character 1)"),
        (["--prompts", str(surrogate)], f"{surrogate}:2: the prompt is not valid Unicode text (a lone surrogate U+D800"),
        (["--prompts", str(blank)], f"{blank}:2: the prompt is empty"),
        (["--prompts", str(array)], f"{array}: row 1: the prompt is not valid Unicode text"),
        (["--prompt", "hi", "--system-prompt", latin1], "the system prompt is not valid Unicode text"),
        (["--prompt", "hi", "--base-template", "Q: {prompt} " + latin1], "base_template is not valid Unicode text"),
        (["--prompt", "hi", "--stop", latin1], "stop string 0 is not valid Unicode text"),
    ]
    for args, words in cases:
        err = one_line_error(capsys, main(["generate", *NOWHERE, "--quiet", *args]))
        assert words in err, (args, err)


@pytest.mark.parametrize("command", ["generate", "serve"])
@pytest.mark.parametrize("models", [["--base", "", "--aligned", ""], ["--base", " ", "--aligned", "/no/such/aligned"],
                                    ["--base", "/no/such/base", "--aligned", ""],
                                    [*NOWHERE, "--router", "proxy:1", "--anchor", ""]])
def test_an_empty_model_flag_is_an_error_not_the_embedded_pair(command, models, capsys):
    """`--base "$BASE"` with BASE unset must not quietly run the embedded Gemma pair (or one side of it) in its
    place: as an empty router value or --out, an empty model name is named as the mistake it is."""
    prompt = ["--prompt", "hi"] if command == "generate" else ["--port", str(free_port())]
    err = one_line_error(capsys, main([command, *models, *prompt, "--dtype", "float8"]))  # (named first)
    flag = next(models[i] for i in range(0, len(models), 2) if not models[i + 1].strip())
    assert f"{flag} is empty" in err and "no model directory" not in err


def test_generate_refuses_an_out_file_that_is_its_prompts_file(tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "Name a fruit."}\n')
    (tmp_path / "sub").mkdir()
    same = tmp_path / "sub" / ".." / "prompts.jsonl"  # the same file, spelled another way
    err = one_line_error(capsys, main(["generate", *NOWHERE, "--prompts", str(prompts), "--out", str(same)]))
    assert f"--out {str(same)!r} is the --prompts file" in err
    assert prompts.read_text() == '{"prompt": "Name a fruit."}\n'


def test_generate_refuses_an_out_file_on_a_read_only_file_system(capsys):
    folder = read_only_folder()
    if folder is None:
        pytest.skip("no read-only folder on this machine")
    err = one_line_error(capsys, main(["generate", *NOWHERE, "--prompt", "hi", "--out", f"{folder}/s.jsonl"]))
    assert f"cannot create files in '{folder}'" in err


def sweep_file(tmp_path, **changes) -> str:
    raw = {"models": {"base": "/no/such/base", "aligned": "/no/such/aligned"}, "tasks": ["open-ended"], "n": 2,
           "methods": {"p": {"router": "p", "values": [0.5]}}, **changes}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


@pytest.mark.parametrize("changes, words", [
    ({"models": ["/a", "/b"]}, "models must be a mapping"),
    ({"metrics": ["distinct-2"]}, "metrics must be a mapping"),
    ({"metrics": {"quality": ["nope"]}}, "metrics.quality: unknown metric 'nope'"),
    ({"metrics": {"diversity": "distinct-2"}}, "metrics.diversity must be a non-empty list"),
    ({"batch_size": "lots"}, "batch_size must be a positive integer or auto, got 'lots'"),
    ({"batch_size": 0}, "batch_size must be a positive integer or auto, got 0"),
    ({"sampling": {"stop": 5}}, "sampling: stop must be a string or a list of strings"),
    ({"sampling": {"temperature": True}}, "temperature must be a finite number"),
    ({"name": "../elsewhere"}, "name must be letters, digits"),
    ({"seeds": [-1]}, "seeds must be a non-empty list of non-negative integers"),
    ({"tasks": [{"name": "open-ended", "limit": True}]}, "tasks[0].limit must be a positive integer"),
    ({"tasks": [{"name": "open-ended", "limt": 3}]}, "tasks[0]: unknown keys ['limt']"),
    ({"tasks": {"name": "open-ended"}}, "`tasks` must be a list"),
    ({"methods": {"p": {"router": "p", "values": [float("nan")]}}}, "needs a finite number for threshold"),
    ({"methods": {"p": {"router": "p", "values": ["high"]}}}, "methods.p.values: values must be numbers"),
    ({"methods": {"p": {"router": "p", "system_prompt": 5}}}, "methods.p.system_prompt must be a string"),
    ({"methods": {"p": {"router": "p", "base_template": "Q:"}}}, "base_template must contain {prompt}"),
    ({"methods": {"p": {"router": "p", "batch_size": 0}}}, "methods.p.batch_size must be a positive integer"),
    ({"methods": {"p|q": {"router": "p"}}}, "a name must be a non-empty string without '|'"),
    ({"methods": {"p": {"router": 5}}}, "methods.p.router must be a router name"),
])
def test_sweep_config_errors_name_the_key_before_anything_loads(tmp_path, capsys, changes, words):
    err = one_line_error(capsys, main(["sweep", sweep_file(tmp_path, **changes), "--out", str(tmp_path / "run")]))
    assert words in err
    assert not (tmp_path / "run").exists()


def listed_routers(message: str) -> set[str]:
    """The names an unknown router's error lists."""
    return set(message.split("known routers: ")[1].split(" (see")[0].split(", "))


def test_an_unknown_router_is_told_every_name_that_runs_there_multi_pass_methods_included(tmp_path, capsys, collab):
    """`baco generate --router`, a sweep's `router:` and the API's `router=` also run the multi-pass methods
    (`negative`, `verbalized`): an unknown name's error lists them with the routers."""
    from baco import list_routers
    from baco.api import check_router_name
    from baco.strategies import STRATEGIES

    every = {spec.name for spec in list_routers()} | set(STRATEGIES)
    generate = one_line_error(capsys, main(["generate", *NOWHERE, "--quiet", "--prompt", "hi", "--router", "nope"]))
    sweep = one_line_error(capsys, main(["sweep", sweep_file(tmp_path, methods={"x": {"router": "nope"}}), "--out",
                                         str(tmp_path / "run")]))
    with pytest.raises(UnknownRouterError) as loading:  # Collaboration.from_pretrained(..., router=) checks it first
        check_router_name("nope")
    with pytest.raises(UnknownRouterError) as generating:
        collab.generate("hi", router="nope")
    for message in (generate, sweep, str(loading.value), str(generating.value)):
        assert "unknown router 'nope'" in message and listed_routers(message) == every, message


def test_sweep_output_paths_are_checked_before_anything_runs(tmp_path, capsys):
    config = sweep_file(tmp_path)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert "is a file; give a folder" in one_line_error(capsys, main(["sweep", config, "--out", str(a_file)]))
    assert "is a file" in one_line_error(capsys, main(["sweep", config, "--out", str(a_file / "run")]))
    assert "--results" in one_line_error(capsys, main(["sweep", config, "--out", str(tmp_path / "r"),
                                                       "--results", str(a_file)]))
    folder = read_only_folder()
    if folder:
        err = one_line_error(capsys, main(["sweep", config, "--out", f"{folder}/run"]))
        assert f"cannot create files in '{folder}'" in err


def test_a_sweep_file_that_is_not_utf8_or_not_a_file_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"name: caf\xe9\n")
    with pytest.raises(SweepConfigError, match="not UTF-8 text"):
        load_config(bad)
    with pytest.raises(SweepConfigError, match="is a folder"):
        load_config(tmp_path)
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\nmethods:\n  p: {router: p\n")  # an unclosed mapping
    with pytest.raises(SweepConfigError, match=r"broken.yaml: not valid YAML at line 4, column 1: ") as refused:
        load_config(broken)
    assert "\n" not in str(refused.value)  # one line, as every error


def test_eval_and_report_check_their_outputs_first(tmp_path, capsys):
    samples = tmp_path / "s.jsonl"
    samples.write_text(json.dumps({"prompt": "p", "response": "r"}) + "\n")
    folder = tmp_path / "out.json"
    folder.mkdir()
    assert "is a folder" in one_line_error(capsys, main(["eval", str(samples), "--out", str(folder)]))
    assert "--batch-size" in one_line_error(capsys, main(["eval", str(samples), "--batch-size", "0"]))
    assert "--equivalence must be embedding, unigram or classifier:PATH" in one_line_error(
        capsys, main(["eval", str(samples), "--equivalence", "cosine"]))
    assert "--equivalence-threshold must be a finite number" in one_line_error(
        capsys, main(["eval", str(samples), "--equivalence-threshold", "nan"]))
    err = one_line_error(capsys, main(["report", str(tmp_path), "--out", str(tmp_path / "no" / "r.html")]))
    assert "does not exist" in err


def test_router_knobs_must_be_finite_and_bounds_read_as_ranges():
    for spec in ("p:nan", "p:inf", "h:-inf", "rand:nan", "eft:NaN"):
        with pytest.raises(UnknownRouterError, match="needs a finite number"):
            get_router(spec)
    with pytest.raises(UnknownRouterError, match=r"prob must be in \[0, 1\], got 2"):
        get_router("rand:2")
    with pytest.raises(UnknownRouterError, match="threshold must be >= 0, got -0.5") as error:
        get_router("p:-0.5")
    assert "None" not in str(error.value)
    for spec in ("negative:nan", "verbalized:inf", "verbalized:-inf"):
        with pytest.raises(UnknownRouterError, match="needs"):
            parse_strategy(spec)


def test_sampling_params_refuse_booleans_and_non_list_stops():
    for bad in ({"temperature": True}, {"top_p": False}, {"min_p": True}, {"stop": 5}, {"stop": None}):
        with pytest.raises(InvalidSamplingParams):
            SamplingParams(**bad)


def test_the_python_api_checks_argument_types_at_the_door(collab):
    from baco.errors import BacoError, PromptError

    with pytest.raises(PromptError, match=r"prompts must be a string, a conversation \(a list of messages\) or a "
                                          r"list \(any iterable\) of them, got int"):
        collab.generate(5)
    with pytest.raises(PromptError, match="prompt 0 must be a string or a conversation .*, got int"):
        collab.generate([5])
    with pytest.raises(InvalidSamplingParams, match="sampling must be a SamplingParams or None, got dict"):
        collab.generate(["hi"], sampling={"temperature": 0.5})
    with pytest.raises(BacoError, match="batch_size must be an integer >= 1 or 'auto', got True"):
        collab.generate(["hi"], batch_size=True)
    with pytest.raises(BacoError, match="batch_size must be an integer >= 1 or 'auto', got 'lots'"):
        collab.generate(["hi"], batch_size="lots")
    for fraction in (0, 1.5, True):
        with pytest.raises(BacoError, match=f"memory_fraction must be in \\(0, 1\\], got {fraction!r}"):
            collab.generate(["hi"], batch_size="auto", memory_fraction=fraction)
    with pytest.raises(InvalidSamplingParams, match="got dict"):
        next(collab.stream("hi", sampling={"temperature": 0.5}))


def test_prompts_may_be_any_iterable_of_strings(collab):
    params = SamplingParams(max_new_tokens=6, seed=2)
    expected = [s.token_ids for s in collab.generate(["Name a fruit.", "Why?"], sampling=params)]
    for prompts in (("Name a fruit.", "Why?"), (p for p in ["Name a fruit.", "Why?"]),
                    numpy.array(["Name a fruit.", "Why?"])):
        samples = collab.generate(prompts, sampling=params)
        assert [s.token_ids for s in samples] == expected
        assert all(type(s.prompt) is str for s in samples)
    assert [s.prompt for s in collab.iter_generate(iter(["Why?"]), sampling=params)] == ["Why?"]


def test_sampling_may_come_second_as_in_vllm(collab):
    params = SamplingParams(max_new_tokens=6, seed=2)
    assert [s.token_ids for s in collab.generate("Why?", params, n=2)] == \
        [s.token_ids for s in collab.generate("Why?", sampling=params, n=2)]
    assert [e.token_id for e in collab.stream("Why?", params)] == collab.generate("Why?", params)[0].token_ids


def test_numpy_numbers_are_taken_as_python_numbers(collab):
    params = SamplingParams(temperature=numpy.float32(0.5), top_k=numpy.int32(50), max_new_tokens=numpy.int64(6),
                            seed=numpy.int64(3), min_p=numpy.float64(0.01))
    assert [type(v) for v in (params.temperature, params.top_k, params.max_new_tokens, params.seed)] == \
        [float, int, int, int]
    samples = collab.generate(["Why?"], sampling=params, n=numpy.int64(2), batch_size=numpy.int8(1))
    assert len(samples) == 2
    json.dumps([s.to_dict() for s in samples])
    with pytest.raises(InvalidSamplingParams, match="seed must be a non-negative integer"):
        SamplingParams(seed=numpy.float64(3.0))


def test_a_wrong_argument_to_a_generation_call_is_named(collab):
    from baco.errors import BacoError, PromptError

    with pytest.raises(BacoError, match="skip must be a set of"):
        list(collab.iter_generate("hi", skip=5))
    with pytest.raises(BacoError, match="on_sample must be a function"):
        list(collab.iter_generate("hi", on_sample="print"))
    with pytest.raises(UnknownRouterError, match=r"register\('name'"):
        collab.generate("hi", router=lambda view: None)
    with pytest.raises(PromptError, match="stream takes one prompt"):
        next(collab.stream(["hi", "yo"]))
    with pytest.raises(InvalidSamplingParams, match=r"SamplingParams\(\*\*your_dict\)"):
        collab.generate("hi", {"temperature": 0.5})


def test_from_pretrained_names_a_wrong_argument_before_any_model_loads(tiny_dirs):
    from transformers import AutoModelForCausalLM

    from baco import Collaboration, ModelLoadError, PromptError

    base, _ = tiny_dirs
    loaded = AutoModelForCausalLM.from_pretrained(base)
    with pytest.raises(ModelLoadError, match=f"base must be a hub id or a local directory .*got LlamaForCausalLM; "
                                             f".*{base}"):
        Collaboration.from_pretrained(loaded, "/no/such/aligned")
    with pytest.raises(ModelLoadError, match="aligned must be a hub id .*got NoneType"):
        Collaboration.from_pretrained(base, None)
    with pytest.raises(UnknownRouterError, match="unknown router 'nope'"):
        Collaboration.from_pretrained(*NOWHERE[1::2], router="nope")
    with pytest.raises(PromptError, match="prompt_format must be a PromptFormat or None, got str"):
        Collaboration.from_pretrained(*NOWHERE[1::2], prompt_format="chat")
    with pytest.raises(ModelLoadError, match="device must be a string such as 'auto'.*got None"):
        Collaboration.from_pretrained(*tiny_dirs, device=None)


def test_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    assert main(["--debug", "generate", *NOWHERE, "--prompt", "hi", "--n", "0"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().endswith("--n must be an integer >= 1, got 0")
    monkeypatch.setenv("BACO_DEBUG", "1")
    assert main(["generate", *NOWHERE, "--prompt", "hi", "--n", "0"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_an_unexpected_failure_is_one_line_with_a_hint_unless_debugging(capsys, monkeypatch):
    import baco.cli

    def broken(args):
        raise RuntimeError("something baco did not foresee")

    monkeypatch.setattr(baco.cli, "cmd_routers", broken)
    err = one_line_error(capsys, main(["routers"]), expected_code=1)
    assert "RuntimeError: something baco did not foresee" in err and "--debug" in err
    with pytest.raises(RuntimeError):
        main(["routers", "--debug"])


def test_a_collaboration_shows_its_models_and_device_in_a_notebook(collab, tiny_dirs):
    """Its repr was `<baco.api.Collaboration object at 0x7f...>`, which says nothing of which pair is loaded."""
    base, aligned = tiny_dirs
    assert repr(collab) == f"Collaboration(base={str(base)!r}, aligned={str(aligned)!r}, device='cpu')"
