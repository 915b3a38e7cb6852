"""The embedded Gemma-3-270M pair. Tests marked `slow` load the 253 MB model (run by `make test` and CI)."""

import json

import pytest
import torch

from baco.errors import ModelLoadError
from baco.models import embedded


def test_conversion_is_atomic_when_saving_fails(tmp_path, monkeypatch):
    """A conversion that dies half-way leaves no cache directory behind, so the next run starts clean."""
    from baco.testing import tiny_model, train_tokenizer

    tokenizer = train_tokenizer()
    monkeypatch.setattr("transformers.AutoTokenizer.from_pretrained", lambda *a, **k: tokenizer)
    monkeypatch.setattr("transformers.AutoModelForCausalLM.from_pretrained", lambda *a, **k: tiny_model(tokenizer, seed=0))

    def die(*args, **kwargs):
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr("transformers.PreTrainedModel.save_pretrained", die)
    target = tmp_path / "cache" / "gemma"
    with pytest.raises(KeyboardInterrupt):
        embedded.convert_gguf(tmp_path / "model.gguf", target)
    assert not target.exists()
    assert list((tmp_path / "cache").iterdir()) == []  # no staging directory left either


def test_two_first_uses_at_once_convert_once_and_both_get_the_whole_directory(tiny_dirs, tmp_path, monkeypatch,
                                                                              capfd):
    """Two processes needing an unconverted model at once (two terminals, a sweep's local Ray workers): one
    converts, the other waits for it and uses its directory. Before, both converted, and the second deleted the
    directory that the first had just put in place while the first was loading it."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from baco.models.gguf_export import write_llama_gguf

    gguf = write_llama_gguf(tiny_dirs[0], tmp_path / "tiny.gguf")
    monkeypatch.setenv("BACO_CACHE", str(tmp_path / "cache"))
    real, conversions, asked = embedded.convert_gguf, [], threading.Barrier(2, timeout=30)

    def convert(*args, **kwargs):
        conversions.append(args[1])
        return real(*args, **kwargs)

    def the_gguf():  # both threads are past the cache check before either converts
        time.sleep(0.5)
        return gguf

    monkeypatch.setattr(embedded, "convert_gguf", convert)

    def first_use(_):
        asked.wait()
        return embedded._converted("tiny", "float32", the_gguf, gemma=False)

    with ThreadPoolExecutor(2) as pool:
        made = list(pool.map(first_use, range(2)))
    assert len(conversions) == 1 and made[0] == made[1] == tmp_path / "cache" / "tiny-float32"
    assert (made[0] / "config.json").exists() and (made[0] / "baco-source.json").exists()
    assert f"another process is preparing {made[0]}; waiting for it" in capfd.readouterr().err


def test_a_conversion_parses_the_gguf_once_and_writes_what_four_parses_write(tiny_dirs, tmp_path, monkeypatch):
    """transformers parses a GGUF's header for the tokenizer, the model's config and its weights: three times
    ~30 s for Gemma's 262k-entry vocabulary. The conversion shares one parse (the embedded base's first use:
    48 s instead of 84), and writes the same files."""
    import contextlib

    import gguf as gguf_library
    from safetensors.torch import load_file

    from baco.models.gguf_export import write_llama_gguf

    gguf = write_llama_gguf(tiny_dirs[0], tmp_path / "tiny.gguf")
    original, opened = gguf_library.GGUFReader, []

    def spy(path, *args, **kwargs):
        opened.append(path)
        return original(path, *args, **kwargs)

    monkeypatch.setattr(gguf_library, "GGUFReader", spy)
    once = embedded.convert_gguf(gguf, tmp_path / "once", "float32", gemma=False)
    assert len(opened) == 1 and gguf_library.GGUFReader is spy  # restored after the conversion
    monkeypatch.setattr(embedded, "parsed_once", lambda path: contextlib.nullcontext())
    every = embedded.convert_gguf(gguf, tmp_path / "every", "float32", gemma=False)
    assert len(opened) >= 2  # transformers' own reads: one parse each
    expected, got = load_file(every / "model.safetensors"), load_file(once / "model.safetensors")
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (every / name).read_text() == (once / name).read_text(), name


def test_a_corrupt_gguf_is_a_clear_error_with_a_repair_hint(tmp_path):
    bad = tmp_path / "gemma-3-270m-q4_k_m.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(ModelLoadError, match="corrupt: delete it"):
        embedded.convert_gguf(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unknown_embedded_alias():
    from baco.models.hf import resolve_source

    with pytest.raises(ModelLoadError, match="unknown embedded model 'baco:nope'"):
        resolve_source("baco:nope")


def test_the_committed_adapter_names_the_embedded_base():
    config = json.loads((embedded.ADAPTER_DIR / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == embedded.BASE_ALIAS
    size = (embedded.ADAPTER_DIR / "adapter_model.safetensors").stat().st_size
    assert size < 10 * 1024 * 1024


@pytest.mark.slow
def test_cached_safetensors_give_the_gguf_logits():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = embedded._gguf_path()
    cached_dir = embedded.base_dir("bfloat16")
    tokenizer = AutoTokenizer.from_pretrained(cached_dir)
    ids = tokenizer("Question: Name a fruit.\nAnswer:", return_tensors="pt")["input_ids"]
    with embedded.parsed_once(gguf):  # the model's config and weights from one parse of the header (~30 s each)
        from_gguf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16)
    cached = AutoModelForCausalLM.from_pretrained(cached_dir, dtype=torch.bfloat16)
    with torch.no_grad():
        expected = from_gguf(ids).logits.float()
        got = cached(ids).logits.float()
    assert torch.equal(expected, got)
    assert tokenizer.chat_template == embedded.GEMMA_CHAT_TEMPLATE


@pytest.fixture
def gemma_pair(gemma):
    return gemma  # the embedded default pair (conftest: loaded once per session)


@pytest.mark.slow
def test_the_embedded_pair_shares_one_vocabulary_and_stops_at_end_of_turn(gemma_pair):
    pair = gemma_pair.pair
    assert pair.vocab_size == 262144
    assert {embedded.EOS_ID, embedded.END_OF_TURN_ID} <= pair.vocab.stop_ids
    tokenizer = gemma_pair.tokenizer
    for control in ("<start_of_turn>", "<start_of_image>", "<end_of_image>", "<bos>", "<pad>"):
        assert not pair.vocab.allowed[tokenizer.convert_tokens_to_ids(control)], control
    assert gemma_pair.prompt_format.render_aligned("Name a fruit", tokenizer) == (
        "<bos><start_of_turn>user\nName a fruit<end_of_turn>\n<start_of_turn>model\n")


@pytest.mark.slow
def test_the_adapter_changes_the_logits(gemma_pair):
    pair = gemma_pair.pair
    ids = [gemma_pair.tokenizer(gemma_pair.prompt_format.render_aligned("Name a fruit.", gemma_pair.tokenizer),
                                add_special_tokens=False)["input_ids"]]
    base, aligned = pair.start(ids, ids).logprobs()
    allowed = pair.vocab.allowed  # masked ids are -inf on both sides
    difference = (base - aligned)[:, allowed].abs()
    assert difference.max() > 0.5
    assert base.argmax() != aligned.argmax() or difference.mean() > 1e-3


@pytest.mark.slow
def test_collaborative_generation_on_the_embedded_pair(gemma_pair):
    from baco import SamplingParams

    samples = gemma_pair.generate(["Name a fruit."], router="p-punc:0.5", n=2,
                                  sampling=SamplingParams(min_p=0.05, max_new_tokens=24, seed=0))
    assert len(samples) == 2 and all(s.num_tokens > 0 for s in samples)
    assert all(set(s.sources) <= {"base", "aligned"} for s in samples)
