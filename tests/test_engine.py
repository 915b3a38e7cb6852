"""The engine (static slot caches, continuous batching, the sync-free step) on the tiny random pair, CPU, float32."""

import json
import math

import pytest
import torch

from baco import SamplingParams
from baco.decode import sampling as sampling_module
from baco.decode.engine import Engine, cache_bytes
from baco.decode.loop import row_uniforms
from baco.decode.sampling import RowKnobs
from baco.decode.step import route_and_draw
from baco.errors import BacoError
from baco.routers import StepView, get_router
from sampling_reference import inverse_cdf_draw, transformers_distribution

PROMPTS = ["Name a fruit.", "Tell me a story about a dragon who could not fly, and why it did not mind.", "Why?"]
ROUTERS = ["p-punc:0.3", "p-fc:0.5", "rand:0.5", "nudge:0.3", "eft:0.5", "contrast:0.5", "aligned", "base"]


def reference(pair, request, router, params):
    """Yesterday's loop for one request: transformers' own dynamic KV cache, the same step math."""
    session = pair.start([request.base_ids], [request.aligned_ids])
    base_lp, aligned_lp = session.logprobs()
    uniforms = row_uniforms(request.seed, request.max_new_tokens)
    previous, previous_base, tokens = torch.tensor([-1]), torch.tensor([False]), []
    for step in range(request.max_new_tokens):
        view = StepView(base_lp, aligned_lp, pair.vocab, uniforms[None, 2, step], step,
                        anchor_logprobs=session.anchor_logprobs(), previous=previous)
        drawn = route_and_draw(view, router, uniforms[None, :, step], previous, previous_base,
                               RowKnobs.of(params, 1), sync_free=False)
        tokens.append(int(drawn.tokens[0]))
        if tokens[-1] in pair.vocab.stop_ids:
            break
        previous, previous_base = drawn.tokens, drawn.use_base
        base_lp, aligned_lp = session.step(drawn.tokens)
    return tokens


def run(pair, requests, router, params, **engine_options):
    """Token ids per request (by position in `requests`) from one engine."""
    engine = Engine(pair, get_router(router), **{"max_batch": len(requests), "max_len": 96, **engine_options})
    for request in requests:
        engine.add(request, params)
    out = [[] for _ in requests]
    for event in engine.run():
        for rid, token in zip(event.rows, event.tokens.tolist()):
            out[rid].append(token)
    return out, engine


def same_tokens(reference, pair, router, params, requests, **engine_options):
    """Run both pairs on the same requests; their tokens must be equal. Returns (tokens, pair's engine)."""
    expected, _ = run(reference, requests, router, params, **engine_options)
    got, engine = run(pair, requests, router, params, **engine_options)
    assert got == expected
    assert sum(map(len, got)) > 5 * len(requests)  # not a run that stopped at once
    return got, engine


def same_tokens_with_joiners_and_moves(reference, pair, collab):
    """Rows that finish early (the others move down) and requests that wait for a slot: still equal."""
    params = SamplingParams(max_new_tokens=30, seed=5)
    requests = collab.requests(PROMPTS * 2, 1, params, seed=5)
    for i, request in enumerate(requests):
        request.max_new_tokens = 6 + 4 * i  # the earlier slots finish first: rows move down
    _, engine = same_tokens(reference, pair, "p-punc:0.3", params, requests)
    assert engine.stats["moves"] > 0
    same_tokens(reference, pair, "p-punc:0.3", params, requests, max_batch=2)  # requests wait for a slot
    return engine


def same_tokens_with_penalties(reference, pair, collab, router):
    """Rows with every penalty, a logit bias and min_tokens on, six requests in three slots (rows join mid-run): the
    same tokens on both pairs (each side's logits are biased, held back and penalised with its own prompt's tokens,
    whatever backend steps it)."""
    params = SamplingParams(min_p=0.05, max_new_tokens=20, seed=6, repetition_penalty=1.4, presence_penalty=0.6,
                            frequency_penalty=0.4, logit_bias={"7": 2.0, "30": -100, "1": 3.0}, min_tokens=8)
    return same_tokens(reference, pair, router, params, collab.requests(PROMPTS, 2, params, seed=6), max_batch=3)


GREEDY_AND_SAMPLED = pytest.mark.parametrize(
    "params", [SamplingParams(temperature=0, max_new_tokens=20, seed=0),
               SamplingParams(temperature=1.0, min_p=0.05, max_new_tokens=20, seed=1)], ids=["greedy", "sampled"])


@pytest.mark.parametrize("router", ROUTERS)
@GREEDY_AND_SAMPLED
def test_slot_engine_equals_a_dynamic_cache_reference_token_for_token(collab, router, params):
    requests = collab.requests(PROMPTS, 2, params, seed=params.seed)
    got, _ = run(collab.pair, requests, router, params, max_batch=3)  # 6 requests, 3 slots: rows join mid-run
    for request, tokens in zip(requests, got):
        assert tokens == reference(collab.pair, request, get_router(router), params)


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=0.8, top_p=0.9, max_new_tokens=24, seed=2),
    SamplingParams(temperature=1.5, top_k=7, top_p=0.95, max_new_tokens=24, seed=3),
    SamplingParams(temperature=2.0, min_p=0.02, max_new_tokens=24, seed=4),
    SamplingParams(temperature=0, max_new_tokens=24, seed=5),
], ids=["top-p", "top-k+top-p", "min-p", "greedy"])
@pytest.mark.parametrize("router", ["p-punc:0.5", "eft:0.3"])
def test_sync_free_step_gives_the_same_tokens_as_the_host_branching_step(collab, monkeypatch, params, router):
    monkeypatch.setattr(sampling_module, "PRECUT", 8)  # make the top-p fall-back to a full sort happen
    requests = collab.requests(PROMPTS, 3, params, seed=params.seed)
    eager, _ = run(collab.pair, requests, router, params, sync_free=False)
    sync_free, engine = run(collab.pair, requests, router, params, sync_free=True)
    assert engine.sync_free and not engine.graphs  # no graphs on the CPU: the same step, run eagerly
    assert sync_free == eager


def test_a_request_joining_a_used_slot_mid_run_equals_the_same_request_alone(collab):
    params = SamplingParams(max_new_tokens=30, seed=7)
    requests = collab.requests(PROMPTS * 2, 1, params, seed=7)
    for i, request in enumerate(requests):
        request.max_new_tokens = 6 + 5 * i  # different lengths: slots free up at different steps
    shared, engine = run(collab.pair, requests, "p-punc:0.4", params, max_batch=2)
    assert engine.stats["steps"] < sum(r.max_new_tokens for r in requests)  # rows overlapped
    for request, tokens in zip(requests, shared):
        alone, _ = run(collab.pair, [request], "p-punc:0.4", params, max_batch=1)
        assert tokens == alone[0]


def test_a_reused_slot_starts_from_a_clean_state(collab):
    params = SamplingParams(max_new_tokens=12, seed=3)
    first, second = collab.requests(PROMPTS[1:3], 1, params, seed=3)
    engine = Engine(collab.pair, get_router("p:0.5"), max_batch=1, max_len=96)
    engine.add(first, params)
    engine.add(second, params)
    while 0 not in engine.finished_rids:
        engine.step()
    engine._admit()  # the step boundary: the second request takes the first one's slot
    assert engine.live[0].rid == 1
    for side, reads in enumerate(engine.reads):
        prompt = second.base_ids if reads == "base" else second.aligned_ids
        assert engine.positions[side][0] == len(prompt) - 1 == engine.valid[side][0]
        assert engine.inputs[side][0] == prompt[-1]
    assert engine.previous[0] == -1 and engine.t[0] == 0


def test_continuous_batching_needs_fewer_steps_than_static_batches(collab):
    params = SamplingParams(max_new_tokens=40, seed=0)
    requests = collab.requests(PROMPTS * 3, 1, params, seed=0)
    lengths = [4, 40, 4, 40, 4, 40, 4, 40, 4]
    for request, length in zip(requests, lengths):
        request.max_new_tokens = length
    out, engine = run(collab.pair, requests, "aligned", params, max_batch=3)
    produced = [len(tokens) for tokens in out]
    static_steps = sum(max(produced[i:i + 3]) for i in range(0, len(produced), 3))  # batches of 3, in order
    assert engine.stats["steps"] < static_steps


def test_long_prompts_are_prefilled_in_chunks_while_other_rows_keep_stepping(collab):
    params = SamplingParams(temperature=0, max_new_tokens=16, seed=0)
    short, long = collab.requests([PROMPTS[2], PROMPTS[1] * 3], 1, params, seed=0)
    engine = Engine(collab.pair, get_router("p-punc:0.5"), max_batch=2, max_len=160, prefill_chunk=4)
    engine.add(short, params)
    while not engine.live:
        engine.step()  # until the short request is decoding
    engine.add(long, params)
    stepped_during_prefill = 0
    while engine.live and 1 not in engine.by_rid:
        event = engine.step()
        stepped_during_prefill += bool(event and 0 in event.rows)
    assert stepped_during_prefill >= 3  # the long prompt took several chunks; the short row did not wait
    chunked, _ = run(collab.pair, [long], "p-punc:0.5", params, max_len=160, prefill_chunk=4)
    whole, _ = run(collab.pair, [long], "p-punc:0.5", params, max_len=160)
    assert chunked == whole


def test_an_aborted_request_leaves_its_slot_to_the_next(collab):
    params = SamplingParams(max_new_tokens=20, seed=1)
    requests = collab.requests(PROMPTS, 1, params, seed=1)
    engine = Engine(collab.pair, get_router("aligned"), max_batch=1, max_len=96)
    for request in requests:
        engine.add(request, params)
    engine.step()
    engine.step()
    engine.abort(0)
    later = [event for event in engine.run()]
    assert all(0 not in event.rows for event in later)
    assert {rid for event in later for rid in event.rows} == {1, 2}


def test_a_request_too_long_for_the_engine_is_refused_at_the_door(collab):
    params = SamplingParams(max_new_tokens=64)
    request = collab.requests([PROMPTS[1]], 1, params, seed=0)[0]
    engine = Engine(collab.pair, get_router("p:0.5"), max_batch=2, max_len=48)
    with pytest.raises(BacoError, match="max_len"):
        engine.add(request, params)


def test_a_request_longer_than_the_models_context_is_refused_even_by_an_engine_with_room_for_it(collab):
    """Slots may be longer than the context, but a row's positions must stay within it (the engine stops the
    positions of rows whose output it drops at the context's last one, so a live row must never need more)."""
    params = SamplingParams(max_new_tokens=64)
    request = collab.requests([PROMPTS[1]], 1, params, seed=0)[0]
    request.max_new_tokens = collab.pair.context_length  # as a caller that skips `requests`' budget might
    engine = Engine(collab.pair, get_router("p:0.5"), max_batch=1, max_len=2 * collab.pair.context_length)
    with pytest.raises(BacoError, match=rf"more than the models' context of {collab.pair.context_length}"):
        engine.add(request, params)


def test_the_sync_free_step_reads_no_tensor_value_on_the_host(tiny_dirs):
    """On the meta device tensors have shapes but no values: any host read inside the step raises."""
    from baco import Collaboration

    pair = Collaboration.from_pretrained(*tiny_dirs, device="cpu").pair
    meta = torch.device("meta")
    for lm in (pair.base, pair.aligned):
        lm.model.to(meta)
        lm.device = meta
    pair.device, pair.vocab, pair._mask = meta, pair.vocab.to(meta), pair._mask.to(meta)
    all_knobs = (True, True, False, False, False, True, True, True, True)  # top-k, top-p, penalties, bias, min_tokens
    for router in ["p-punc:0.5", "h-punc:2", "p-fc:0.5", "rand:0.5", "nudge:0.3", "eft:0.5", "contrast:0.5"]:
        engine = Engine(pair, get_router(router), max_batch=4, max_len=32, sync_free=True, graphs=False)
        names, _ = engine._step_fn(4, all_knobs)
        assert names and engine.out_ints.is_meta
    host_branching = Engine(pair, get_router("p-punc:0.5"), max_batch=4, max_len=32, sync_free=False)
    host_read = (r"cannot be called on meta tensors"  # .item(), bool(t), float(t)
                 r"|Cannot copy out of meta tensor"  # .tolist(), .cpu()
                 r"|correct data-independent implementation does not exist")  # nonzero, masked indexing
    with pytest.raises((RuntimeError, NotImplementedError), match=host_read):  # the CPU shortcuts do read values
        host_branching._step_fn(4, all_knobs)


HOST_TOUCHES = {"aten::lift_fresh", "aten::_local_scalar_dense", "aten::nonzero", "aten::is_nonzero", "aten::item"}


def host_touches(fn) -> list[str]:
    """The operators `fn()` runs that read a value on the host (`.item()`, `bool(t)`, `nonzero`) or make a tensor
    from host data (`torch.tensor([...])`, indexing by a Python list): on a GPU the first kind synchronises, the
    second copies host memory into the device's queue, and neither can live in a CUDA graph."""
    from torch.utils._python_dispatch import TorchDispatchMode

    seen = []

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func._schema.name in HOST_TOUCHES:
                seen.append(func._schema.name)
            return func(*args, **(kwargs or {}))

    with Watch():
        fn()
    return seen


@pytest.mark.parametrize("router", ["p-punc:0.5", "h-punc:2", "p-fc:0.5", "rand:0.5", "nudge:0.3", "eft:0.5", "contrast:0.5"])
def test_a_warm_sync_free_step_touches_no_host_value_or_host_data(collab, router):
    """What a capture needs, checked on the CPU with real values: after the two warm-up runs the engine makes
    before capturing a bucket, a step neither reads a device value nor feeds the device host data."""
    all_knobs = (True, True, False, False, False, True, True, True, True)  # top-k, top-p, penalties, bias, min_tokens
    engine = Engine(collab.pair, get_router(router), max_batch=4, max_len=32, sync_free=True, graphs=False)
    for _ in range(2):
        engine._step_fn(4, all_knobs)
    assert host_touches(lambda: engine._step_fn(4, all_knobs)) == []
    host_branching = Engine(collab.pair, get_router("p-punc:0.5"), max_batch=4, max_len=32, sync_free=False)
    host_branching._step_fn(4, all_knobs)
    assert host_touches(lambda: host_branching._step_fn(4, all_knobs))  # the word rule's CPU shortcut does: it bites


@pytest.mark.parametrize("pair_kind", ["llama", "gemma3", "adapter"])
def test_the_cache_size_the_memory_check_reckons_is_what_the_engine_allocates(pair_kind, tmp_path):
    from baco import Collaboration
    from baco.testing import make_tiny_adapter, make_tiny_pair

    base, aligned = make_tiny_pair(tmp_path, arch="gemma3" if pair_kind == "gemma3" else "llama")
    if pair_kind == "adapter":  # one unit, two lanes
        aligned = make_tiny_adapter(tmp_path / "adapter", base, seed=3)
    collab = Collaboration.from_pretrained(base, aligned, device="cpu", dtype="float32", one_forward="on"
                                           if pair_kind == "adapter" else "off")
    params = SamplingParams(max_new_tokens=4, seed=0)
    engine = Engine(collab.pair, get_router("p-punc:0.5"), max_batch=3, max_len=72)
    for request in collab.requests(PROMPTS, 1, params, seed=0):
        engine.add(request, params)
    list(engine.run())
    caches = [t for unit in engine.units for buffers in (unit.cache.keys, unit.cache.values) for t in buffers.values()]
    assert len(engine.units) == (1 if pair_kind == "adapter" else 2) and caches
    assert sum(t.nbytes for t in caches) + engine.uniforms.nbytes == cache_bytes(collab.pair, 3, 72)


def test_an_engine_whose_caches_cannot_fit_in_memory_is_refused_before_allocating(collab):
    with pytest.raises(BacoError, match=r"need [\d.]+ GiB on cpu, but [\d.]+ GiB is free: at most \d+ slots of 65536 "
                                        r"tokens fit .* lower --max-batch or --max-len"):
        Engine(collab.pair, get_router("p-punc:0.5"), max_batch=2**24, max_len=2**16)


@pytest.mark.parametrize("pair_kind,sync_free,penalties", [("llama", False, False), ("llama", True, False),
                                                             ("adapter", True, False), ("llama", True, True)])
def test_what_an_engine_holds_beyond_its_caches_stays_within_what_auto_sizing_reserves(pair_kind, sync_free,
                                                                                       penalties, tmp_path):
    """Measured (torch.profiler's allocation record), with top-p (the sampler's costliest path): a steady step holds
    no more per row than `step_bytes`, the first step (prompts prefilled, then a step) no more than that plus
    `prefill_bytes`: what `slot_bytes` reserves beside the slot's cache rows. With penalties, the first step also
    allocates their buffers."""
    from baco import Collaboration
    from baco.decode.engine import prefill_bytes, step_bytes
    from baco.testing import make_tiny_adapter, make_tiny_pair, peak_bytes

    base, aligned = make_tiny_pair(tmp_path)
    if pair_kind == "adapter":
        aligned = make_tiny_adapter(tmp_path / "adapter", base, seed=3)
    collab = Collaboration.from_pretrained(base, aligned, device="cpu", dtype="float32",
                                           one_forward="on" if pair_kind == "adapter" else "off")
    params = SamplingParams(top_p=0.9, max_new_tokens=12, seed=0, **(
        {"repetition_penalty": 1.3, "presence_penalty": 0.5, "frequency_penalty": 0.5} if penalties else {}))
    rows, columns = 8, 160
    requests = collab.requests([" ".join([PROMPTS[i % 2]] * 3) for i in range(rows)], 1, params, seed=0)
    engine = Engine(collab.pair, get_router("p-punc:0.5"), max_batch=rows, max_len=columns, sync_free=sync_free)
    for request in requests:
        engine.add(request, params)
    steps = engine.run()
    first = peak_bytes(lambda: next(steps))
    next(steps), next(steps)
    steady = peak_bytes(lambda: next(steps))
    prompt = max(len(r.base_ids) for r in requests)
    assert prompt > 60 and 0 < steady <= rows * step_bytes(collab.pair)
    assert steady < first <= rows * (step_bytes(collab.pair) + prefill_bytes(collab.pair, prompt))
    assert (engine.counts is not None) == penalties


def test_auto_sizing_fills_the_memory_budget_with_whole_slots(collab, monkeypatch):
    import baco.decode.engine as engine_module
    from baco.decode.engine import AUTO_MAX_BATCH, fit_slots, memory_budget, slot_bytes

    per_slot = slot_bytes(collab.pair, 96, 40)
    for slots, engines in ((1, 1), (5, 1), (3, 4)):
        room = slots * engines * per_slot + per_slot // 2
        monkeypatch.setattr(engine_module, "memory_budget", lambda device, fraction: (room, 8 * room))
        assert fit_slots(collab.pair, 96, prompt_columns=40, engines=engines) == slots
    room = 3 * slot_bytes(collab.pair, 96, 95) + 1  # an engine sizes for prompts as long as its slots allow
    monkeypatch.setattr(engine_module, "memory_budget", lambda device, fraction: (room, 8 * room))
    assert Engine(collab.pair, get_router("p:0.5"), max_batch="auto", max_len=96).slots == 3
    monkeypatch.setattr(engine_module, "memory_budget", lambda device, fraction: (per_slot - 1, 2**40))
    with pytest.raises(BacoError, match=r"not one slot of 96 tokens fits: it needs [\d.]+ GiB, and 90% of cpu's "
                                        r"1024.0 GiB leaves [\d.]+ GiB .* lower --max-len or raise --memory-fraction"):
        fit_slots(collab.pair, 96, prompt_columns=40)
    monkeypatch.undo()
    room, total = memory_budget(collab.pair.device, 0.9)  # this machine's memory: the tiny pair reaches the cap
    assert 0 < room < total and fit_slots(collab.pair, 96) == AUTO_MAX_BATCH
    with pytest.raises(BacoError, match="not one slot of 96 tokens fits"):
        fit_slots(collab.pair, 96, fraction=1e-12)  # less than the memory already in use


def test_an_auto_sized_batch_gives_the_samples_of_a_fixed_one(collab, tmp_path, capsys):
    from baco.cli import main

    params = SamplingParams(max_new_tokens=6, seed=4)
    fixed = collab.generate(PROMPTS, n=3, sampling=params, batch_size=2)
    auto = collab.generate(PROMPTS, n=3, sampling=params, batch_size="auto", memory_fraction=0.95)
    assert [s.token_ids for s in auto] == [s.token_ids for s in fixed]
    out = tmp_path / "auto.jsonl"
    base, aligned = collab.pair.base.name, collab.pair.aligned.name
    assert main(["generate", "--base", base, "--aligned", aligned, "--prompt", PROMPTS[0], "--n", "3", "--seed", "4",
                 "--max-new-tokens", "6", "--min-p", "0", "--max-batch", "auto", "--out", str(out), "--quiet",
                 "--device", "cpu"]) == 0
    assert [json.loads(line)["token_ids"] for line in out.read_text().splitlines()] == [s.token_ids for s in fixed[:3]]
    command = ["generate", "--base", base, "--aligned", aligned, "--prompt", PROMPTS[0], "--quiet"]
    with pytest.raises(SystemExit) as refused:
        main(command + ["--max-batch", "lots"])
    assert refused.value.code == 2 and "expected an integer or 'auto', got 'lots'" in capsys.readouterr().err
    assert main(command + ["--max-batch", "auto", "--memory-fraction", "0"]) == 2
    assert "--memory-fraction must be in (0, 1], got 0" in capsys.readouterr().err


def test_generate_with_a_max_len_too_small_for_a_request_says_so_before_decoding(collab, tmp_path):
    from baco.cli import main

    with pytest.raises(BacoError, match="max_len of 24"):
        collab.generate(PROMPTS, n=2, sampling=SamplingParams(max_new_tokens=16), max_len=24)
    ok = collab.generate(PROMPTS[:1], n=2, sampling=SamplingParams(max_new_tokens=4, seed=0), max_len=64)
    assert [len(s.token_ids) <= 4 for s in ok] == [True, True]
    base, aligned = collab.pair.base.name, collab.pair.aligned.name
    out = tmp_path / "out.jsonl"
    code = main(["generate", "--base", base, "--aligned", aligned, "--prompt", PROMPTS[1], "--max-len", "10",
                 "--out", str(out), "--quiet", "--device", "cpu"])
    assert code == 2 and not out.exists()


@pytest.mark.parametrize("batch_size", [2, "auto"])
@pytest.mark.parametrize("max_len", [0, -3, "64", 2.5, True])
def test_a_max_len_that_is_not_an_integer_of_at_least_two_is_named_for_every_router(collab, max_len, batch_size):
    """0 is not "the default" (None is), and with batch_size "auto" a string is not sized from (was a TypeError)."""
    for router in ("p-punc:0.5", "chared:0.5", "negative:0.5"):  # the engine, the cross-tokenizer loop, multi-pass
        with pytest.raises(BacoError, match=f"max_len must be an integer >= 2, got {max_len!r}"):
            collab.generate(PROMPTS[:1], SamplingParams(max_new_tokens=4, seed=0), router=router, max_len=max_len,
                            batch_size=batch_size)
    assert len(collab.generate(PROMPTS[:1], SamplingParams(max_new_tokens=4, seed=0), batch_size=batch_size)) == 1


def test_rows_that_finish_leave_the_step_at_once_on_the_cpu(collab):
    params = SamplingParams(max_new_tokens=30, seed=2)
    requests = collab.requests(PROMPTS, 2, params, seed=2)
    for i, request in enumerate(requests):
        request.max_new_tokens = 6 + 4 * i  # the earlier slots finish first: rows move down
    out, engine = run(collab.pair, requests, "p-punc:0.4", params)
    assert engine.stats["moves"] > 0
    assert engine.stats["bucket_row_steps"] == engine.stats["occupied_row_steps"]  # no finished row stepped
    for request, tokens in zip(requests, out):
        assert tokens == reference(collab.pair, request, get_router("p-punc:0.4"), params)


def test_an_engine_that_runs_many_requests_forgets_the_ids_it_no_longer_needs(collab):
    """A server's engine lives for days: the ids of finished requests are kept only while a step in flight or a
    prefill may still name them, not for ever (and every request still gets its own tokens)."""
    params = SamplingParams(max_new_tokens=3, seed=5)
    requests = collab.requests(PROMPTS * 15, 1, params, seed=5)
    out, engine = run(collab.pair, requests, "p-punc:0.4", params, max_batch=2)
    assert len(engine.finished_rids) <= 4 * 2 < len(requests)
    assert all(tokens == reference(collab.pair, request, get_router("p-punc:0.4"), params)
               for request, tokens in list(zip(requests, out))[::7])


def test_a_request_aborted_while_its_prompt_is_prefilled_never_runs(collab):
    params = SamplingParams(max_new_tokens=8, seed=1)
    long, short = collab.requests([PROMPTS[1] * 3, PROMPTS[0]], 1, params, seed=1)
    engine = Engine(collab.pair, get_router("p:0.5"), max_batch=2, max_len=160, prefill_chunk=4)
    first = engine.add(long, params)
    engine.step()  # its prefill has begun, a chunk at a time
    assert engine.group is not None
    engine.abort(first)
    engine.add(short, params)
    events = list(engine.run())
    assert not engine.has_work and not engine.live
    assert {rid for event in events for rid in event.rows} == {1}


@pytest.mark.parametrize("router", ["p-punc:0.5", "eft:0.5"])
def test_top_logprobs_are_the_writers_best_tokens_and_leave_the_tokens_alone(collab, router):
    greedy = SamplingParams(temperature=0, max_new_tokens=12, seed=0)
    requests = collab.requests(PROMPTS, 1, greedy, seed=0)
    plain, _ = run(collab.pair, requests, router, greedy)
    engine = Engine(collab.pair, get_router(router), max_batch=3, max_len=96, top_logprobs=5)
    for i, request in enumerate(requests):
        engine.add(request, greedy, top_logprobs=i != 1)
    out, reported = [[] for _ in requests], 0
    for event in engine.run():
        assert event.top_logprobs.shape == event.top_ids.shape == (len(event.rows), 5)
        for i, rid in enumerate(event.rows):
            token, values = int(event.tokens[i]), event.top_logprobs[i]
            out[rid].append(token)
            assert torch.all(values[:-1] >= values[1:])  # best first
            assert int(event.top_ids[i, 0]) == token  # greedy draws the writer's best token
            assert values[0] == pytest.approx(math.log(float(event.chosen_prob[i])), abs=1e-5)
            reported += 1
    assert out == plain and reported == sum(len(tokens) for tokens in plain)


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=0.7, top_k=50, top_p=0.9, max_new_tokens=10, seed=8),
    SamplingParams(temperature=1.7, top_p=0.5, min_p=0.3, max_new_tokens=10, seed=9),
    SamplingParams(temperature=0.3, top_k=5, min_p=0.05, max_new_tokens=10, seed=10),
    SamplingParams(temperature=0, top_k=5, max_new_tokens=10, seed=11),
], ids=["top-k+top-p", "top-p+min-p", "top-k+min-p", "greedy"])
@pytest.mark.parametrize("sync_free", [False, True], ids=["host", "sync-free"])
@pytest.mark.parametrize("router", ["aligned", "base", "p-punc:0.5", "eft:0.5"])
def test_each_token_is_drawn_from_the_writers_distribution_as_transformers_warps_it(collab, monkeypatch, router,
                                                                                    sync_free, params):
    """The whole engine against an independent reference: every step reports the full distribution its token was
    drawn from (the writer's, or the mixture's, at temperature 1: top_logprobs over the whole vocabulary); warped
    by transformers' warpers, an inverse-CDF draw with the row's own random number for that writer (base stream
    0, aligned 1, a mixture the aligned one) gives the engine's token. Aligned alone and base alone are thus the
    models sampled as `generate` samples them, on the host path and the sync-free one."""
    monkeypatch.setattr(sampling_module, "PRECUT", 16)  # the host path's precut and its full-sort fall-back run
    vocab = collab.pair.vocab_size
    requests = collab.requests(PROMPTS[:2], 1, params, seed=params.seed)
    engine = Engine(collab.pair, get_router(router), max_batch=2, max_len=96, top_logprobs=vocab, sync_free=sync_free)
    for request in requests:
        engine.add(request, params, top_logprobs=True)
    streams = [row_uniforms(r.seed, r.max_new_tokens) for r in requests]
    drawn = [0] * len(requests)
    for event in engine.run():
        for i, rid in enumerate(event.rows):
            writer = torch.full((1, vocab), -math.inf).scatter_(1, event.top_ids[i][None], event.top_logprobs[i][None])
            stream = 0 if bool(event.use_base[i]) and not event.mixed else 1
            u = streams[rid][stream, drawn[rid]]
            expected = inverse_cdf_draw(transformers_distribution(writer, params), u[None])
            assert int(event.tokens[i]) == int(expected), (rid, drawn[rid])
            drawn[rid] += 1
    assert sum(drawn) > 10


def test_no_top_logprobs_are_computed_unless_a_live_request_asks(collab):
    params = SamplingParams(max_new_tokens=6, seed=0)
    engine = Engine(collab.pair, get_router("p-punc:0.5"), max_batch=2, max_len=96, top_logprobs=3)
    for request in collab.requests(PROMPTS[:2], 1, params, seed=0):
        engine.add(request, params)
    assert all(event.top_logprobs is None and event.top_ids is None for event in engine.run())
    with pytest.raises(BacoError, match="top_logprobs"):
        Engine(collab.pair, get_router("p-punc:0.5"), top_logprobs=-1)


def test_each_prefill_forward_holds_at_most_prefill_tokens_positions_and_the_tokens_do_not_change(collab):
    """A long prompt queued before short ones: with a token budget it is prefilled alone, a budget's worth of
    columns per step, and the short ones follow in a group of their own, not left-padded to its width."""
    params = SamplingParams(max_new_tokens=12, seed=3)
    requests = collab.requests([PROMPTS[1] * 3, PROMPTS[0], PROMPTS[2], "Hi."], 1, params, seed=3)
    width = lambda request: max(len(request.base_ids), len(request.aligned_ids)) - 1  # noqa: E731
    long, shorts = width(requests[0]), [width(r) for r in requests[1:]]
    budget = long + 1
    assert 3 * max(shorts) <= budget < 2 * long  # the shorts fit one group; the long one and a short do not
    unbounded, wide = run(collab.pair, requests, "p-punc:0.5", params, max_len=160)
    bounded, engine = run(collab.pair, requests, "p-punc:0.5", params, max_len=160, prefill_tokens=budget)
    assert bounded == unbounded
    assert engine.stats["largest_prefill"] <= budget < wide.stats["largest_prefill"]
    assert engine.stats["prefill_positions"] < wide.stats["prefill_positions"]  # less padding computed
    small, engine = run(collab.pair, requests, "p-punc:0.5", params, max_len=160, prefill_tokens=7)
    assert small == unbounded
    assert engine.stats["largest_prefill"] <= 7
    assert engine.stats["prefill_chunks"] >= 2 * math.ceil(long / 7)  # the long prompt, 7 columns a step per side


@pytest.mark.parametrize("budget", [0, -5, 2.5, True, "8192"])
def test_a_prefill_budget_that_is_not_a_positive_integer_is_refused(collab, budget):
    with pytest.raises(BacoError, match="prefill_tokens must be an integer >= 1"):
        Engine(collab.pair, get_router("aligned"), max_batch=2, max_len=96, prefill_tokens=budget)
