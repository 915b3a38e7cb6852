"""GGUF export for the llama.cpp backend: the files llama.cpp loads give the logits the HF models give.

Tolerance for the tiny float32 models: both sides compute in float32 with F32 weights and an F32 KV cache,
so they differ only in the order of float32 sums (llama.cpp also keeps a LoRA unmerged, W x + s B(A x),
where HF merges W + s BA). Measured differences are ~2e-5 on logits of magnitude ~10 (the tiny models'
weights are N(0, 0.5)); ATOL = 1e-3 leaves 50x headroom and stays far below the adapter's own effect.
"""

import json
import logging

import numpy as np
import pytest
import torch

from baco.errors import BacoError

pytest.importorskip("llama_cpp")
if not __import__("baco.models.llamacpp", fromlist=["available"]).available():  # an AMX build (models/llamacpp.py)
    pytest.skip("this llama-cpp-python build cannot run here: rebuild it as `make setup` does",
                allow_module_level=True)
logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # llama.cpp's load log, line by line

from baco.models.gguf_export import llama_logits, write_llama_gguf, write_lora_gguf  # noqa: E402

ATOL = 1e-3


def _sequences(tokenizer) -> list[list[int]]:
    texts = ["Question: Name a fruit.\nAnswer: An apple", "The grey sea breathes, the tide comes in"]
    encoded = [tokenizer(text)["input_ids"] for text in texts]
    return encoded + [np.random.default_rng(0).integers(0, len(tokenizer), 12).tolist()]


def _hf_logits(model, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def _tiny_adapter(directory, base_dir):
    """A random LoRA (r=4, B not zero) on every linear layer of the tiny base."""
    import baco.testing

    if hasattr(baco.testing, "make_tiny_adapter"):
        return baco.testing.make_tiny_adapter(directory, base_dir)
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    get_peft_model(model, config).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def tiny_gguf(tiny_dirs, tmp_path_factory):
    base_dir = tiny_dirs[0]
    return base_dir, write_llama_gguf(base_dir, tmp_path_factory.mktemp("gguf") / "tiny.gguf")


def test_tiny_llama_gguf_gives_the_hf_logits_in_llama_cpp(tiny_gguf):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_dir, gguf_path = tiny_gguf
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    for ids in _sequences(AutoTokenizer.from_pretrained(base_dir)):
        expected, got = _hf_logits(model, ids), llama_logits(gguf_path, ids)
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL)
        assert (got.argmax(-1) == expected.argmax(-1)).all()


def test_tiny_llama_gguf_carries_the_tokenizer_and_hyperparameters(tiny_gguf):
    import gguf
    from transformers import AutoTokenizer

    base_dir, gguf_path = tiny_gguf
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    fields = gguf.GGUFReader(gguf_path).fields
    tokens = fields["tokenizer.ggml.tokens"].contents()
    assert tokens == tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    assert fields["tokenizer.ggml.model"].contents() == "gpt2"
    assert fields["tokenizer.ggml.bos_token_id"].contents() == tokenizer.bos_token_id
    assert fields["tokenizer.ggml.eos_token_id"].contents() == tokenizer.eos_token_id
    assert fields["tokenizer.ggml.padding_token_id"].contents() == tokenizer.pad_token_id
    types = fields["tokenizer.ggml.token_type"].contents()
    assert types[tokenizer.convert_tokens_to_ids("<end_of_turn>")] == gguf.TokenType.CONTROL
    assert fields["llama.attention.head_count_kv"].contents() == 2


def test_tiny_lora_gguf_in_llama_cpp_gives_the_merged_hf_logits(tiny_gguf, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_dir, gguf_path = tiny_gguf
    adapter_dir = _tiny_adapter(tmp_path / "adapter", base_dir)
    lora_path = write_lora_gguf(adapter_dir, tmp_path / "adapter.gguf", base_gguf=gguf_path)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    for ids in _sequences(AutoTokenizer.from_pretrained(base_dir)):
        expected, got = _hf_logits(merged, ids), llama_logits(gguf_path, ids, lora=lora_path)
        np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL)
        assert (got.argmax(-1) == expected.argmax(-1)).all()
        assert np.abs(got - llama_logits(gguf_path, ids)).max() > 100 * ATOL  # the adapter does change them


def test_lora_gguf_takes_the_architecture_from_the_base_config(tiny_gguf, tmp_path):
    import gguf

    base_dir, _ = tiny_gguf
    adapter_dir = _tiny_adapter(tmp_path / "adapter", base_dir)
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(base_dir)
    (adapter_dir / "adapter_config.json").write_text(json.dumps(config))
    fields = gguf.GGUFReader(write_lora_gguf(adapter_dir, tmp_path / "adapter.gguf")).fields
    assert fields["general.architecture"].contents() == "llama"
    assert fields["general.type"].contents() == "adapter"
    assert fields["adapter.type"].contents() == "lora"
    assert fields["adapter.lora.alpha"].contents() == config["lora_alpha"]


def test_a_directory_without_adapter_config_is_a_clear_error(tmp_path):
    with pytest.raises(BacoError, match="no adapter_config.json"):
        write_lora_gguf(tmp_path, tmp_path / "out.gguf")
    assert not (tmp_path / "out.gguf").exists()


def test_a_non_lora_peft_adapter_is_a_clear_error(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "IA3", "target_modules": ["k_proj"]}))
    with pytest.raises(BacoError, match="IA3 adapter; only LoRA"):
        write_lora_gguf(tmp_path, tmp_path / "out.gguf")


def test_a_base_gguf_that_is_not_a_gguf_is_a_clear_error(tiny_gguf, tmp_path):
    adapter_dir = _tiny_adapter(tmp_path / "adapter", tiny_gguf[0])
    (tmp_path / "base.gguf").write_text("not a gguf")
    with pytest.raises(BacoError, match=r"could not read the GGUF file .*base.gguf.: it is not a GGUF file \(no GGUF magic"):
        write_lora_gguf(adapter_dir, tmp_path / "out.gguf", base_gguf=tmp_path / "base.gguf")


def test_a_model_other_than_llama_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "vocab_size": 10}))
    with pytest.raises(BacoError, match="model_type 'gpt2'"):
        write_llama_gguf(tmp_path, tmp_path / "out.gguf")


def test_a_missing_output_folder_is_a_clear_error(tiny_gguf, tmp_path):
    base_dir, _ = tiny_gguf
    with pytest.raises(BacoError, match="could not write"):
        write_llama_gguf(base_dir, tmp_path / "missing" / "tiny.gguf")


# llama.cpp multiplies the Q4_K_M weights with activations quantised to 8 bits, HF the dequantised weights in
# bf16: on the base model alone the two differ by 0.5-3 logits per position, which flips near-ties. So top-1
# must agree on >= 90% of the positions whose HF top-1 leads by more than NEAR_TIE logits, and on >= 85%
# of all positions (measured: 72 of 82 overall, every disagreement at a lead below 0.4).
NEAR_TIE = 0.5


@pytest.mark.slow
def test_embedded_adapter_as_gguf_lora_agrees_with_the_hf_aligned_model(gemma_two_models):
    from baco.models import embedded
    from baco.models.gguf_export import aligned_lora_gguf

    lora = aligned_lora_gguf()
    assert lora.parent == embedded.cache_dir() and aligned_lora_gguf() == lora
    aligned = gemma_two_models.pair.aligned  # the adapter merged, bf16
    assert aligned.model.dtype == torch.bfloat16
    tokenizer = aligned.tokenizer
    texts = [("Name a fruit.", "An apple is a sweet fruit that grows on trees."),
             ("Tell me a story about a dragon.", "Once upon a time, a small dragon lived in a cave by the sea."),
             ("What should I cook tonight?", "How about a warm vegetable soup with fresh bread?")]
    agree, clear, changed = [], [], 0.0
    for prompt, continuation in texts:
        chat = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
        ids = tokenizer(chat + continuation, add_special_tokens=False)["input_ids"]
        expected = _hf_logits(aligned.model, ids)
        got = llama_logits(embedded._gguf_path(), ids, lora=lora)
        top2 = np.sort(expected, axis=-1)[:, -2:]
        agree.extend(got.argmax(-1) == expected.argmax(-1))
        clear.extend(top2[:, 1] - top2[:, 0] > NEAR_TIE)
        changed = max(changed, float(np.abs(got - llama_logits(embedded._gguf_path(), ids)).max()))
    agree, clear = np.array(agree), np.array(clear)
    report = f"top-1 agrees on {agree.sum()} of {len(agree)} positions, {agree[clear].sum()} of {clear.sum()} clear ones"
    assert agree[clear].mean() >= 0.9 and agree.mean() >= 0.85, report
    assert changed > 0.5  # the adapter changes llama.cpp's logits
