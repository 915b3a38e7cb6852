"""The llama.cpp backend (the `gguf` extra, llama-cpp-python; `make test` installs it): GGUF models on the same engine,
routers, sampler and provenance as the HF backend. Tiny float32 GGUFs are written here from the tiny HF pair."""

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("llama_cpp")
if not __import__("baco.models.llamacpp", fromlist=["available"]).available():  # an AMX build (models/llamacpp.py)
    pytest.skip("this llama-cpp-python build cannot run here: rebuild it as `make setup` does",
                allow_module_level=True)

from baco import Collaboration, SamplingParams  # noqa: E402
from baco.errors import BacoError, ModelLoadError  # noqa: E402
from baco.models.gguf_export import write_llama_gguf, write_lora_gguf  # noqa: E402
from baco.models.hf import load_tokenizer  # noqa: E402
from baco.models.llamacpp import LLAMACPP_MAX_ROWS, choose_backend, load_llamacpp_models  # noqa: E402
from baco.models.pair import ModelPair  # noqa: E402
from baco.testing import make_tiny_adapter  # noqa: E402

from test_engine import (GREEDY_AND_SAMPLED, PROMPTS, run, same_tokens, same_tokens_with_joiners_and_moves,  # noqa: E402
                         same_tokens_with_penalties)

ROUTERS = ["p-punc:0.3", "nudge:0.3", "eft:0.5", "contrast:0.5", "aligned", "base"]


@pytest.fixture(scope="module")
def ggufs(tiny_dirs, tmp_path_factory):
    """(base dir, aligned dir, base.gguf, aligned.gguf, adapter dir, adapter.gguf) of the tiny pair."""
    base, aligned = tiny_dirs
    out = tmp_path_factory.mktemp("gguf")
    adapter = make_tiny_adapter(out / "adapter", base, seed=3)
    base_gguf = write_llama_gguf(base, out / "base.gguf")
    return (base, aligned, base_gguf, write_llama_gguf(aligned, out / "aligned.gguf"), adapter,
            write_lora_gguf(adapter, out / "adapter.gguf", base_gguf=base_gguf))


def llama_collab(base_gguf, aligned_gguf, tokenizer_dir) -> Collaboration:
    tokenizer = load_tokenizer(tokenizer_dir)  # the HF tokenizer: same ids, and the chat template
    return Collaboration(ModelPair(*load_llamacpp_models(base_gguf, aligned_gguf, base_tokenizer=tokenizer,
                                                         aligned_tokenizer=tokenizer)))


@pytest.fixture(scope="module")
def both(ggufs, collab):
    base, _, base_gguf, aligned_gguf, _, _ = ggufs
    return collab, llama_collab(base_gguf, aligned_gguf, base)


@pytest.mark.parametrize("router", ROUTERS)
@GREEDY_AND_SAMPLED
def test_llamacpp_backend_equals_the_hf_backend_token_for_token_on_float32_ggufs(both, router, params):
    hf, llama = both
    requests = hf.requests(PROMPTS, 2, params, seed=params.seed)  # 6 requests, 3 slots: rows join mid-run
    _, engine = same_tokens(hf.pair, llama.pair, router, params, requests, max_batch=3)
    assert type(engine.units[0]).__name__ == "LlamaUnit"


def test_penalties_on_llamacpp_give_the_hf_backends_tokens(both):
    hf, llama = both
    same_tokens_with_penalties(hf.pair, llama.pair, hf, "p-punc:0.3")


def test_llamacpp_slots_are_reused_and_compacted_like_the_hf_engine(both):
    hf, llama = both
    same_tokens_with_joiners_and_moves(hf.pair, llama.pair, hf)


def test_an_auto_batch_on_llamacpp_runs_its_own_batch_size(both):
    """llama.cpp sizes its own caches: `auto` is its fastest CPU batch, and the samples those of any batch."""
    from baco.decode.engine import fit_slots

    _, llama = both
    assert fit_slots(llama.pair, 64) == LLAMACPP_MAX_ROWS == llama.pair.base.auto_rows
    params = SamplingParams(max_new_tokens=5, seed=3)
    auto = llama.generate(PROMPTS, n=4, sampling=params, batch_size="auto")
    assert [s.token_ids for s in auto] == [s.token_ids for s in llama.generate(PROMPTS, n=4, sampling=params,
                                                                               batch_size=3)]


def test_a_gguf_lora_adapter_on_the_base_gguf_is_the_aligned_side(ggufs):
    """aligned = base GGUF + LoRA GGUF (one copy of the weights) == HF base + the same peft adapter."""
    base, _, base_gguf, _, adapter, adapter_gguf = ggufs
    hf = Collaboration.from_pretrained(base, adapter, device="cpu", dtype="float32", one_forward="off")
    llama = llama_collab(base_gguf, adapter_gguf, base)
    assert llama.pair.base.weights is llama.pair.aligned.weights and llama.pair.aligned.lora
    params = SamplingParams(temperature=0, max_new_tokens=16, seed=0)
    requests = hf.requests(PROMPTS, 1, params, seed=0)
    for router in ("aligned", "p-punc:0.3"):
        same_tokens(hf.pair, llama.pair, router, params, requests)
    base_only, _ = run(llama.pair, requests, "base", params)
    aligned_only, _ = run(llama.pair, requests, "aligned", params)
    assert base_only != aligned_only  # the adapter is applied to the aligned side only


def test_backend_choice_and_its_errors(ggufs, tiny_dirs, tmp_path):
    base, aligned, base_gguf, aligned_gguf, _, adapter_gguf = ggufs
    assert choose_backend("auto", base, aligned) == "hf"  # HF directories
    assert choose_backend("auto", base_gguf, aligned_gguf) == "llamacpp"
    assert choose_backend("auto", "baco:gemma-3-270m", "baco:gemma-3-270m-aligned") == "llamacpp"
    assert choose_backend("auto", "baco:gemma-3-270m", "baco:gemma-3-270m-aligned", one_forward="on") == "hf"
    assert choose_backend("auto", "baco:gemma-3-270m", "baco:gemma-3-270m-aligned", router="chared:0.5") == "hf"
    # many rows at once: the embedded pair goes to transformers (one forward), GGUF files stay on llama.cpp
    embedded = ("baco:gemma-3-270m", "baco:gemma-3-270m-aligned")
    assert choose_backend("auto", *embedded, rows=LLAMACPP_MAX_ROWS) == "llamacpp"
    assert choose_backend("auto", *embedded, rows=LLAMACPP_MAX_ROWS + 1) == "hf"
    assert choose_backend("auto", base_gguf, aligned_gguf, rows=64) == "llamacpp"
    assert choose_backend("llamacpp", *embedded, rows=64) == "llamacpp"  # asked for: kept
    assert choose_backend("auto", *embedded, rows=1, compile=True) == "hf"  # torch.compile runs transformers
    with pytest.raises(BacoError, match="compile .* runs transformers models"):
        choose_backend("llamacpp", *embedded, compile=True)
    with pytest.raises(BacoError, match="backend must be one of"):
        choose_backend("vllm", base, aligned)
    with pytest.raises(BacoError, match="runs GGUF files"):
        choose_backend("llamacpp", base, aligned)
    with pytest.raises(BacoError, match="GGUF files run on the llama.cpp backend"):
        choose_backend("hf", base_gguf, aligned_gguf)
    with pytest.raises(BacoError, match="no --anchor, --device"):
        choose_backend("llamacpp", base_gguf, aligned_gguf, device="cuda")
    with pytest.raises(ModelLoadError, match="GGUF LoRA adapter: pass it as --aligned"):
        load_llamacpp_models(adapter_gguf, base_gguf)
    corrupt = tmp_path / "corrupt.gguf"
    corrupt.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(ModelLoadError, match="corrupt.gguf"):
        load_llamacpp_models(corrupt, aligned_gguf)


def test_gguf_metadata_is_read_from_the_header_as_the_gguf_library_reads_it(ggufs, tmp_path):
    """`gguf_field` reads one key without parsing the whole file (gguf.GGUFReader takes ~30 s on Gemma's vocabulary):
    every string and number field of a model and of an adapter GGUF reads as the gguf library reads it."""
    from gguf import GGUFReader

    from baco.models.gguf_export import gguf_field

    for path in (ggufs[2], ggufs[5]):
        fields = GGUFReader(path).fields
        checked = 0
        for key, field in fields.items():
            if key.startswith("GGUF.") or len(field.types) != 1:
                continue  # the reader's own header entries; arrays
            value = field.contents()
            assert gguf_field(path, key) == (pytest.approx(value) if isinstance(value, float) else value), key
            checked += 1
        assert checked >= 4 and gguf_field(path, "no.such.key") is None
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(Path(ggufs[2]).read_bytes()[:200])
    with pytest.raises(ModelLoadError, match="truncated.gguf.*its metadata ends early"):
        gguf_field(truncated, "no.such.key")


def test_cli_generate_on_ggufs_records_the_backend(ggufs, tmp_path):
    from baco.cli import main

    base, _, base_gguf, _, _, adapter_gguf = ggufs
    template = tmp_path / "turns.jinja"
    template.write_text(load_tokenizer(base).chat_template)
    out = tmp_path / "out.jsonl"
    code = main(["generate", "--base", str(base_gguf), "--aligned", str(adapter_gguf), "--chat-template", str(template),
                 "--router", "p-punc:0.5", "--n", "2", "--max-new-tokens", "8", "--seed", "1",
                 "--prompt", "Name a fruit.", "--out", str(out), "--quiet"])
    assert code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2 and all(r["models"]["backend"] == "llamacpp" for r in rows)
    assert all(set(r["sources"]) <= {"base", "aligned"} and r["token_ids"] for r in rows)


@pytest.mark.slow
def test_embedded_pair_on_llamacpp_agrees_with_the_hf_backend(gemma_two_models):
    """Q4_K_M in llama.cpp (activations quantised to 8 bits in its matrix products) against the same
    weights dequantised to bf16 in transformers: teacher-forced on the HF greedy continuation, the
    aligned model's top-1 token agrees at >= 90% of positions (measured: docs/benchmarks.md), and
    the adapter changes llama.cpp's logits."""
    hf = gemma_two_models  # one_forward="off": two models, the aligned one with its adapter merged
    llama = Collaboration.from_pretrained(backend="llamacpp")
    unit = llama.pair.aligned.engine_unit(1, 512)
    base_unit = llama.pair.base.engine_unit(1, 512)
    prompts = ["Name a fruit.", "Write a two-line poem about the sea.", "What is rain?"]
    samples = hf.generate(prompts, router="aligned", sampling=SamplingParams(temperature=0, max_new_tokens=40, seed=0))
    agree = total = 0
    for prompt, sample in zip(prompts, samples):
        ids = hf.tokenizer(hf.prompt_format.render_aligned(prompt, hf.tokenizer), add_special_tokens=False)["input_ids"]
        ids += sample.token_ids
        got = torch.from_numpy(unit.decode(ids, list(range(len(ids))), [0] * len(ids), outputs=len(ids)).copy())
        unit.release(0)
        base = torch.from_numpy(base_unit.decode(ids, list(range(len(ids))), [0] * len(ids), outputs=len(ids)).copy())
        base_unit.release(0)
        with torch.inference_mode():
            expected = hf.pair.aligned.model(input_ids=torch.tensor([ids])).logits[0].float()
        agree += int((got.argmax(-1) == expected.argmax(-1)).sum())
        total += len(ids)
        assert (got - base).abs().max() > 0.5
    assert agree / total >= 0.9
    samples = llama.generate(prompts, router="p-punc:0.5", n=2, sampling=SamplingParams(max_new_tokens=16, seed=0))
    assert all(s.num_tokens > 0 and set(s.sources) <= {"base", "aligned"} for s in samples)


def test_a_sweep_config_can_run_on_llamacpp_and_its_samples_say_so(tmp_path):
    from baco.sweep import SweepConfigError, parse_config

    raw = {"name": "ll", "models": {"backend": "llamacpp"}, "tasks": [{"name": "open-ended", "limit": 2}],
           "methods": {"p-punc": {"router": "p-punc", "values": [0.5]}, "aligned": {"router": "aligned"}}}
    config = parse_config(raw)
    assert config.backend == "llamacpp"
    assert {c.router: config.models_of(c)["backend"] for c in config.configurations} == {
        "p-punc:0.5": "llamacpp", "aligned": "llamacpp"}
    assert "backend" not in parse_config({**raw, "models": {}}).models_of(config.configurations[0])
    with pytest.raises(SweepConfigError, match="models.backend must be hf or llamacpp"):
        parse_config({**raw, "models": {"backend": "vllm"}})


@pytest.mark.slow
def test_a_sweep_cell_on_llamacpp_runs_the_embedded_pair(tmp_path):
    from baco.sweep import Engines

    engines = Engines.load("baco:gemma-3-270m", "baco:gemma-3-270m-aligned", backend="llamacpp")
    assert engines.pair.base.weights is engines.pair.aligned.weights  # one copy of the Q4_K_M weights
    assert engines.pair.base.tokenizer is engines.pair.aligned.tokenizer  # and of the tokenizer (~5 s a read)
    assert engines.solo_aligned.base.lora


@pytest.mark.parametrize("backend", ["llamacpp", "auto", "hf"])
def test_a_gguf_path_that_does_not_exist_is_named(ggufs, tmp_path, backend):
    """It was 'the llama.cpp backend runs GGUF files' (llamacpp) or 'GGUF files run on the llama.cpp backend
    (--backend llamacpp or auto)' (auto): the file's absence went unsaid."""
    missing = tmp_path / "typo.gguf"
    with pytest.raises(ModelLoadError, match="no GGUF file at .*typo.gguf"):
        Collaboration.from_pretrained(missing, ggufs[3], backend=backend)
    with pytest.raises(ModelLoadError, match="no GGUF file at .*typo.gguf"):
        Collaboration.from_pretrained(ggufs[2], missing, backend=backend)


def test_a_gguf_pair_with_two_tokenizers_says_the_cross_methods_need_transformers(ggufs, tmp_path):
    from baco.errors import TokenizerMismatchError
    from baco.testing import tiny_model, train_tokenizer

    other_text = "zebra quartz jovial fox " * 40 + "Question: Answer: 0 1 2 . , ! ?"
    tokenizer = train_tokenizer(400, corpus=other_text)  # another byte-level BPE: other merges, other ids
    tiny_model(tokenizer, seed=9).save_pretrained(tmp_path / "other")
    tokenizer.save_pretrained(tmp_path / "other")
    other_gguf = write_llama_gguf(tmp_path / "other", tmp_path / "other.gguf")
    with pytest.raises(TokenizerMismatchError, match=r"disagree .* On llama.cpp only a same-tokenizer pair runs: "
                                                     r"the cross-tokenizer methods need .* \(--backend hf\)"):
        Collaboration.from_pretrained(ggufs[2], other_gguf, backend="llamacpp")


def test_a_rerun_with_a_prompt_added_keeps_the_backend_that_made_the_files_samples(tmp_path, capsys):
    """`--backend auto` picks llama.cpp for the embedded pair at up to 8 rows and transformers beyond; samples
    record their backend, so the rerun of an --out with a prompt added (12 rows) keeps llama.cpp: the 8 samples
    already there are kept and only the new prompt's 4 are made (the README's "completes the file")."""
    from baco.cli import main

    out = tmp_path / "samples.jsonl"
    flags = ["generate", "--n", "4", "--max-new-tokens", "3", "--seed", "0", "--quiet", "--out", str(out)]
    assert main([*flags, "--prompt", "Name a fruit.", "--prompt", "Name a tree."]) == 0
    assert main([*flags, "--prompt", "Name a fruit.", "--prompt", "Name a tree.", "--prompt", "Name a bird."]) == 0
    assert "--backend auto: llamacpp, which made the samples" in capsys.readouterr().err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 12 == len({row["id"] for row in rows})
    assert {row["models"].get("backend") for row in rows} == {"llamacpp"}
