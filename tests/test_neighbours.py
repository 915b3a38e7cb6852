"""Nudging, EFT and contrastive guidance: their defining properties, on synthetic distributions and the tiny pair."""

import math

import pytest
import torch

from baco import SamplingParams
from baco.routers import StepView, get_router
from baco.vocab import TokenTable

TEXTS = ["<eos>", " the", " dragon", ".", " cat", "<ctrl>"]
VOCAB = TokenTable.from_texts(TEXTS, stop_ids=[0], control_ids=[5])
PROMPTS = ["Name a fruit.", "Tell me a story about a dragon who could not fly.", "Why?"]


def view_of(base_probs, aligned_probs):
    to_lp = lambda p: torch.tensor([p + [0.0]]).log()  # noqa: E731  (the control token has prob 0)
    return StepView(to_lp(base_probs), to_lp(aligned_probs), VOCAB, torch.zeros(1))


def test_eft_draws_from_the_renormalised_geometric_mean():
    base, aligned = [0.1, 0.6, 0.1, 0.1, 0.1], [0.1, 0.1, 0.1, 0.1, 0.6]
    route = get_router("eft:0.5")(view_of(base, aligned))
    geometric = [math.sqrt(b * a) for b, a in zip(base, aligned)]
    expected = [g / sum(geometric) for g in geometric]
    assert route.mix.exp()[0, :5].tolist() == pytest.approx(expected, rel=1e-5)
    assert route.mix[0, 5] == -math.inf  # control tokens stay masked
    assert route.reason == ["eft:0.5"]


def test_a_token_only_the_aligned_model_has_keeps_its_aligned_probability_in_every_mixture():
    """An end-of-turn token added to the aligned model's vocabulary is past the base model's logits (-inf there):
    contrast (-w x -inf) would give it all the mass and end every sample at once, EFT none (it could never end).
    Scored by the model that has it, it enters each mixture as the aligned model's log-prob on both sides."""
    base = torch.tensor([[0.1, 0.6, 0.2, 0.1, 0.0, 0.0]]).log()  # " cat" (4): past the base model's rows
    aligned = torch.tensor([[0.1, 0.3, 0.2, 0.1, 0.3, 0.0]]).log()
    anchor = torch.tensor([[0.2, 0.5, 0.2, 0.1, 0.0, 0.0]]).log()
    view = StepView(base, aligned, VOCAB, torch.zeros(1), anchor_logprobs=anchor)
    lb, la, lc = base[0, :5].tolist(), aligned[0, :5].tolist(), anchor[0, :5].tolist()
    lb[4] = lc[4] = la[4]  # what the mixtures read for the token the base and anchor lack
    for router, scores in (("contrast:1", [2 * a - b for a, b in zip(la, lb)]),
                           ("eft:0.3", [0.7 * b + 0.3 * a for a, b in zip(la, lb)]),
                           ("proxy:0.5", [b + 0.5 * (a - c) for a, b, c in zip(la, lb, lc)])):
        expected = torch.softmax(torch.tensor(scores), -1)
        assert get_router(router)(view).mix.exp()[0, :5].tolist() == pytest.approx(expected.tolist(), rel=1e-5)


def test_contrast_moves_mass_away_from_what_the_base_model_prefers():
    base, aligned = [0.05, 0.6, 0.25, 0.05, 0.05], [0.05, 0.4, 0.45, 0.05, 0.05]
    probs = get_router("contrast:1")(view_of(base, aligned)).mix.exp()[0, :5]
    raw = [a * a / b for a, b in zip(aligned, base)]  # p_aligned^2 / p_base
    assert probs.tolist() == pytest.approx([r / sum(raw) for r in raw], rel=1e-5)
    # " dragon" gains on " the" relative to the aligned model's own odds
    assert probs[2] / probs[1] > aligned[2] / aligned[1]


def test_nudge_hands_uncertain_base_steps_to_the_aligned_model():
    confident = view_of([0.02, 0.9, 0.04, 0.02, 0.02], [0.2] * 5)
    unsure = view_of([0.2, 0.2, 0.2, 0.2, 0.2], [0.2] * 5)
    router = get_router("nudge:0.5")
    assert router(confident).use_base.tolist() == [True]
    assert router(unsure).use_base.tolist() == [False] and router(unsure).reason == ["nudge"]


@pytest.mark.parametrize("method, same_as", [("eft:0", "base"), ("eft:1", "aligned"), ("contrast:0", "aligned"),
                                             ("nudge:0", "base")])
def test_end_points_reproduce_the_single_models(collab, method, same_as):
    params = SamplingParams(max_new_tokens=16, seed=9)
    got = collab.generate(PROMPTS, router=method, n=2, sampling=params)
    want = collab.generate(PROMPTS, router=same_as, n=2, sampling=params)
    assert [s.token_ids for s in got] == [s.token_ids for s in want]


def test_a_soft_mixture_records_mix_provenance_and_its_own_probabilities(collab):
    params = SamplingParams(max_new_tokens=16, seed=2)
    mixed = collab.generate(PROMPTS, router="eft:0.5", n=2, sampling=params)
    for s in mixed:
        assert s.sources == ["mix"] * s.num_tokens and s.base_share == 0.0
        assert all(0 < p <= 1 for p in s.chosen_prob)
    ends = [collab.generate(PROMPTS, router=r, n=2, sampling=params) for r in ("base", "aligned")]
    assert all([s.token_ids for s in mixed] != [s.token_ids for s in end] for end in ends)


def test_greedy_eft_picks_the_argmax_of_the_mixture(collab):
    """Step 0 checked against the two models' own prompt logits, mixed by hand."""
    pair, fmt = collab.pair, collab.prompt_format
    sample = collab.generate(["Name a fruit."], router="eft:0.3",
                             sampling=SamplingParams(temperature=0, max_new_tokens=1))[0]
    base_ids = pair.base.tokenizer(fmt.render_base("Name a fruit."))["input_ids"]
    aligned_ids = pair.aligned.tokenizer(fmt.render_aligned("Name a fruit.", pair.aligned.tokenizer),
                                         add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        last = lambda lm, ids: lm.model(torch.tensor([ids], device=lm.device)).logits[:, -1]  # noqa: E731
        base_lp, aligned_lp = pair.logprobs(last(pair.base, base_ids)), pair.logprobs(last(pair.aligned, aligned_ids))
    mixture = 0.7 * base_lp.clamp(min=-1e4) + 0.3 * aligned_lp.clamp(min=-1e4)
    mixture[~pair.vocab.allowed[None]] = -math.inf
    assert sample.token_ids[0] == int(mixture.argmax())


def test_nudge_provenance_follows_the_base_models_confidence(collab):
    samples = collab.generate(PROMPTS, router="nudge:0.3", n=2, sampling=SamplingParams(max_new_tokens=24, seed=4))
    for s in samples:
        for source, reason, top1 in zip(s.sources, s.reasons, s.base_top1_prob):
            if reason != "word-continuation":
                assert (source == "aligned") == (reason == "nudge") == (top1 < 0.3)


def test_proxy_tuning_without_an_anchor_is_eft(collab):
    params = SamplingParams(max_new_tokens=12, seed=6)
    proxy = collab.generate(PROMPTS, router="proxy:0.5", n=2, sampling=params)
    eft = collab.generate(PROMPTS, router="eft:0.5", n=2, sampling=params)
    assert [s.token_ids for s in proxy] == [s.token_ids for s in eft]


def test_proxy_tuning_adds_the_aligned_minus_anchor_offset_to_the_base(tiny_dirs):
    """The anchor (a third model) reads the base model's prompt. Anchor = the base model: exactly EFT.
    Anchor = another model: step 0 matches log p_base + B (log p_aligned - log p_anchor), mixed by hand."""
    from baco import Collaboration

    base, aligned = tiny_dirs
    params = SamplingParams(temperature=0, max_new_tokens=12, seed=1)
    same = Collaboration.from_pretrained(base, aligned, anchor=base, device="cpu")
    got = same.generate(PROMPTS, router="proxy:0.4", sampling=params)
    want = same.generate(PROMPTS, router="eft:0.4", sampling=params)
    assert [s.token_ids for s in got] == [s.token_ids for s in want]

    other = Collaboration.from_pretrained(base, aligned, anchor=aligned, device="cpu")
    sample = other.generate(["Name a fruit."], router="proxy:0.8", sampling=params)[0]
    assert set(sample.sources) == {"mix"}
    pair, fmt = other.pair, other.prompt_format
    base_ids = pair.base.tokenizer(fmt.render_base("Name a fruit."))["input_ids"]
    chat_ids = pair.aligned.tokenizer(fmt.render_aligned("Name a fruit.", pair.aligned.tokenizer),
                                      add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        lp = lambda lm, ids: pair.logprobs(  # noqa: E731
            lm.model(torch.tensor([ids], device=lm.device)).logits[:, -1]).clamp(min=-1e4)
        mixture = lp(pair.base, base_ids) + 0.8 * (lp(pair.aligned, chat_ids) - lp(pair.anchor, base_ids))
    mixture[~pair.vocab.allowed[None]] = -math.inf
    assert sample.token_ids[0] == int(mixture.argmax())
