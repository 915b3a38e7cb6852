"""Compiled decoding steps (`lm.compiled = True`, `--compile`): the engine runs each set of weights through
`torch.compile` in buckets of rows, and gives the eager path's tokens (float32, tiny pair, on the CPU)."""

import json

import pytest
import torch
from torch._dynamo.utils import counters

from baco import Collaboration, SamplingParams
from baco.decode.engine import Engine
from baco.errors import BacoError
from baco.routers import get_router
from baco.sweep.run import Engines
from baco.testing import make_tiny_adapter, make_tiny_cross_pair

from test_engine import PROMPTS, run, same_tokens

ROUTERS = ["p-punc:0.3", "eft:0.5"]
PARAMS = [SamplingParams(temperature=0, max_new_tokens=12, seed=0),
          SamplingParams(temperature=1.0, min_p=0.05, max_new_tokens=12, seed=1)]


@pytest.fixture(scope="module")
def one_forward(tiny_dirs, tmp_path_factory):
    """Eager and compiled views of one loaded adapter pair (both sides in one forward)."""
    base, _ = tiny_dirs
    adapter = make_tiny_adapter(tmp_path_factory.mktemp("adapter") / "aligned", base, seed=3)
    eager = Collaboration.from_pretrained(base, adapter, device="cpu", dtype="float32", one_forward="on")
    compiled = Collaboration.from_pretrained(base, adapter, device="cpu", dtype="float32", one_forward="on",
                                             compile=True)
    return eager, compiled


def test_compile_marks_the_models_and_the_engine_buckets_its_rows(one_forward):
    eager, compiled = one_forward
    assert all(lm.compiled for lm in (compiled.pair.base, compiled.pair.aligned))
    assert not any(lm.compiled for lm in (eager.pair.base, eager.pair.aligned))
    engine = Engine(compiled.pair, get_router("p-punc:0.5"), max_batch=4, max_len=64)
    assert engine.compiled and engine.units[0].compiled
    model = engine.units[0].model  # compiling leaves the model as it was: no new submodule, same state dict
    assert repr(model) and len(model.state_dict()) == len(eager.pair.base.model.peft.state_dict())
    params = SamplingParams(max_new_tokens=4, seed=0)
    requests = compiled.requests(PROMPTS[:3], 1, params, seed=0)
    graphs, breaks = counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())
    _, engine = run(compiled.pair, requests, "p-punc:0.5", params, max_batch=4)
    assert engine.stats["bucket_row_steps"] == 4 * engine.stats["steps"]  # 3 rows run in the bucket of 4
    assert counters["stats"]["unique_graphs"] > graphs  # dynamo compiled the forward ...
    assert sum(counters["graph_break"].values()) == breaks  # ... whole: no fallback to Python inside it


def test_every_bucket_keeps_its_compiled_forward_past_dynamos_recompile_limit(one_forward):
    """Dynamo compiles a forward at most `recompile_limit` times (8 by default), then runs it eagerly: with
    buckets 1, 2, 4 ... 256 and models of several shapes that limit is near. The engine's forwards get more room:
    here, with the limit lowered to 1, three buckets still compile three graphs."""
    _, compiled = one_forward
    torch._dynamo.reset()  # forget what earlier tests compiled
    config = torch._dynamo.config
    key = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    engine = Engine(compiled.pair, get_router("p-punc:0.5"), max_batch=4, max_len=32)
    graphs = counters["stats"]["unique_graphs"]
    with config.patch(**{key: 1}):
        for bucket in (1, 2, 4):
            engine._step_fn(bucket, (False, False, False, False, True))
    assert counters["stats"]["unique_graphs"] - graphs == 3


@pytest.mark.parametrize("params", PARAMS, ids=["greedy", "sampled"])
@pytest.mark.parametrize("router", ROUTERS)
def test_compiled_steps_give_the_eager_tokens(one_forward, router, params):
    eager, compiled = one_forward
    requests = eager.requests(PROMPTS, 2, params, seed=params.seed)
    same_tokens(eager.pair, compiled.pair, router, params, requests, max_batch=4)


def test_compiled_two_model_pair_with_late_joiners(tiny_dirs):
    """Two separate models, each compiled; rows finish early and requests wait for a slot: same tokens."""
    base, aligned = tiny_dirs
    eager = Collaboration.from_pretrained(base, aligned, device="cpu", dtype="float32")
    compiled = Collaboration.from_pretrained(base, aligned, device="cpu", dtype="float32", compile=True)
    params = SamplingParams(max_new_tokens=16, seed=5)
    requests = eager.requests(PROMPTS, 1, params, seed=5)
    for i, request in enumerate(requests):
        request.max_new_tokens = 4 + 4 * i
    _, engine = same_tokens(eager.pair, compiled.pair, "p-punc:0.3", params, requests, max_batch=2)
    assert engine.compiled and len(engine.units) == 2


def test_cli_generate_with_compile_writes_the_eager_samples(tiny_dirs, tmp_path):
    from baco.cli import main

    base, aligned = tiny_dirs
    written = {}
    for name, flags in (("eager", []), ("compiled", ["--compile"])):
        out = tmp_path / f"{name}.jsonl"
        code = main(["generate", "--base", str(base), "--aligned", str(aligned), "--dtype", "float32", *flags,
                     "--router", "p-punc:0.5", "--n", "2", "--max-new-tokens", "10", "--seed", "4",
                     "--prompt", "Name a fruit.", "--out", str(out), "--quiet"])
        assert code == 0
        written[name] = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["token_ids"] for r in written["compiled"]] == [r["token_ids"] for r in written["eager"]]
    assert [r["sources"] for r in written["compiled"]] == [r["sources"] for r in written["eager"]]


def test_compile_is_refused_where_it_cannot_apply(tiny_dirs, tmp_path):
    base, aligned = tiny_dirs
    with pytest.raises(BacoError, match="compile must be True or False"):
        Collaboration.from_pretrained(base, aligned, device="cpu", compile="yes")
    cross = make_tiny_cross_pair(tmp_path / "cross")
    with pytest.raises(BacoError, match="cross-tokenizer methods run eagerly"):
        Collaboration.from_pretrained(*cross, device="cpu", compile=True)
    with pytest.raises(BacoError, match="cross-tokenizer methods run eagerly"):
        Engines.load(*map(str, cross), device="cpu", compile=True)
    engines = Engines.load(str(base), str(aligned), device="cpu", dtype="float32", compile=True)  # sweeps, Ray workers
    assert all(lm.compiled for lm, _ in engines.pair.sides)
