"""Repetition, presence and frequency penalties on the tiny random pair (CPU, float32), against a reference built
from scratch: a full forward of the writing model over its own prompt and the text so far (no cache), transformers'
`RepetitionPenaltyLogitsProcessor`, OpenAI's presence / frequency formula counted in plain Python, then
transformers' warpers and an inverse-CDF draw with the row's own random number (tests/sampling_reference.py)."""

import math
from dataclasses import replace
from collections import Counter

import numpy as np
import pytest
import torch
from transformers.generation.logits_process import (MinNewTokensLengthLogitsProcessor, RepetitionPenaltyLogitsProcessor,
                                                    SequenceBiasLogitsProcessor)

from baco import Collaboration, SamplingParams
from baco.decode.engine import Engine
from baco.decode.loop import row_uniforms
from baco.decode.records import held
from baco.errors import CapacityError, InvalidSamplingParams
from baco.routers import StepView, get_router
from sampling_reference import inverse_cdf_draw, transformers_distribution

PROMPTS = ["Name a fruit.", "Tell me a story about a dragon who could not fly.", "Why?"]
PENALISED = [
    SamplingParams(repetition_penalty=1.8, min_p=0.05, max_new_tokens=16, seed=3),
    SamplingParams(presence_penalty=1.5, frequency_penalty=0.8, temperature=0.8, top_k=30, max_new_tokens=16, seed=4),
    SamplingParams(temperature=0, repetition_penalty=1.3, presence_penalty=-0.5, frequency_penalty=2.0,
                   max_new_tokens=16, seed=5),
    SamplingParams(logit_bias={"7": 4.0, "11": -100, "300": 2.5, "42": 1}, repetition_penalty=1.5, min_p=0.05,
                   max_new_tokens=16, seed=6),
    # the tiny pair's end tokens are 1 and 4: biased up, they would end most samples at once
    SamplingParams(min_tokens=6, logit_bias={"1": 6.0, "4": 6.0, "9": 5.0}, stop_token_ids=[9], min_p=0.05,
                   max_new_tokens=16, seed=7),
]


def model_logprobs(pair, lm, prompt_ids: list[int], generated: list[int], params: SamplingParams):
    """(own, penalised) next-token log-probs of one model over the pair's vocabulary, computed from scratch."""
    ids = torch.tensor([prompt_ids + generated])
    with torch.no_grad():
        logits = lm.model(ids).logits[:, -1].float()
    own = pair.logprobs(logits)
    if params.logit_bias:  # first, as vLLM applies it: transformers' processor with one-token sequences
        bias = [[[token], value] for token, value in params.logit_bias]
        logits = SequenceBiasLogitsProcessor(bias)(ids, logits.clone())
    if params.min_tokens:  # transformers' processor, holding back the pair's end tokens and the stop ids
        ends = sorted(pair.vocab.stop_ids | set(params.stop_token_ids))
        logits = MinNewTokensLengthLogitsProcessor(len(prompt_ids), params.min_tokens, ends)(ids, logits)
    if params.repetition_penalty != 1:  # transformers' processor, over every id the model has read
        logits = RepetitionPenaltyLogitsProcessor(params.repetition_penalty)(ids, logits.clone())
    for token, count in Counter(generated).items():  # OpenAI's: only the text written so far counts
        logits[0, token] -= params.frequency_penalty * count + params.presence_penalty
    return own, pair.logprobs(logits)


def run(collab, requests, router, params, **options):
    """Each request's (token, use_base, mixed, base top-1 prob, reason) per step, from one engine; `params`: one
    setting, or one per request."""
    engine = Engine(collab.pair, get_router(router), **{"max_batch": len(requests), "max_len": 96, **options})
    each = params if isinstance(params, list) else [params] * len(requests)
    for request, knobs in zip(requests, each):
        engine.add(request, knobs)
    steps = [[] for _ in requests]
    for event in engine.run():
        for i, rid in enumerate(event.rows):
            steps[rid].append((int(event.tokens[i]), bool(event.use_base[i]), event.mixed,
                               float(event.base_top1_prob[i]), event.reasons[i]))
    return steps, engine


@pytest.mark.parametrize("params", PENALISED, ids=["repetition", "presence+frequency", "greedy-all-three",
                                                   "logit-bias+repetition", "min-tokens"])
@pytest.mark.parametrize("sync_free", [False, True], ids=["host", "sync-free"])
@pytest.mark.parametrize("router", ["aligned", "base", "p-punc:0.5", "eft:0.5"])
def test_each_token_is_drawn_from_its_writers_penalised_distribution(collab, router, sync_free, params):
    """Three requests in two slots (the third takes a slot another request used): every token is the draw, with the
    row's own random number, from its writer's distribution penalised as transformers (repetition) and OpenAI
    (presence, frequency) define it; a soft method's from the mixture of both models' penalised distributions.
    What the router reads and the engine records are the models' own distributions: its writer (where the word
    rule does not overrule it) and the base top-1 prob."""
    pair = collab.pair
    requests = collab.requests(PROMPTS, 1, params, seed=params.seed)
    steps, engine = run(collab, requests, router, params, max_batch=2, sync_free=sync_free)
    for request, row in zip(requests, steps):
        streams = row_uniforms(request.seed, request.max_new_tokens)
        generated = []
        for token, use_base, mixed, base_top1, reason in row:
            own_base, base = model_logprobs(pair, pair.base, request.base_ids, generated, params)
            own_aligned, aligned = model_logprobs(pair, pair.aligned, request.aligned_ids, generated, params)
            own = StepView(own_base, own_aligned, pair.vocab, streams[2, len(generated)][None],
                           previous=torch.tensor([generated[-1] if generated else -1]))
            if not mixed and reason != "word-continuation":
                assert use_base == bool(get_router(router)(own).use_base[0])
            if mixed:
                writer, stream = get_router(router)(StepView(base, aligned, pair.vocab, torch.zeros(1))).mix, 1
            else:
                writer, stream = (base, 0) if use_base else (aligned, 1)
            u = streams[stream, len(generated)][None]
            expected = inverse_cdf_draw(transformers_distribution(writer, params), u)
            assert token == int(expected), (request.prompt, len(generated))
            assert math.isclose(base_top1, own_base.max().exp().item(), rel_tol=1e-4)
            generated.append(token)
    assert sum(map(len, steps)) > 2 * len(requests)
    assert (engine.counts is not None) == params.penalised
    if params.min_tokens:  # biased up, the end tokens end every row, but none before it has min_tokens tokens
        assert sorted(pair.vocab.stop_ids) == [1, 4]
        assert all(params.min_tokens < len(row) < params.max_new_tokens and row[-1][0] in (1, 4, 9) for row in steps)


@pytest.mark.parametrize("penalty", [{"repetition_penalty": 1.5}, {"presence_penalty": 1.0},
                                     {"frequency_penalty": 1.0}], ids=lambda p: next(iter(p)))
def test_each_penalty_changes_what_is_drawn(collab, penalty):
    """Greedy decoding of a random model repeats itself; each penalty alone must change the tokens."""
    plain = SamplingParams(temperature=0, max_new_tokens=24, seed=0)
    requests = collab.requests(PROMPTS, 1, plain, seed=0)
    without, _ = run(collab, requests, "p-punc:0.5", plain)
    with_penalty, _ = run(collab, requests, "p-punc:0.5", SamplingParams(**{**plain.to_dict(), **penalty}))
    assert [[s[0] for s in row] for row in with_penalty] != [[s[0] for s in row] for row in without]


def test_a_row_gives_the_same_tokens_alone_and_beside_penalised_rows_across_moves_and_slot_reuse(collab):
    """Penalised and plain rows in one engine, of different lengths (the longer rows move down as the shorter
    finish) and more than its slots (later requests take used slots): each row's tokens are those it gets alone.
    A row's counts, prompt tokens and held end tokens (min_tokens) move with it and leave no trace in the slot it
    leaves."""
    settings = [SamplingParams(max_new_tokens=8 + 6 * i, seed=9, min_p=0.05, **penalty) for i, penalty in
                enumerate([{"repetition_penalty": 1.6}, {}, {"presence_penalty": 1.2, "frequency_penalty": 0.7},
                           {"repetition_penalty": 0.7}, {"logit_bias": {"7": 3.0, "9": -2}},
                           {"frequency_penalty": 2.0}, {"min_tokens": 12, "logit_bias": {"1": 5.0, "4": 5.0}},
                           {"min_tokens": 5, "stop_token_ids": [9], "logit_bias": {"9": 4.0}}])]
    requests = [collab.requests([PROMPTS[i % 3]], 1, p, seed=9)[0] for i, p in enumerate(settings)]
    for i, request in enumerate(requests):
        request.max_new_tokens = settings[i].max_new_tokens
    together, engine = run(collab, requests, "p-punc:0.5", settings, max_batch=4)
    assert engine.stats["moves"] > 0
    for request, params, row in zip(requests, settings, together):
        alone, _ = run(collab, [request], "p-punc:0.5", params)
        assert [s[0] for s in row] == [s[0] for s in alone[0]]
        assert len(row) > 3


def test_a_logit_bias_of_plus_100_forces_its_token_and_minus_100_bans_the_greedy_ones(collab):
    """OpenAI's extremes, on greedy decoding: +100 on a token makes it every token drawn; -100 on the tokens greedy
    decoding picks keeps each of them out. A bias alone keeps no token counts (no penalty's buffers)."""
    plain = SamplingParams(temperature=0, max_new_tokens=12, seed=0)
    requests = collab.requests(PROMPTS, 1, plain, seed=0)
    forced = SamplingParams(temperature=0, max_new_tokens=12, seed=0, logit_bias={"7": 100})
    steps, engine = run(collab, requests, "p-punc:0.5", forced)
    assert {s[0] for row in steps for s in row} == {7} and engine.counts is None
    greedy, _ = run(collab, requests, "p-punc:0.5", plain)
    picked = sorted({s[0] for row in greedy for s in row})
    banned = SamplingParams(temperature=0, max_new_tokens=12, seed=0, logit_bias={t: -100 for t in picked})
    steps, _ = run(collab, requests, "p-punc:0.5", banned)
    assert not {s[0] for row in steps for s in row} & set(picked) and all(steps)


def test_a_logit_bias_and_stop_token_ids_are_checked_recorded_and_refused_past_the_vocabulary(collab):
    params = SamplingParams(logit_bias={"5": -100, 3: 2.5})
    assert params.logit_bias == ((3, 2.5), (5, -100.0)) and params.reshaped and not params.penalised
    assert params.to_dict()["logit_bias"] == {"3": 2.5, "5": -100.0}  # JSON's object, as OpenAI's API takes it
    assert SamplingParams(**params.to_dict()) == params and "logit_bias" not in SamplingParams().to_dict()
    assert SamplingParams(logit_bias={np.int64(5): np.float32(-100), np.uint16(3): 2.5}).logit_bias == params.logit_bias
    refused = [({"a": 1}, "keys must be token ids"), ({"-1": 1}, "keys must be token ids"), ({1.5: 1}, "keys"),
               ({-1: 1}, "keys must be token ids"), ({np.float64(2): 1}, "keys must be token ids"),
               ({1: 101}, r"\[-100, 100\]"), ({1: float("nan")}, r"\[-100, 100\]"), ({1: "2"}, "numbers"),
               ({1: True}, "numbers"), ([1, 2], "must map token ids"), ({i: 1 for i in range(301)}, "at most 300"),
               ({"1": 1, 1: 2}, "names token 1 twice")]
    for bias, message in refused:
        with pytest.raises(InvalidSamplingParams, match=message):
            SamplingParams(logit_bias=bias)
    vocab = collab.pair.vocab_size
    engine = Engine(collab.pair, get_router("p-punc:0.5"), max_batch=1, max_len=64)
    request = collab.requests(PROMPTS[:1], 1, SamplingParams(max_new_tokens=8), seed=0)[0]
    with pytest.raises(InvalidSamplingParams, match=f"token id {vocab}, but the vocabulary has {vocab} tokens"):
        engine.add(request, SamplingParams(logit_bias={vocab: 1}))
    with pytest.raises(InvalidSamplingParams, match=f"stop_token_ids names token id {vocab + 5}, but"):
        engine.add(request, SamplingParams(stop_token_ids=[3, vocab + 5]))
    masked = int((~collab.pair.vocab.allowed).nonzero()[-1])  # a control token: never written, so never a stop
    text = collab.pair.vocab.texts[masked]
    with pytest.raises(InvalidSamplingParams, match=f"stop_token_ids names token id {masked} \\('{text}'\\), a"):
        engine.add(request, SamplingParams(stop_token_ids=[sorted(collab.pair.vocab.stop_ids)[0], masked]))
    assert not engine.has_work
    engine.add(request, SamplingParams(max_new_tokens=8, logit_bias={masked: 100}))  # taken, and changes nothing
    assert masked not in [int(event.tokens[0]) for event in engine.run()]
    assert SamplingParams(stop_token_ids=[9, 3, 9]).stop_token_ids == (3, 9) and not SamplingParams(
        stop_token_ids=[3]).reshaped
    for ids, message in [([-1], "integers >= 0"), (["3"], "integers >= 0"), ([True], "integers >= 0"), (3, "a list"),
                         (list(range(65)), "at most 64")]:
        with pytest.raises(InvalidSamplingParams, match=message):
            SamplingParams(stop_token_ids=ids)


def test_penalties_are_checked_and_recorded_only_where_set():
    refused = [({"presence_penalty": 2.5}, "presence_penalty"), ({"frequency_penalty": -3}, "frequency_penalty"),
               ({"presence_penalty": float("nan")}, "presence_penalty"), ({"repetition_penalty": 0}, "repetition"),
               ({"repetition_penalty": -1.2}, "repetition"), ({"repetition_penalty": float("inf")}, "repetition"),
               ({"frequency_penalty": "1"}, "frequency_penalty"), ({"repetition_penalty": True}, "repetition")]
    for knobs, name in refused:
        with pytest.raises(InvalidSamplingParams, match=name):
            SamplingParams(**knobs)
    # a sample's or sweep cell's identity is this dict: a run made before penalties existed keeps its ids
    assert set(SamplingParams().to_dict()) == {"temperature", "top_p", "top_k", "min_p", "max_new_tokens", "seed",
                                               "stop"}
    assert SamplingParams(presence_penalty=0.5).to_dict()["presence_penalty"] == 0.5
    assert SamplingParams(**SamplingParams(repetition_penalty=1.2).to_dict()).repetition_penalty == 1.2
    assert not SamplingParams().penalised and SamplingParams(frequency_penalty=-0.1).penalised


def test_min_tokens_is_checked_recorded_only_where_set_and_reshapes_without_penalty_buffers(collab):
    for value, message in [(-1, "min_tokens must be an integer in"), (1.0, "an integer"), (True, "an integer"),
                           (17, r"\[0, max_new_tokens\] \(here \[0, 16\]\), got 17")]:
        with pytest.raises(InvalidSamplingParams, match=message):
            SamplingParams(max_new_tokens=16, min_tokens=value)
    held = SamplingParams(max_new_tokens=16, min_tokens=np.int64(16))
    assert held.min_tokens == 16 and held.to_dict()["min_tokens"] == 16 and SamplingParams(**held.to_dict()) == held
    assert "min_tokens" not in SamplingParams(min_tokens=0).to_dict()  # old samples keep their ids
    assert held.reshaped and held.names_token_ids and not held.penalised
    params = SamplingParams(max_new_tokens=8, seed=2, min_tokens=8, logit_bias={"1": 100, "4": 100})
    steps, engine = run(collab, collab.requests(PROMPTS, 1, params, seed=2), "p-punc:0.5", params)
    assert engine.counts is None  # holding end tokens back needs no per-slot buffers
    assert all(len(row) == 8 and not {token for token, *_ in row} & collab.pair.vocab.stop_ids for row in steps)


def around_held_text(generate, min_tokens=10):
    """The first seed (of 20) whose sample, held to `min_tokens` tokens without stop strings (`generate(seed)`), gives
    two stop strings taken from it: the whole held text (it ends where the held tokens end) and one that begins two
    characters before that end and ends two past it, found nowhere earlier. (seed, sample, held length, both)."""
    for seed in range(20):
        sample = generate(seed)
        raw, end = "".join(sample.token_texts), held(sample.token_texts, min_tokens)
        inside, straddling = raw[:end], raw[end - 2: end + 2]
        if end > 4 and len(straddling) == 4 and raw.find(inside, 1) < 0 and raw.find(straddling) == end - 2:
            return seed, sample, end, inside, straddling
    raise AssertionError("no seed gave a sample with text on both sides of its held tokens")


def held_stop_strings(collab, router="p-punc:0.5", min_tokens=10):
    """`around_held_text` of the library's samples, with their sampling."""
    knobs = lambda seed: SamplingParams(max_new_tokens=24, min_tokens=min_tokens, seed=seed)  # noqa: E731
    seed, *found = around_held_text(lambda seed: collab.generate([PROMPTS[1]], router=router, sampling=knobs(seed))[0],
                                    min_tokens)
    return (knobs(seed), *found)


@pytest.mark.parametrize("router", ["p-punc:0.5", "negative:0.5"])
def test_a_stop_string_counts_only_where_it_ends_past_the_text_of_the_first_min_tokens_tokens(collab, router):
    """vLLM's min_tokens holds stop strings back too: one that ends inside the text of the first min_tokens tokens
    neither ends the sample nor cuts its text; one that begins inside it and ends past it ends the sample with the
    token that completes it, and cuts the text where it begins. The terminal rendering shows the same text."""
    from baco.display import segments

    params, alone, held, inside, straddling = held_stop_strings(collab, router)
    kept = collab.generate([PROMPTS[1]], router=router, sampling=replace(params, stop=(inside,)))[0]
    assert (kept.token_ids, kept.text, kept.finish_reason) == (alone.token_ids, alone.text, alone.finish_reason)
    cut = collab.generate([PROMPTS[1]], router=router, sampling=replace(params, stop=(straddling,)))[0]
    raw = "".join(alone.token_texts)
    assert cut.finish_reason == "stop" and cut.text == raw[: held - 2].lstrip()
    completes = next(k for k in range(len(raw)) if len("".join(alone.token_texts[: k + 1])) >= held + 2)
    assert cut.token_ids == alone.token_ids[: completes + 1]
    for sample, stop in ((kept, inside), (cut, straddling)):
        assert "".join(text for _, text, _ in segments(sample, (stop,))) == sample.text


def test_a_streamed_choice_holds_stop_strings_back_for_min_tokens_as_generate_does(collab):
    params, alone, held, inside, straddling = held_stop_strings(collab)
    texts = []
    for stop in (inside, straddling):
        sampling = replace(params, stop=(stop,))
        streamed = "".join(event.text for event in collab.stream(PROMPTS[1], router="p-punc:0.5", sampling=sampling))
        assert streamed == collab.generate([PROMPTS[1]], router="p-punc:0.5", sampling=sampling)[0].text
        texts.append(streamed)
    assert texts == [alone.text, "".join(alone.token_texts)[: held - 2].lstrip()]


def test_a_penalised_sample_records_its_penalties(collab):
    params = SamplingParams(max_new_tokens=6, seed=1, repetition_penalty=1.3, presence_penalty=0.4)
    sample = Collaboration(collab.pair, collab.prompt_format).generate(PROMPTS[:1], params, router="p-punc:0.5")[0]
    recorded = sample.to_dict()["sampling"]
    assert recorded["repetition_penalty"] == 1.3 and recorded["presence_penalty"] == 0.4
    assert "frequency_penalty" not in recorded


def test_a_penalised_request_without_room_for_its_buffers_is_refused_when_added_and_the_engine_runs_on(
        collab, monkeypatch):
    """The penalties' per-slot buffers are allocated when the first penalised request is added: where the device
    cannot hold them, that request is refused then (naming what they need), and nothing else is lost."""
    import baco.decode.engine as engine_module

    plain, penalised = SamplingParams(max_new_tokens=6, seed=2), SamplingParams(max_new_tokens=6, seed=2,
                                                                               presence_penalty=1.0)
    request = collab.requests(PROMPTS[:1], 1, plain, seed=2)[0]
    alone = [s[0] for s in run(collab, [request], "p-punc:0.5", plain)[0][0]]
    engine = Engine(collab.pair, get_router("p-punc:0.5"), max_batch=2, max_len=96)
    monkeypatch.setattr(engine_module, "free_bytes", lambda device: engine_module.penalty_bytes(collab.pair, 2) - 1)
    refusal = r"penalties .* need [\d.]+ KiB .* 2 slots .* but [\d.]+ KiB is free; .* sample without penalties"
    with pytest.raises(CapacityError, match=refusal):
        engine.add(request, penalised)
    assert engine.counts is None and not engine.has_work
    engine.add(request, plain)  # the engine goes on with requests that need no buffers
    tokens = [int(event.tokens[0]) for event in engine.run()]
    assert tokens == alone
    monkeypatch.undo()
    engine.add(request, penalised)  # with room, the same request is taken
    assert engine.counts is not None and len(list(engine.run())) == 6


def test_a_prompt_mask_holds_each_prompt_s_ids_within_the_vocabulary(collab):
    engine = Engine(collab.pair, get_router("aligned"), max_batch=1, max_len=16)
    vocab = collab.pair.vocab_size
    prompts = [[3, 5, 5, 9], [vocab + 2, 7], [vocab], [0]]  # ids past the vocabulary: a tokenizer's padding rows
    expected = torch.zeros((len(prompts), vocab), dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        for token in prompt:
            if token < vocab:
                expected[row, token] = True
    assert torch.equal(engine._prompt_mask(prompts), expected)
