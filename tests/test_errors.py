"""Bad input gets a clear error naming the problem, before any model runs, and no torch traceback."""

import json
import shutil

import pytest

from baco import Collaboration, SamplingParams
from baco.cli import main
from baco.errors import ModelLoadError, PromptError, TokenizerMismatchError, UnknownRouterError
from baco.testing import make_tiny_pair


def test_a_token_router_on_mismatched_tokenizers_is_refused(tmp_path):
    """Token-level routing needs one vocabulary; such a pair runs the cross-tokenizer methods instead
    (tests/test_cross.py), and the error names them."""
    base, aligned = make_tiny_pair(tmp_path, mismatched=True)
    with pytest.raises(TokenizerMismatchError, match="shared vocabulary.*chared"):
        Collaboration.from_pretrained(base, aligned, router="p-punc:0.5")
    collab = Collaboration.from_pretrained(base, aligned)
    with pytest.raises(TokenizerMismatchError, match="shared vocabulary.*chared"):
        collab.generate("Hi", sampling=SamplingParams(max_new_tokens=2))


def test_padded_extra_rows_on_the_aligned_model_are_tolerated(tmp_path):
    base, aligned = make_tiny_pair(tmp_path, aligned_extra_rows=7)
    collab = Collaboration.from_pretrained(base, aligned)
    assert collab.pair.vocab_size == len(collab.tokenizer) + 7
    assert not collab.pair.vocab.allowed[-7:].any()  # padding rows are never sampled
    sample = collab.generate("Hi", router="aligned", sampling=SamplingParams(max_new_tokens=20, seed=0))[0]
    assert max(sample.token_ids) < len(collab.tokenizer)


def test_empty_prompt(collab):
    with pytest.raises(PromptError, match="prompt 1 is empty"):
        collab.generate(["fine", "   "], sampling=SamplingParams(max_new_tokens=2))


def test_prompt_longer_than_the_context(collab):
    with pytest.raises(PromptError, match=r"prompt 0 is \d+ tokens .* at most 256"):
        collab.generate(["word " * 400])


def test_unknown_router(collab):
    with pytest.raises(UnknownRouterError, match="unknown router 'magic'"):
        collab.generate(["hi"], router="magic")


def test_missing_model_path():
    with pytest.raises(ModelLoadError, match="no model directory at '/no/such/model'"):
        Collaboration.from_pretrained("/no/such/model", "/no/such/model")


def test_corrupt_weights_file(tmp_path, tiny_dirs):
    base = tmp_path / "base"
    shutil.copytree(tiny_dirs[0], base)
    (base / "model.safetensors").write_bytes(b"this is not a safetensors file")
    with pytest.raises(ModelLoadError, match="could not load the model of"):
        Collaboration.from_pretrained(base, tiny_dirs[1])


def test_missing_chat_template_is_named(tmp_path, tiny_dirs):
    aligned = tmp_path / "aligned"
    shutil.copytree(tiny_dirs[1], aligned)
    (aligned / "chat_template.jinja").unlink(missing_ok=True)
    config = (aligned / "tokenizer_config.json").read_text()
    import json

    data = json.loads(config)
    data.pop("chat_template", None)
    (aligned / "tokenizer_config.json").write_text(json.dumps(data))
    collab = Collaboration.from_pretrained(tiny_dirs[0], aligned)
    with pytest.raises(PromptError, match="no chat template"):
        collab.generate(["hi"])


def test_a_base_model_alone_needs_no_chat_template(tmp_path):
    """`router=base` on a cross pair (and a sweep's `base` method) runs the base model alone on its plain-text
    rendering: a base model without a chat template (most have none) must run, and write what it writes with one."""
    import json

    base, aligned = make_tiny_pair(tmp_path, mismatched=True)
    bare = tmp_path / "bare"
    shutil.copytree(base, bare)
    (bare / "chat_template.jinja").unlink(missing_ok=True)
    data = json.loads((bare / "tokenizer_config.json").read_text())
    data.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(data))
    sampling = SamplingParams(max_new_tokens=12, seed=3)
    with_template = Collaboration.from_pretrained(base, aligned).generate(["Name a fruit."], router="base", n=2,
                                                                          sampling=sampling)
    without = Collaboration.from_pretrained(bare, aligned).generate(["Name a fruit."], router="base", n=2,
                                                                    sampling=sampling)
    assert [s.token_ids for s in without] == [s.token_ids for s in with_template]
    assert all(s.sources == ["base"] * s.num_tokens for s in without)


@pytest.mark.parametrize("args, words", [
    (["--temperature", "-1"], "--temperature must be"),  # the flag, not SamplingParams' field (temperature)
    (["--top-p", "0"], "--top-p must be in"),
    (["--presence-penalty", "2.5"], "--presence-penalty must be in [-2, 2]"),
    (["--repetition-penalty", "0"], "--repetition-penalty must be a finite number > 0"),
    (["--logit-bias", '{"1": 200}'], "--logit-bias values must be numbers in [-100, 100]"),
    (["--stop-token-ids", "-3"], "--stop-token-ids must be a list of token ids"),
    (["--min-tokens", "9", "--max-new-tokens", "8"],
     "--min-tokens must be an integer in [0, max_new_tokens] (here [0, 8])"),
    (["--logit-bias", '{"99999": 1}', "--max-new-tokens", "8"],
     "logit_bias names token id 99999, but the vocabulary has 512 tokens"),
    (["--router", "nope"], "unknown router"),
    (["--router", "chared:0.5", "--min-tokens", "3", "--base", "/no/where", "--aligned", "/no/where"],
     "router chared:0.5 is a cross-tokenizer method"),  # refused before the models are looked for
    (["--router", "verbalized:2", "--stop-token-ids", "7"], "verbalized: stop_token_ids would end the whole"),
    (["--base", "/no/where", "--aligned", "/no/where"], "no model directory"),
    (["--prompt", " "], "prompt 0 is empty"),
])
def test_cli_reports_bad_input_in_one_line(tiny_dirs, capsys, args, words):
    base, aligned = map(str, tiny_dirs)
    argv = ["generate", "--base", base, "--aligned", aligned, "--prompt", "hi", "--quiet"]
    # later flags win for single-valued options; --prompt is additive, so swap it out when testing it
    if "--prompt" in args:
        argv = ["generate", "--base", base, "--aligned", aligned, "--quiet"]
    assert main(argv + args) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err
    assert err.strip().count("\n") == 0


def test_a_logit_bias_flag_that_is_not_a_json_object_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["generate", "--prompt", "hi", "--logit-bias", "1: -100"])
    assert stopped.value.code == 2 and "--logit-bias: expected a JSON object" in capsys.readouterr().err


def _adapter_dir(tmp_path, tiny_dirs):
    from baco.testing import make_tiny_adapter

    return make_tiny_adapter(tmp_path / "adapter", tiny_dirs[0])


def test_an_adapter_config_that_is_not_json_is_named(tmp_path, tiny_dirs, capsys):
    adapter = _adapter_dir(tmp_path, tiny_dirs)
    (adapter / "adapter_config.json").write_text("{oops")
    with pytest.raises(ModelLoadError, match="adapter_config.json.*not valid JSON"):
        Collaboration.from_pretrained(tiny_dirs[0], adapter)
    assert main(["generate", "--base", str(tiny_dirs[0]), "--aligned", str(adapter), "--prompt", "hi", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "adapter_config.json" in err and err.strip().count("\n") == 0


def test_an_adapter_whose_base_model_is_missing_says_the_adapter_names_it(tmp_path, tiny_dirs):
    import json

    adapter = _adapter_dir(tmp_path, tiny_dirs)
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tmp_path / "moved" / "base")
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=r"adapter .*adapter'.* names its base model .*moved/base.*adapter_config"):
        Collaboration.from_pretrained(tiny_dirs[0], adapter)


def test_an_adapter_without_its_weights_file_is_named(tmp_path, tiny_dirs):
    adapter = _adapter_dir(tmp_path, tiny_dirs)
    (adapter / "adapter_model.safetensors").unlink()
    for one_forward in ("on", "off"):
        with pytest.raises(ModelLoadError, match="no adapter_model.safetensors"):
            Collaboration.from_pretrained(tiny_dirs[0], adapter, one_forward=one_forward)


@pytest.mark.parametrize("change, words", [
    ({"num_hidden_layers": 4}, r"lack 18 tensors .*model.layers.2"),  # was: random layers, a run writing nonsense
    ({"hidden_size": 64, "intermediate_size": 128}, r"do not fit its config.json: \d+ tensors have other shapes"),
])
def test_weights_that_do_not_fit_the_config_are_refused_in_one_line(tmp_path, tiny_dirs, capsys, change, words):
    import json

    base = tmp_path / "base"
    shutil.copytree(tiny_dirs[0], base)
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps(config | change))
    with pytest.raises(ModelLoadError, match=words):
        Collaboration.from_pretrained(base, tiny_dirs[1])
    capsys.readouterr()
    assert main(["generate", "--base", str(base), "--aligned", str(tiny_dirs[1]), "--prompt", "hi", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "config.json" in err, err


def test_a_tokenizer_larger_than_the_model_is_refused(tmp_path, tiny_dirs):
    """Its ids past the model's rows failed in the forward (IndexError, 'unexpected'; on a GPU a device assert)
    whenever a prompt held one, and ran when none did."""
    from baco.testing import train_tokenizer

    base = tmp_path / "base"
    shutil.copytree(tiny_dirs[0], base)
    train_tokenizer(700).save_pretrained(base)
    with pytest.raises(ModelLoadError, match=r"tokenizer has 6\d\d tokens but the model 512 embedding rows"):
        Collaboration.from_pretrained(base, tiny_dirs[1])


@pytest.fixture
def unreachable_hub(tmp_path, monkeypatch):
    """A hub endpoint nothing listens on (a closed local port) and an empty hub cache; returns the cache."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return cache


@pytest.fixture
def hub_never_asked(monkeypatch):
    """Make every hub download entry point the loading path can reach, and every wait, fail the test (a fresh
    reachability probe: `_hub_reachable` is cached per endpoint)."""
    import time

    import huggingface_hub
    import transformers.utils.hub
    from huggingface_hub import _snapshot_download, file_download

    from baco.models import hf

    def download(*args, **kwargs):
        pytest.fail(f"the hub was asked for a download: {args} {kwargs}")

    for module in (huggingface_hub, file_download, _snapshot_download, transformers.utils.hub, huggingface_hub.HfApi):
        for name in ("hf_hub_download", "snapshot_download"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, download)
    monkeypatch.setattr(time, "sleep", lambda seconds: pytest.fail(f"waited {seconds} s (a retry of the hub?)"))
    hf._hub_reachable.cache_clear()


def test_a_hub_id_without_hub_access_fails_at_once(unreachable_hub, hub_never_asked, tiny_dirs, capsys):
    """huggingface_hub retried the unreachable hub for ~25 s per file, a warning line per try: once the hub is
    found unreachable, nothing is downloaded or waited for, and the error says so in one line."""
    with pytest.raises(ModelLoadError, match=r"'someorg/tiny' is not a local directory nor in the hub cache .* "
                                             r"cannot reach the hub \(http://127.0.0.1:9\)"):
        Collaboration.from_pretrained("someorg/tiny", tiny_dirs[1])
    assert main(["generate", "--base", "someorg/tiny", "--aligned", str(tiny_dirs[1]), "--prompt", "hi"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "cannot reach the hub (http://127.0.0.1:9)" in err


def test_a_cached_hub_id_loads_without_hub_access(unreachable_hub, hub_never_asked, tiny_dirs):
    snapshot = unreachable_hub / "models--someorg--tiny" / "snapshots" / "abc123"
    shutil.copytree(tiny_dirs[0], snapshot)
    (unreachable_hub / "models--someorg--tiny" / "refs").mkdir()
    (unreachable_hub / "models--someorg--tiny" / "refs" / "main").write_text("abc123")
    collab = Collaboration.from_pretrained("someorg/tiny", tiny_dirs[1])
    assert collab.pair.base.name == "someorg/tiny"
    assert collab.generate("hi", sampling=SamplingParams(max_new_tokens=2))[0].num_tokens == 2


@pytest.mark.parametrize("what", ["model.safetensors", "tokenizer.json", "."])
def test_an_unreadable_model_file_or_directory_is_named(tmp_path, tiny_dirs, what):
    """Was: 'FileNotFoundError: No such file or directory' for unreadable weights, 'has no config.json' for an
    unreadable directory. (Root reads them anyway: then there is nothing to test.)"""
    import os

    base = tmp_path / "base"
    shutil.copytree(tiny_dirs[0], base)
    target = base / what
    target.chmod(0)
    try:
        if os.access(target, os.R_OK):
            pytest.skip("this process reads files whatever their mode (root)")
        with pytest.raises(ModelLoadError, match="permission denied"):
            Collaboration.from_pretrained(base, tiny_dirs[1])
    finally:
        target.chmod(0o755)


def test_an_anchor_with_another_tokenizer_is_named_as_the_model_at_fault(tiny_dirs, tmp_path):
    """Proxy-tuning's anchor must share the base's vocabulary; the error names the anchor (not base vs aligned)
    and does not send the user to the cross-tokenizer routers, which cannot do proxy-tuning."""
    from baco.testing import make_tiny_cross_pair

    _, other = make_tiny_cross_pair(tmp_path / "cross")
    with pytest.raises(TokenizerMismatchError, match=r"the anchor .* and the base model .* have different tokenizers "
                                                     r"\(first: id \d+: base .* vs anchor .*\): proxy-tuning") as error:
        Collaboration.from_pretrained(*tiny_dirs, anchor=other, device="cpu")
    assert "cross-tokenizer" not in str(error.value)


@pytest.fixture
def amx_build(monkeypatch):
    """llama-cpp-python as a build with llama.cpp's AMX kernels reports itself (its system info line)."""
    import sys
    from types import SimpleNamespace

    report = b"CPU : SSE3 = 1 | AVX2 = 1 | AVX512 = 1 | AVX512_VNNI = 1 | AMX_INT8 = 1 | LLAMAFILE = 1 | OPENMP = 1 | "
    monkeypatch.setitem(sys.modules, "llama_cpp", SimpleNamespace(llama_print_system_info=lambda: report))
    monkeypatch.delenv("BACO_LLAMACPP_AMX", raising=False)


def test_a_llama_cpp_build_with_amx_kernels_is_not_used_since_they_crash_the_process(amx_build, monkeypatch, capsys):
    """llama.cpp's AMX kernels stop the process with SIGILL on CPUs with AMX (ggml-org/llama.cpp#26954), losing
    every sample in flight: `--backend auto` takes transformers instead, asking for llama.cpp is a clear error
    saying how to rebuild, and BACO_LLAMACPP_AMX=1 (a llama.cpp with the fix) lets the build run."""
    from baco.errors import BacoError
    from baco.models.llamacpp import available, choose_backend

    pair = ("baco:gemma-3-270m", "baco:gemma-3-270m-aligned")
    assert not available()
    assert choose_backend("auto", *pair, rows=1) == "hf"
    with pytest.raises(BacoError, match=r"AMX.*SIGILL.*-mno-amx-int8.*--backend hf"):
        choose_backend("llamacpp", *pair, rows=1)
    assert main(["generate", "--backend", "llamacpp", "--prompt", "Hi", "--max-new-tokens", "2"]) == 2
    assert "AMX_INT8 = 1" in capsys.readouterr().err
    monkeypatch.setenv("BACO_LLAMACPP_AMX", "1")
    assert available()


def test_out_of_device_memory_is_one_line_naming_what_to_lower_and_a_rerun_resumes(tiny_dirs, tmp_path, capsys,
                                                                                     monkeypatch):
    """torch's out-of-memory error is no bug: one line naming the knobs that use memory (exit 1), the samples
    finished before it stay in --out, and the same command then writes only the missing ones."""
    import torch

    from baco.decode.engine import Engine

    base, aligned = map(str, tiny_dirs)
    out = tmp_path / "out.jsonl"
    argv = ["generate", "--base", base, "--aligned", aligned, "--prompt", "Name a fruit.", "--n", "4",
            "--batch-size", "2", "--max-new-tokens", "4", "--seed", "1", "--quiet", "--out", str(out)]
    step, calls = Engine.step, []

    def fills_up(engine):
        calls.append(1)
        if len(calls) == 8:  # after the first two rows, while the next two run
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nOf the allocated ...")
        return step(engine)

    monkeypatch.setattr(Engine, "step", fills_up)
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "the device ran out of memory (CUDA out of memory. Tried to allocate 2.00 GiB): lower --batch-size" in err
    assert err.strip().count("\n") == 0 and "please report" not in err and "Traceback" not in err
    kept = out.read_text().splitlines()
    assert len(kept) == 2
    monkeypatch.undo()
    assert main(argv) == 0
    whole = out.read_text().splitlines()
    assert whole[:2] == kept and len(whole) == 4
    fresh = tmp_path / "fresh.jsonl"
    assert main([*argv[:-1], str(fresh)]) == 0
    ids = lambda lines: sorted(json.loads(line)["token_ids"] for line in lines)  # noqa: E731
    assert ids(whole) == ids(fresh.read_text().splitlines())
