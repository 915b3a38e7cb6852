"""Adapter pairs in one forward: the base model and its LoRA-adapted aligned model share one set of
weights, and the engine steps both sides as rows of one batch (the adapter's update weighted per row)."""

import json
import os
import subprocess
import sys

import pytest
import torch

from baco import Collaboration, SamplingParams
from baco.decode.engine import Engine
from baco.errors import BacoError
from baco.models.hf import AdapterView, HFCausalLM, load_pair_models
from baco.models.pair import ModelPair
from baco.routers import get_router
from baco.testing import make_tiny_adapter

from test_engine import (GREEDY_AND_SAMPLED, PROMPTS, host_touches, run, same_tokens,
                         same_tokens_with_joiners_and_moves, same_tokens_with_penalties)

ROUTERS = ["p-punc:0.3", "rand:0.5", "nudge:0.3", "eft:0.5", "contrast:0.5", "aligned", "base"]


@pytest.fixture(scope="module")
def adapter_dirs(tiny_dirs, tmp_path_factory):
    base, _ = tiny_dirs
    return base, make_tiny_adapter(tmp_path_factory.mktemp("adapter") / "aligned", base, seed=3)


@pytest.fixture(scope="module")
def pairs(adapter_dirs):
    """(two models, adapter merged into a copy; one set of weights, adapter unmerged), float32 on the CPU."""
    base, adapter = adapter_dirs
    two = Collaboration.from_pretrained(base, adapter, device="cpu", dtype="float32", one_forward="off")
    one = Collaboration.from_pretrained(base, adapter, device="cpu", dtype="float32", one_forward="on")
    return two, one


def test_the_one_forward_pair_holds_one_copy_of_the_weights(pairs):
    two, one = pairs
    assert isinstance(one.pair.base.model, AdapterView) and isinstance(one.pair.aligned.model, AdapterView)
    assert one.pair.base.model.peft is one.pair.aligned.model.peft
    engine = Engine(one.pair, get_router("p-punc:0.5"), max_batch=4, max_len=64)
    assert len(engine.units) == 1 and engine.units[0].lanes == 2
    assert len(Engine(two.pair, get_router("p-punc:0.5"), max_batch=4, max_len=64).units) == 2

    def weight_bytes(pair):
        tensors = {p.data_ptr(): p for lm in (pair.base, pair.aligned) for p in lm.model.parameters()}
        return sum(p.numel() * p.element_size() for p in tensors.values())

    assert weight_bytes(one.pair) < 0.6 * weight_bytes(two.pair)


def test_the_adapter_changes_the_aligned_side_and_leaves_the_base_side_alone(pairs):
    two, one = pairs
    ids = [one.tokenizer("Name a fruit.")["input_ids"]]
    base_one, aligned_one = one.pair.start(ids, ids).logprobs()
    base_two, aligned_two = two.pair.start(ids, ids).logprobs()
    allowed = one.pair.vocab.allowed
    assert (base_one - aligned_one)[:, allowed].abs().max() > 0.1  # the adapter is not a no-op
    assert torch.equal(base_one, base_two)  # "__base__" rows are the base model itself
    assert torch.allclose(aligned_one, aligned_two, atol=1e-4)  # unmerged == merged, up to float rounding


@pytest.mark.parametrize("router", ROUTERS)
@GREEDY_AND_SAMPLED
def test_one_forward_pair_equals_the_two_model_pair_token_for_token(pairs, router, params):
    two, one = pairs
    requests = two.requests(PROMPTS, 2, params, seed=params.seed)  # 6 requests, 3 slots: rows join mid-run
    _, engine = same_tokens(two.pair, one.pair, router, params, requests, max_batch=3)
    assert engine.units[0].lanes == 2


def test_penalties_on_the_one_forward_pair_give_the_two_model_pairs_tokens(pairs):
    two, one = pairs
    same_tokens_with_penalties(two.pair, one.pair, two, "p-punc:0.3")


def test_late_joiners_and_compaction_keep_both_lanes_of_a_slot_together(pairs):
    """A slot's base and aligned rows join, move and leave together: the same tokens as the two-model pair."""
    two, one = pairs
    same_tokens_with_joiners_and_moves(two.pair, one.pair, one)


def test_calls_from_several_threads_give_the_samples_each_gives_alone(pairs):
    """The two sides of a one-forward pair share the model and its per-forward adapter rows: without turns,
    threads' forwards would mix their rows' adapter weights (wrong tokens, or a shape error)."""
    from concurrent.futures import ThreadPoolExecutor

    _, one = pairs
    params = SamplingParams(max_new_tokens=16, seed=3)
    tokens = lambda prompt: [s.token_ids for s in one.generate(prompt, sampling=params, n=2)]  # noqa: E731
    alone = [tokens(prompt) for prompt in PROMPTS * 3]
    with ThreadPoolExecutor(len(alone)) as pool:
        assert list(pool.map(tokens, PROMPTS * 3)) == alone


def test_a_warm_one_forward_step_touches_no_host_value_or_host_data(pairs):
    """Both lanes in one forward, still capturable: the adapter reaches its rows through a fixed 0/1 weight per
    row (made with the engine, for every batch size), never through rows gathered by a Python list, as peft's
    `adapter_names=` batches do (the last assertion: the check sees that)."""
    _, one = pairs
    all_knobs = (True, True, False, False, False, True, True)  # top-k, top-p, penalties
    engine = Engine(one.pair, get_router("p-punc:0.5"), max_batch=4, max_len=32, sync_free=True, graphs=False)
    for _ in range(2):
        engine._step_fn(4, all_knobs)
    assert engine.units[0].lanes == 2
    assert host_touches(lambda: engine._step_fn(4, all_knobs)) == []
    assert host_touches(lambda: engine._step_fn(2, all_knobs)) == []  # a batch size not stepped before: made already
    peft, ids = one.pair.base.model.peft, torch.zeros((4, 1), dtype=torch.long)
    with torch.inference_mode():
        assert "aten::lift_fresh" in host_touches(lambda: peft(input_ids=ids, adapter_names=["__base__", "aligned"] * 2))


def test_adapters_that_are_more_than_plain_lora_load_as_two_models(tiny_dirs, tmp_path):
    """A DoRA adapter rescales whole weights, not one LoRA update per row: `auto` loads two models (the adapter
    merged), `on` says why it cannot, before any decoding."""
    base, _ = tiny_dirs
    dora = make_tiny_adapter(tmp_path / "dora", base, seed=4, use_dora=True)
    base_lm, aligned_lm = load_pair_models(base, dora, device="cpu", dtype="float32")
    assert not isinstance(aligned_lm.model, AdapterView) and base_lm.model is not aligned_lm.model
    ids = torch.tensor([[3, 5, 7, 11]])
    with torch.inference_mode():  # the two models are the plain base and the adapter merged, as two-model pairs load
        for lm, reference in ((base_lm, base), (aligned_lm, dora)):
            expected = HFCausalLM.from_pretrained(reference, device="cpu", dtype="float32").model(input_ids=ids).logits
            assert torch.allclose(lm.model(input_ids=ids).logits, expected, atol=1e-5)
    with pytest.raises(BacoError, match="LoRA variant.*one_forward='off'"):
        load_pair_models(base, dora, device="cpu", dtype="float32", one_forward="on")


def test_one_model_read_twice_also_steps_in_one_forward(collab):
    """A pair whose two sides are the same model (e.g. prompting baselines) needs no second forward either."""
    lm = collab.pair.aligned
    params = SamplingParams(max_new_tokens=16, seed=2)
    requests = collab.requests(PROMPTS, 2, params, seed=2)
    pair = ModelPair(lm, lm)
    got, engine = run(pair, requests, "p-punc:0.5", params, max_batch=3)
    assert len(engine.units) == 1 and engine.units[0].lanes == 2
    from test_engine import reference

    for request, tokens in zip(requests, got):
        assert tokens == reference(pair, request, get_router("p-punc:0.5"), params)


def test_auto_shares_weights_on_the_cpu_and_off_keeps_two_models(adapter_dirs):
    base, adapter = adapter_dirs
    auto = load_pair_models(base, adapter, device="cpu", dtype="float32")
    assert isinstance(auto[0].model, AdapterView)
    off = load_pair_models(base, adapter, device="cpu", dtype="float32", one_forward="off")
    assert not isinstance(off[1].model, AdapterView) and off[0].model is not off[1].model


def test_one_forward_on_a_pair_that_is_not_an_adapter_pair_is_a_clear_error(tiny_dirs):
    base, aligned = tiny_dirs
    with pytest.raises(BacoError, match="LoRA adapter on the base model itself"):
        load_pair_models(base, aligned, device="cpu", one_forward="on")
    with pytest.raises(BacoError, match="one_forward must be one of"):
        load_pair_models(base, aligned, device="cpu", one_forward="yes")
    # a pair of two different models stays two models under auto
    two = load_pair_models(base, aligned, device="cpu")
    assert not isinstance(two[0].model, AdapterView)


def test_cli_one_forward_gives_the_two_model_samples(adapter_dirs, tmp_path):
    from baco.cli import main

    base, adapter = adapter_dirs
    written = {}
    for mode in ("on", "off"):
        out = tmp_path / f"{mode}.jsonl"
        code = main(["generate", "--base", str(base), "--aligned", str(adapter), "--one-forward", mode,
                     "--dtype", "float32", "--router", "p-punc:0.5", "--n", "2", "--max-new-tokens", "12",
                     "--seed", "4", "--prompt", "Name a fruit.", "--out", str(out), "--quiet"])
        assert code == 0
        written[mode] = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["token_ids"] for r in written["on"]] == [r["token_ids"] for r in written["off"]]
    assert [r["sources"] for r in written["on"]] == [r["sources"] for r in written["off"]]
    with pytest.raises(SystemExit) as usage:
        main(["generate", "--one-forward", "sideways", "--prompt", "x"])
    assert usage.value.code == 2


def test_an_adapter_pair_loads_without_library_notices_on_stderr(adapter_dirs, tmp_path):
    """peft wraps the model by reading a transformers attribute that is deprecated: a notice about the
    libraries' code, which a user of `baco generate` on an adapter pair should not see on every run."""
    base, adapter = adapter_dirs
    run = subprocess.run([sys.executable, "-m", "baco.cli", "generate", "--base", str(base), "--aligned", str(adapter),
                          "--dtype", "float32", "--one-forward", "on", "--n", "1", "--max-new-tokens", "4",
                          "--prompt", "Name a fruit.", "--out", str(tmp_path / "out.jsonl"), "--quiet"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "warning" not in run.stderr.lower(), run.stderr


def test_a_seed_gives_the_same_samples_in_another_process(adapter_dirs, tmp_path):
    """The demo's setting (bf16, one forward, rows of three prompts sharing their prefills) run by two processes:
    nothing in a sample may depend on the process (hash randomisation of sets and dicts, object ids, memory
    layout), only on the seed, so every token, writer and statistic agrees. Timings are left out."""
    base, adapter = adapter_dirs
    rows = []
    for hash_seed in ("1", "2"):
        out = tmp_path / f"out-{hash_seed}.jsonl"
        run = subprocess.run([sys.executable, "-m", "baco.cli", "generate", "--base", str(base), "--aligned",
                              str(adapter), "--dtype", "bfloat16", "--one-forward", "on", "--n", "4",
                              "--max-new-tokens", "12", "--seed", "5", "--threads", "2", "--prompt", "Name a fruit.",
                              "--prompt", "Tell me a story about a dragon.", "--prompt", "Hi", "--out", str(out),
                              "--quiet"], capture_output=True, text=True, timeout=300,
                             env={**os.environ, "PYTHONHASHSEED": hash_seed})
        assert run.returncode == 0, run.stderr
        timing = ("elapsed_s", "tokens_per_s")
        rows.append(sorted(({k: v for k, v in json.loads(line).items() if k not in timing}
                            for line in out.read_text().splitlines()),
                           key=lambda r: (r["prompt_index"], r["sample_index"])))
    assert len(rows[0]) == 12 and sum(r["num_tokens"] for r in rows[0]) > 12
    assert rows[0] == rows[1]


@pytest.mark.slow
def test_embedded_pair_in_bf16_one_forward_matches_two_models_within_tie_noise(gemma, gemma_two_models):
    """bf16: merging the adapter rounds W + BA to bf16, the unmerged path adds B(Ax) to Wx; the aligned
    distributions differ by rounding. Defined tolerance, teacher-forced on the two-model greedy
    continuation: the base side is identical; on the aligned side the top-1 log-prob moves by < 0.5
    nats and the top-1 token changes only where the two best tokens are within 0.5 nats (a near tie)."""
    one, two = gemma, gemma_two_models  # the default on the CPU (one forward), and one_forward="off"
    assert isinstance(one.pair.base.model, AdapterView) and not isinstance(two.pair.aligned.model, AdapterView)
    prompts = ["Name a fruit.", "Write a two-line poem about the sea.", "Give me an idea for a weekend trip."]
    samples = two.generate(prompts, router="aligned", sampling=SamplingParams(temperature=0, max_new_tokens=40, seed=0))
    tok = two.tokenizer
    for prompt, sample in zip(prompts, samples):
        ids = torch.tensor([tok(two.prompt_format.render_aligned(prompt, tok), add_special_tokens=False)["input_ids"]
                            + sample.token_ids])
        with torch.inference_mode():
            for side in ("base", "aligned"):
                merged = getattr(two.pair, side).model(input_ids=ids).logits[0].float().log_softmax(-1)
                shared = getattr(one.pair, side).model(input_ids=ids).logits[0].float().log_softmax(-1)
                if side == "base":
                    assert torch.equal(merged, shared)
                    continue
                best = merged.topk(2, dim=-1)
                assert (shared.gather(-1, best.indices[:, :1]) - best.values[:, :1]).abs().max() < 0.5
                flipped = shared.argmax(-1) != best.indices[:, 0]
                margin = best.values[:, 0] - best.values[:, 1]
                assert bool((margin[flipped] < 0.5).all())
