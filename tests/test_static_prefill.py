"""Static prefills (`Engine(static_prefill=True)`): a group's prompts run at once through fixed buffers,
bucketed by group size and prompt width (what a GPU captures as one CUDA graph per bucket), then go into the
slots' ring like a chunked prefill. The tokens are those of transformers' own dynamic-cache loop, on a tiny
Llama pair and on a tiny Gemma-3 pair whose sliding-window layer sees only 8 tokens (prompts run past it)."""

import pytest

from baco import Collaboration, SamplingParams
from baco.decode.engine import Engine
from baco.routers import get_router
from baco.testing import make_tiny_pair

from test_engine import PROMPTS, reference, run

LONG = "Tell me a story about a dragon who could not fly, and the knight who helped it"
PARAMS = [SamplingParams(temperature=0, max_new_tokens=16, seed=0),
          SamplingParams(temperature=1.0, min_p=0.05, max_new_tokens=16, seed=1)]


@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    return Collaboration.from_pretrained(*make_tiny_pair(tmp_path_factory.mktemp("gemma"), arch="gemma3"),
                                         device="cpu", dtype="float32")


@pytest.fixture(params=["llama", "gemma3"])
def pair_collab(request, collab, gemma):
    return collab if request.param == "llama" else gemma


@pytest.mark.parametrize("params", PARAMS, ids=["greedy", "sampled"])
@pytest.mark.parametrize("router", ["p-punc:0.3", "eft:0.5"])
def test_static_prefill_equals_the_dynamic_cache_reference(pair_collab, router, params):
    requests = pair_collab.requests(PROMPTS + [LONG], 2, params, seed=params.seed)
    for i, request in enumerate(requests):
        request.max_new_tokens = 6 + i  # rows finish at different steps: groups of waiting requests join mid-run
    got, engine = run(pair_collab.pair, requests, router, params, max_batch=3, static_prefill=True)
    for request, tokens in zip(requests, got):
        assert tokens == reference(pair_collab.pair, request, get_router(router), params)
    staged = [key for unit in engine.units for key in unit._staging]
    assert staged and all(width in (16, 32, 64) and group in (1, 2, 4) for _, group, width in staged)


def test_buffers_are_reused_per_bucket_and_keep_nothing_of_the_previous_group(gemma):
    """Two groups in the same (group, width) bucket, one after the other, through the same buffers: each
    request's tokens are its tokens alone."""
    params = SamplingParams(temperature=0, max_new_tokens=8, seed=0)
    first, second = gemma.requests([LONG, "Why is the sky blue today?"], 1, params, seed=0)
    engine = Engine(gemma.pair, get_router("p-punc:0.5"), max_batch=1, max_len=96, static_prefill=True)
    engine.add(first, params)
    engine.add(second, params)
    out = {0: [], 1: []}
    for event in engine.run():
        for rid, token in zip(event.rows, event.tokens.tolist()):
            out[rid].append(token)
    assert len({key for unit in engine.units for key in unit._staging}) == 2  # one bucket per side, reused
    for rid, request in enumerate((first, second)):
        assert out[rid] == reference(gemma.pair, request, get_router("p-punc:0.5"), params)


def test_prompts_wider_than_the_chunk_are_prefilled_in_chunks(gemma):
    params = SamplingParams(temperature=0, max_new_tokens=8, seed=0)
    requests = gemma.requests([LONG], 1, params, seed=0)
    tokens, engine = run(gemma.pair, requests, "p-punc:0.5", params, static_prefill=True, prefill_chunk=8)
    assert engine.stats["prefill_chunks"] > 2 and not any(unit._staging for unit in engine.units)
    assert tokens[0] == reference(gemma.pair, requests[0], get_router("p-punc:0.5"), params)
