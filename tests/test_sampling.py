"""SamplingParams validation and the inverse-CDF sampler."""

import itertools
import math

import pytest
import torch

from baco.decode import sampling as sampling_module
from baco.decode.sampling import SamplingParams, kept_probs, sample
from baco.errors import InvalidSamplingParams
from sampling_reference import transformers_distribution


@pytest.mark.parametrize("kwargs, words", [
    ({"temperature": -0.1}, "temperature"),
    ({"temperature": math.nan}, "temperature"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_k": -2}, "top_k"),
    ({"top_k": 2.5}, "top_k"),
    ({"min_p": 1.2}, "min_p"),
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"seed": -1}, "seed"),
    ({"stop": ["ok", ""]}, "stop"),
])
def test_bad_sampling_values_name_the_knob(kwargs, words):
    with pytest.raises(InvalidSamplingParams, match=words):
        SamplingParams(**kwargs)


def test_a_single_stop_string_is_accepted_as_a_tuple():
    assert SamplingParams(stop="\n\n").stop == ("\n\n",)


def _logprobs(probs):
    return torch.log(torch.tensor(probs, dtype=torch.float32))


def test_temperature_zero_is_argmax():
    lp = torch.log_softmax(torch.randn(5, 50), -1)
    assert torch.equal(sample(lp, torch.rand(5), SamplingParams(temperature=0)), lp.argmax(-1))


def test_inverse_cdf_hits_each_token_in_proportion_to_its_probability():
    lp = _logprobs([[0.1, 0.6, 0.0, 0.3]]).expand(1000, 4)
    u = (torch.arange(1000) + 0.5) / 1000  # evenly spaced quantiles
    counts = torch.bincount(sample(lp, u, SamplingParams()), minlength=4)
    assert counts.tolist() == [100, 600, 0, 300]


def test_top_k_one_and_tiny_top_p_and_min_p_one_are_greedy():
    lp = torch.log_softmax(torch.randn(8, 64), -1)
    u = torch.rand(8)
    greedy = lp.argmax(-1)
    for params in (SamplingParams(top_k=1), SamplingParams(top_p=1e-6), SamplingParams(min_p=1.0)):
        assert torch.equal(sample(lp, u, params), greedy)


@pytest.mark.parametrize("sync_free", [False, True])
def test_a_top_p_below_float32_range_still_keeps_the_top_token(sync_free):
    logprobs = torch.log_softmax(torch.randn(3, 50, generator=torch.Generator().manual_seed(0)), dim=-1)
    tokens = sample(logprobs, torch.rand(3), SamplingParams(top_p=5e-324), sync_free=sync_free)  # 0.0 in float32
    assert tokens.tolist() == logprobs.argmax(-1).tolist()


def test_a_top_k_beyond_any_integer_type_keeps_everything():
    logprobs = torch.log_softmax(torch.randn(2, 50, generator=torch.Generator().manual_seed(1)), dim=-1)
    u = torch.rand(2)
    assert torch.equal(sample(logprobs, u, SamplingParams(top_k=2**80)), sample(logprobs, u, SamplingParams()))


def test_top_p_keeps_the_smallest_set_reaching_p():
    lp = _logprobs([[0.5, 0.3, 0.15, 0.05]]).expand(400, 4)
    u = (torch.arange(400) + 0.5) / 400
    drawn = set(sample(lp, u, SamplingParams(top_p=0.8)).tolist())
    assert drawn == {0, 1}  # 0.5 + 0.3 reaches 0.8; token 2 is cut


def test_min_p_drops_tokens_below_fraction_of_the_top():
    lp = _logprobs([[0.5, 0.3, 0.15, 0.05]]).expand(400, 4)
    u = (torch.arange(400) + 0.5) / 400
    drawn = set(sample(lp, u, SamplingParams(min_p=0.25)).tolist())
    assert drawn == {0, 1, 2}  # 0.05 < 0.25 * 0.5


def test_precut_gives_the_same_tokens_as_a_full_sort(monkeypatch):
    torch.manual_seed(0)
    lp = torch.log_softmax(torch.randn(16, 5000) * 0.3, -1)  # flat: the precut rarely holds top_p
    lp[:8] = torch.log_softmax(torch.randn(8, 5000) * 4, -1)  # peaked rows
    u = torch.rand(16)
    for params in (SamplingParams(top_p=0.9), SamplingParams(min_p=0.1), SamplingParams(top_p=0.5, temperature=2)):
        fast = sample(lp, u, params)
        monkeypatch.setattr(sampling_module, "PRECUT", 10**9)
        exact = sample(lp, u, params)
        monkeypatch.undo()
        assert torch.equal(fast, exact), params


def test_masked_tokens_are_never_drawn():
    lp = _logprobs([[0.0, 0.5, 0.0, 0.5]]).expand(3, 4)
    u = torch.tensor([0.0, 0.5, 0.999999])
    assert set(sample(lp, u, SamplingParams()).tolist()) <= {1, 3}


@pytest.mark.parametrize("block", [1, 8, 1024])
def test_two_level_inverse_cdf_picks_the_same_token_as_a_flat_scan(monkeypatch, block):
    monkeypatch.setattr(sampling_module, "BLOCK", block)
    generator = torch.Generator().manual_seed(0)
    probs = torch.rand((6, 50), generator=generator, dtype=torch.float64)
    probs[probs < 0.4] = 0  # zero-probability runs, some across block edges
    probs[:, 45:] = 0  # nothing at the end: round-off must not land there
    u = torch.rand(6, generator=generator, dtype=torch.float64)
    u[0], u[1] = 0.0, 1 - 1e-16
    cdf = torch.cumsum(probs, -1)
    flat = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).squeeze(-1)
    flat = torch.minimum(flat, (probs > 0).cumsum(-1).argmax(-1))  # the last kept token at most
    assert torch.equal(sampling_module.inverse_cdf(probs, u), flat)
    assert bool((probs.gather(-1, flat[:, None]) > 0).all())


def test_rows_at_temperature_one_skip_the_division_and_draw_the_same_tokens():
    """The static flag `unit_temperature` saves a pass over the vocabulary; x / 1 == x, so the draws are the
    very same as through the division, for every other knob too."""
    from dataclasses import replace

    from baco.decode.sampling import RowKnobs

    generator = torch.Generator().manual_seed(5)
    logprobs = torch.log_softmax(3 * torch.randn(64, 3000, generator=generator), dim=-1)
    uniform = torch.rand(64, generator=generator)
    rows = [SamplingParams(temperature=t, top_k=k, top_p=p, min_p=m)
            for t in (0, 1.0) for k in (0, 50) for p in (1.0, 0.9) for m in (0.0, 0.05)] * 4
    knobs = RowKnobs.of(rows, device="cpu")
    assert knobs.unit_temperature and not RowKnobs.of([SamplingParams(temperature=0.7)]).unit_temperature
    for sync_free in (False, True):
        skipped = sample(logprobs, uniform, knobs, sync_free=sync_free)
        divided = sample(logprobs, uniform, replace(knobs, unit_temperature=False), sync_free=sync_free)
        assert torch.equal(skipped, divided)


@pytest.mark.parametrize("knob", [{"top_k": 50}, {"top_k": 2000}, {"top_p": 0.9}, {"top_k": 50, "top_p": 0.9},
                                  {"min_p": 0.05}, {"temperature": 0.7, "top_k": 5}], ids=str)
def test_sync_free_sampling_draws_the_host_paths_tokens(knob):
    """Over a vocabulary wider than the top-1,024 precut: the sync-free sampler (full sorts for top-p, the
    precut for top-k up to 1,024, never a host branch) and the host sampler (precut, full sort on demand) agree."""
    generator = torch.Generator().manual_seed(6)
    logprobs = torch.log_softmax(torch.randn(48, 5000, generator=generator) * torch.linspace(0.5, 6, 48)[:, None], -1)
    uniform = torch.rand(48, generator=generator)
    params = SamplingParams(**knob)
    assert torch.equal(sample(logprobs, uniform, params, sync_free=True), sample(logprobs, uniform, params))


# ---- the same knobs as transformers' `generate` ----------------------------------------------------------------
def _normalised(probs: torch.Tensor) -> torch.Tensor:
    return probs / probs.sum(-1, keepdim=True)


def _same_distribution(got: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal supports (tokens with a non-negligible probability on either side) and equal probabilities."""
    visible = (got > 1e-20) | (expected > 1e-20)  # below that, exp() underflows differently on each side
    assert torch.equal((got > 0) & visible, (expected > 0) & visible)
    assert torch.allclose(got, expected, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("sync_free", [False, True], ids=["host", "sync-free"])
@pytest.mark.parametrize("temperature, top_k, top_p, min_p",
                         list(itertools.product((0.3, 1.0, 1.7), (0, 1, 5, 50), (0.1, 0.9, 1.0), (0.0, 0.05, 0.3))))
def test_rows_sample_from_the_distribution_transformers_warpers_leave(temperature, top_k, top_p, min_p, sync_free):
    """Over a vocabulary wider than the top-1,024 precut, rows from flat (the precut holds less than top_p) to peaked
    (top_p 0.1 keeps one token): the kept tokens and their probabilities are transformers'."""
    generator = torch.Generator().manual_seed(11)
    logprobs = torch.log_softmax(torch.randn(16, 2000, generator=generator) * torch.linspace(0.3, 6, 16)[:, None], -1)
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    got = _normalised(kept_probs(logprobs, params, sync_free=sync_free))
    _same_distribution(got, transformers_distribution(logprobs, params))


@pytest.mark.parametrize("sync_free", [False, True], ids=["host", "sync-free"])
def test_top_k_keeps_every_token_tied_with_the_kth_as_transformers_does(sync_free):
    logprobs = _logprobs([[0.1, 0.4, 0.1, 0.1, 0.3], [0.25] * 4 + [0.0]])
    for params in (SamplingParams(top_k=3), SamplingParams(top_k=1), SamplingParams(top_k=2, temperature=0.5)):
        got = _normalised(kept_probs(logprobs, params, sync_free=sync_free))
        _same_distribution(got, transformers_distribution(logprobs, params))
        assert int((got[0] > 0).sum()) == (5 if params.top_k == 3 else 1 if params.top_k == 1 else 2)


@pytest.mark.parametrize("sync_free", [False, True], ids=["host", "sync-free"])
@pytest.mark.parametrize("precut", [1024, 8])
def test_top_p_after_top_k_renormalises_over_every_token_tied_with_the_kth(monkeypatch, precut, sync_free):
    """Top-k keeps ten tokens tied at the 4th (0.04 each), so top-p sees a distribution of 13 tokens: 0.3 is
    below top_p = 0.32 and 0.2 completes it. Renormalising over exactly 4 tokens (0.3 / 0.8 = 0.375) would keep
    one token; so would a head of 8 tokens (the precut) that leaves tied tokens out of the renormalisation."""
    monkeypatch.setattr(sampling_module, "PRECUT", precut)
    logprobs = _logprobs([[0.3, 0.2, 0.1] + [0.04] * 10 + [0.0] * 7])
    params = SamplingParams(top_k=4, top_p=0.32)
    got = _normalised(kept_probs(logprobs, params, sync_free=sync_free))
    _same_distribution(got, transformers_distribution(logprobs, params))
    assert (got[0] > 0).nonzero().squeeze(-1).tolist() == [0, 1]


@pytest.mark.parametrize("sync_free", [False, True], ids=["host", "sync-free"])
def test_min_p_is_relative_to_the_top_probability_after_temperature(sync_free):
    """0.15 / 0.5 = 0.3: at temperature 1 min_p 0.3 keeps it; at 0.5 its ratio is squared (0.09), at 2 it is
    the square root (0.55), and the 0.05 token joins it (0.32) - as transformers' MinPLogitsWarper after its
    TemperatureLogitsWarper."""
    logprobs = _logprobs([[0.05, 0.5, 0.15, 0.3]])
    for temperature, kept in ((1.0, [1, 2, 3]), (0.5, [1, 3]), (2.0, [0, 1, 2, 3])):
        params = SamplingParams(temperature=temperature, min_p=0.3)
        got = _normalised(kept_probs(logprobs, params, sync_free=sync_free))
        _same_distribution(got, transformers_distribution(logprobs, params))
        assert (got[0] > 0).nonzero().squeeze(-1).tolist() == kept


@pytest.mark.parametrize("sync_free", [False, True], ids=["host", "sync-free"])
def test_tokens_tied_with_the_top_p_crossing_all_stay(sync_free):
    """A documented difference: top-p is a floor, so the tokens tied with the one that crosses top_p stay.
    transformers' TopPLogitsWarper keeps only as many of them as its sort happens to put first (here one
    of the three 0.2 tokens)."""
    logprobs = _logprobs([[0.2, 0.4, 0.2, 0.2]])
    got = kept_probs(logprobs, SamplingParams(top_p=0.5), sync_free=sync_free)
    assert torch.allclose(_normalised(got), _normalised(logprobs.exp()))
    assert int((transformers_distribution(logprobs, SamplingParams(top_p=0.5)) > 0).sum()) == 2


@pytest.mark.parametrize("sync_free", [False, True], ids=["host", "sync-free"])
def test_temperature_zero_takes_the_lowest_id_among_tied_maxima(sync_free):
    """Greedy, as transformers' greedy search (`torch.argmax`): the first of the tied best tokens, whatever the
    other knobs say, also beside sampled rows in one batch."""
    logprobs = _logprobs([[0.1, 0.3, 0.05, 0.3, 0.25], [0.2, 0.2, 0.2, 0.2, 0.2], [0.1, 0.3, 0.05, 0.3, 0.25]])
    greedy = SamplingParams(temperature=0, top_k=3, top_p=0.5, min_p=0.5)
    rows = [greedy, greedy, SamplingParams(temperature=0.8)]
    knobs = sampling_module.RowKnobs.of(rows)
    tokens = sample(logprobs, torch.tensor([0.99, 0.99, 0.99]), knobs, sync_free=sync_free)
    assert tokens[:2].tolist() == [1, 0] == transformers_distribution(logprobs[:2], greedy).argmax(-1).tolist()
    assert sample(logprobs, torch.full((3,), 0.99), greedy, sync_free=sync_free).tolist() == [1, 0, 1]


@pytest.mark.parametrize("sync_free", [False, True], ids=["host", "sync-free"])
@pytest.mark.parametrize("temperature", [1e-39, 1e-44])
def test_a_temperature_too_small_for_float32_draws_the_best_token_never_a_masked_one(temperature, sync_free):
    """log-probs / 1e-39 overflow float32 to -inf for every token of a flat row: the softmax is NaN and the draw
    fell on token 0 (here a masked token). Such a temperature is the limit of sampling: the best token."""
    logprobs = torch.log_softmax(torch.randn(4, 3000, generator=torch.Generator().manual_seed(3)), dim=-1)
    logprobs[:, 0] = -math.inf  # a control token
    for params in (SamplingParams(temperature=temperature), SamplingParams(temperature=temperature, top_p=0.9)):
        tokens = sample(logprobs, torch.rand(4), params, sync_free=sync_free)
        assert tokens.tolist() == logprobs.argmax(-1).tolist()
