"""SamplingParams validation and the inverse-CDF sampler."""

import math

import pytest
import torch

from baco.decode import sampling as sampling_module
from baco.decode.sampling import SamplingParams, sample
from baco.errors import InvalidSamplingParams


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
