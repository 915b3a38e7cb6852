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


def test_baco_sweep_compile_writes_the_samples_of_the_eager_sweep(tiny_dirs, tmp_path, capsys):
    """`baco sweep --compile`: the cells run on compiled forwards; the samples are the eager sweep's, and a run
    may be resumed with or without it (compiling is not part of what the samples are)."""
    import yaml

    from baco.cli import main
    from baco.sweep.store import SampleStore
    from test_sweep import keyed, raw_config

    raw = raw_config(tmp_path) | {"models": {"base": str(tiny_dirs[0]), "aligned": str(tiny_dirs[1])}}
    raw["methods"] = {"p-punc": {"router": "p-punc", "values": [0.5]}, "aligned": {"router": "aligned"}}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(raw))
    rows, graphs = {}, {}
    torch._dynamo.reset()  # what earlier tests compiled would otherwise be reused, and not counted
    for name, flags in (("eager", []), ("compiled", ["--compile"])):
        out, before = tmp_path / name, counters["stats"]["unique_graphs"]
        assert main(["sweep", str(tmp_path / "sweep.yaml"), "--out", str(out), "--no-eval", "--quiet", *flags]) == 0
        rows[name] = keyed(SampleStore(out / "samples.jsonl").read())
        graphs[name] = counters["stats"]["unique_graphs"] - before
    assert graphs["eager"] == 0 and graphs["compiled"] > 0  # the compiled sweep did compile its forwards
    assert rows["compiled"] == rows["eager"] and len(rows["eager"]) == 2 * 3 * 3
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:  # a switch: a value given to it is a usage error
        main(["sweep", str(tmp_path / "sweep.yaml"), "--compile=yes"])
    assert exited.value.code == 2
    assert "argument --compile: ignored explicit argument 'yes'" in capsys.readouterr().err
