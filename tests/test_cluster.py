"""baco on Ray: a local cluster started here (2 CPUs, so 2 CPU workers) and the tiny pair.

What must hold: the samples of a cluster run are those of a single-process run with the same seeds
(same ids, texts and token ids); a worker killed mid-run (`ray.kill`) costs nothing and doubles
nothing; an interrupted `--ray` sweep resumes with only what is missing; the evaluation's scores
and embeddings made on workers give the local evaluation's numbers. One cluster serves the module
(starting Ray takes seconds).
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import baco
from baco.cli import main
from baco.cluster import ClusterError, RayOptions
from baco.storage import scan_jsonl
from baco.sweep import Engines, parse_config, run_cells, run_sweep
from baco.sweep.store import SampleStore

ray = pytest.importorskip("ray")

PROMPTS = ["Name a fruit.", "Why do birds migrate?", "Tell a joke.", "Write a poem about the sea.",
           "What should I cook tonight?", "Give me three ideas for a party."]


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def raw(tiny_dirs, tmp_path_factory):
    """Four cells whose rows decode in waves (batch_size 3 < 12 rows), so a cell takes a while."""
    prompts = tmp_path_factory.mktemp("cluster") / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return {"name": "cluster", "n": 2, "models": {"base": str(tiny_dirs[0]), "aligned": str(tiny_dirs[1])},
            "tasks": [{"path": str(prompts), "name": "mine"}], "sampling": {"max_new_tokens": 24},
            "batch_size": 3, "seeds": [0, 1],
            "methods": {"p-punc": {"router": "p-punc", "values": [0.3]}, "negative": {"router": "negative",
                                                                                      "values": [1.0]}},
            "metrics": {"diversity": ["distinct-2", "embedding-distance"], "quality": ["relevance"]}}


@pytest.fixture(scope="module")
def reference_dir(raw, tiny_dirs, tmp_path_factory):
    """The single-process run's directory (samples, plan and cell log; not evaluated)."""
    out = tmp_path_factory.mktemp("reference")
    run_cells(parse_config(raw), out, Engines.load(*map(str, tiny_dirs), device="cpu"), progress=False)
    return out


@pytest.fixture(scope="module")
def reference(reference_dir):
    """The single-process run: sample id -> (text, token ids)."""
    return samples_of(reference_dir)


def wait_for_a_sample(out: Path, until: float, alive=lambda: True) -> None:
    path = out / "samples.jsonl"
    while alive() and time.monotonic() < until and not (path.is_file() and path.stat().st_size):
        time.sleep(0.005)


def samples_of(out: Path) -> dict:
    return {r["id"]: (r["text"], r["token_ids"]) for r in SampleStore(out / "samples.jsonl").read()}


def assert_complete_and_once(out: Path, reference: dict) -> None:
    scan = scan_jsonl(out / "samples.jsonl")
    assert scan.torn is None and not scan.corrupt
    assert sorted(row["id"] for _, row in scan.rows) == sorted(reference)  # every sample, none twice
    assert samples_of(out) == reference  # the same texts and tokens
    assert main(["check", str(out)]) == 0


def cell_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "cells.jsonl").read_text().splitlines()]


def test_a_ray_sweep_stores_what_a_single_process_sweep_stores(cluster, raw, reference, tmp_path):
    out = tmp_path / "run"
    counts = run_sweep(parse_config(raw), out, evaluate=False, progress=False, ray=RayOptions())["counts"]
    assert counts["generated"] == len(reference) == 4 * 6 * 2
    assert_complete_and_once(out, reference)
    workers = {row["cell"]: row["worker"] for row in cell_log(out)}
    assert sorted(workers) == sorted(c.key for c in parse_config(raw).cells)
    assert len({w["pid"] for w in workers.values()}) == 2  # both workers took cells
    import torch

    # each cell records what its worker's rounding depended on: Ray gives a worker its own thread count
    assert all(row["numerics"]["torch"] == torch.__version__ and row["numerics"]["threads"] >= 1
               for row in cell_log(out))


def test_ray_generate_writes_the_samples_of_a_local_generate(cluster, tiny_dirs, tmp_path):
    """Shards hold a prompt each here, so the repeated prompt's second copy is decoded apart from its first:
    it must still get the second copy's samples (counted in the whole list), as locally. Two conversations that
    end in one turn travel to the workers whole and stay two prompts."""
    talk = [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": PROMPTS[1]}]
    other = [{"role": "system", "content": "Be brief."}, *talk]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(row) + "\n" for row in [*PROMPTS, "Describe a dragon.", {"messages": talk},
                                                                 {"messages": other}, PROMPTS[0]]))
    common = ["generate", "--base", str(tiny_dirs[0]), "--aligned", str(tiny_dirs[1]), "--prompts", str(prompts),
              "--n", "3", "--max-new-tokens", "16", "--seed", "5", "--device", "cpu", "--quiet"]
    assert main(common + ["--out", str(tmp_path / "local.jsonl")]) == 0
    assert main(common + ["--out", str(tmp_path / "ray.jsonl"), "--ray", "--workers", "2",
                          "--max-batch", "auto"]) == 0  # each worker sizes its slots from its own memory
    local = [json.loads(line) for line in (tmp_path / "local.jsonl").read_text().splitlines()]
    on_ray = [json.loads(line) for line in (tmp_path / "ray.jsonl").read_text().splitlines()]
    assert len(on_ray) == len({r["id"] for r in on_ray}) == 10 * 3
    assert {r["id"]: (r["prompt_index"], r["text"], r["token_ids"], r.get("messages")) for r in on_ray} == \
        {r["id"]: (r["prompt_index"], r["text"], r["token_ids"], r.get("messages")) for r in local}
    copies = [{tuple(r["token_ids"]) for r in on_ray if r["prompt_index"] == i} for i in (0, 9)]
    assert copies[0].isdisjoint(copies[1])
    assert {json.dumps(r["messages"]) for r in on_ray if "messages" in r} == {json.dumps(talk), json.dumps(other)}
    # rerun: every sample is in the file already, so nothing is generated and nothing appended
    assert main(common + ["--out", str(tmp_path / "ray.jsonl"), "--ray"]) == 0
    assert len((tmp_path / "ray.jsonl").read_text().splitlines()) == 10 * 3


@pytest.mark.parametrize("restarts", [3, 0], ids=["ray-restarts-it", "gone-for-good"])
def test_killing_a_worker_mid_run_loses_nothing_and_doubles_nothing(cluster, raw, reference, tmp_path, restarts):
    """Ray restarts the worker and reruns its cell there; a worker that may not restart hands its cell on."""
    out = tmp_path / "run"
    killed = []

    def kill_a_worker_after_the_first_sample():
        wait_for_a_sample(out, time.monotonic() + 120)
        names = [n for n in ray.util.list_named_actors() if n.startswith("baco-generate-")]
        ray.kill(ray.get_actor(names[0]), no_restart=False)  # Ray restarts it and reruns its cell
        killed.append(names[0])

    killer = threading.Thread(target=kill_a_worker_after_the_first_sample)
    killer.start()
    run_sweep(parse_config(raw), out, evaluate=False, progress=False, ray=RayOptions(max_restarts=restarts))
    killer.join()
    assert killed
    assert_complete_and_once(out, reference)
    assert sorted(row["cell"] for row in cell_log(out)) == sorted(c.key for c in parse_config(raw).cells)  # once each
    restarted = [row["worker"]["restarted"] for row in cell_log(out)]
    assert any(restarted) if restarts else not any(restarted)


def test_a_unit_rerun_in_another_order_after_its_worker_died_still_delivers_every_item(cluster, tmp_path):
    """Ray reruns a dead worker's unit and drops as many of the rerun's items as the first attempt had
    delivered: the first ones, whatever they are. A rerun that finishes its rows in another order
    (`batch_size: auto` sized on the restarted worker's free memory, GPU kernels) must not lose the others.
    The unit, sent out again for them, ends once: the driver logs a cell's line in cells.jsonl at its end."""
    from baco.cluster.pool import UnitDone, WorkerPool

    class DiesOnceThenReverses:  # defined here so that Ray sends it by value
        def __init__(self, items, marker, received):
            self.items, self.marker, self.received, self.skip, self.made = items, str(marker), str(received), set(), 0

        @property
        def total(self):
            return len(self.skip) + self.made

        def run(self, state):
            rerun = os.path.exists(self.marker)
            for i, item in enumerate(reversed(self.items) if rerun else self.items):
                if item in self.skip:
                    continue
                if not rerun and i == 3:
                    open(self.marker, "w").close()
                    until = time.monotonic() + 60
                    while not os.path.exists(self.received) and time.monotonic() < until:
                        time.sleep(0.01)  # the driver holds at least one item: Ray will drop some of the rerun's
                    os._exit(1)  # the worker dies with three items sent; Ray restarts it and reruns the unit
                self.made += 1
                yield item

    unit = DiesOnceThenReverses(list("abcdef"), tmp_path / "died", tmp_path / "received")
    delivered, ends = [], []
    with WorkerPool(ray, dict, RayOptions(), 1, "order") as pool:
        for _, item in pool.run([unit]):
            if isinstance(item, UnitDone):
                ends.append(item)
            else:
                delivered.append(item[0])
                unit.skip.add(item[0])  # what a caller does: a unit that goes out again skips what it holds
                (tmp_path / "received").touch()
    assert (tmp_path / "died").exists()
    assert sorted(set(delivered)) == list("abcdef")
    assert len(ends) == 1 and ends[0].total == 6


def test_an_interrupted_ray_sweep_resumes_with_only_what_is_missing(cluster, raw, reference, tmp_path):
    config_path = tmp_path / "sweep.yaml"
    config_path.write_text(json.dumps(raw))
    out = tmp_path / "run"
    source = str(Path(baco.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([source, os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, "-m", "baco.cli", "sweep", str(config_path), "--out", str(out),
                              "--no-eval", "--quiet", "--ray", cluster], env=env, stderr=subprocess.PIPE, text=True)
    wait_for_a_sample(out, time.monotonic() + 240, alive=lambda: child.poll() is None)
    child.send_signal(signal.SIGKILL)  # the driver dies; Ray ends its workers
    assert child.wait() == -signal.SIGKILL, child.stderr.read()[-2000:]
    kept = len(samples_of(out))
    assert 0 < kept < len(reference)
    counts = run_sweep(parse_config(raw), out, evaluate=False, progress=False, ray=RayOptions())["counts"]
    assert counts == {"generated": len(reference) - kept, "kept": kept, "cells": 4}
    assert_complete_and_once(out, reference)


def test_sigterm_stops_a_ray_generate_as_locally_keeping_its_samples_for_the_rerun(cluster, tiny_dirs, tmp_path):
    """`ray.init` puts its own SIGTERM handler (`sys.exit(15)`) in place of baco's: a job scheduler ending the run
    must still get the line saying what was kept and exit 143, as without --ray; the same command then completes."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    out = tmp_path / "samples.jsonl"
    common = ["generate", "--base", str(tiny_dirs[0]), "--aligned", str(tiny_dirs[1]), "--prompts", str(prompts),
              "--n", "2", "--max-new-tokens", "48", "--seed", "3", "--device", "cpu", "--quiet", "--out", str(out),
              "--ray", cluster, "--workers", "1", "--shard-size", "1",
              "--max-batch", "1"]  # one sample at a time: the run lasts seconds
    source = str(Path(baco.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([source, os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, "-m", "baco", *common], env=env, stderr=subprocess.PIPE, text=True)
    wait_for_a_sample(tmp_path, time.monotonic() + 240, alive=lambda: child.poll() is None)  # (its samples.jsonl)
    child.send_signal(signal.SIGTERM)
    err = child.communicate(timeout=120)[1]
    assert child.returncode == 128 + signal.SIGTERM, err[-2000:]
    kept = len(out.read_text().splitlines())
    assert f"terminated (SIGTERM): {kept} finished samples kept in {out}" in err
    assert 0 < kept < len(PROMPTS) * 2
    assert main(common) == 0
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert len(ids) == len(set(ids)) == len(PROMPTS) * 2


def test_the_evaluation_on_ray_gives_the_local_numbers_and_fills_the_shared_cache(cluster, raw, reference_dir,
                                                                                   tmp_path):
    config = parse_config(raw)
    local_dir = tmp_path / "local"
    for copy in (tmp_path / "ray", local_dir):  # made once (a Ray sweep makes the same: the first test here)
        copy.mkdir()
        for name in ("samples.jsonl", "plan.jsonl", "cells.jsonl"):
            (copy / name).write_bytes((reference_dir / name).read_bytes())
    on_ray = run_sweep(config, tmp_path / "ray", progress=False, ray=RayOptions())
    local = run_sweep(config, local_dir, progress=False)
    assert on_ray["counts"]["generated"] == local["counts"]["generated"] == 0
    for key, methods in local["metrics"].items():
        for method, values in methods.items():
            assert on_ray["metrics"][key][method] == pytest.approx(values, rel=2e-3, abs=2e-3)
    cached = scan_jsonl(tmp_path / "ray" / "quality-scores.jsonl").rows
    assert len(cached) == len({(r["prompt"], r["text"]) for r in SampleStore(local_dir / "samples.jsonl").read()})
    from baco.cluster.evaluate import prepare_on_ray
    from baco.evaluate.resources import EvalOptions, Resources
    from baco.sweep.results import metric_specs, sweep_records

    again = prepare_on_ray(sweep_records(config, SampleStore(local_dir / "samples.jsonl").read()),
                           metric_specs(config), Resources(EvalOptions(score_cache=str(tmp_path / "ray" /
                                                                                      "quality-scores.jsonl"))),
                           RayOptions(), progress=False)
    assert again["scored"] == 0  # every score is in the cache the driver wrote


def test_a_worker_that_cannot_load_its_models_is_one_clear_error(cluster, tiny_dirs, tmp_path, capsys):
    code = main(["generate", "--base", str(tmp_path / "no-such-model"), "--aligned", str(tiny_dirs[1]),
                 "--prompt", "Hi.", "--quiet", "--ray"])
    err = capsys.readouterr().err
    assert code == 2 and "no-such-model" in err and "Traceback" not in err


def test_one_forward_reaches_the_workers_as_it_reaches_a_local_load(cluster, tiny_dirs, capsys):
    """`--one-forward on` on a pair that is not base + its adapter is refused locally; on Ray the workers load the
    models, so they must get the flag too (not load with `auto`, silently doing what the user ruled out)."""
    args = ["generate", "--base", str(tiny_dirs[0]), "--aligned", str(tiny_dirs[1]), "--prompt", "Hi.", "--quiet",
            "--device", "cpu", "--max-new-tokens", "2", "--one-forward", "on"]
    assert main(args) == 2
    local = capsys.readouterr().err
    assert "one_forward='on' needs the aligned model to be a LoRA adapter" in local
    assert main(args + ["--ray"]) == 2
    assert capsys.readouterr().err == local


def test_more_workers_than_the_cluster_holds_is_refused(cluster, tiny_dirs, capsys):
    code = main(["generate", "--base", str(tiny_dirs[0]), "--aligned", str(tiny_dirs[1]), "--prompt", "Hi.",
                 "--quiet", "--ray", "--workers", "3"])
    assert code == 2 and "does not fit the Ray cluster" in capsys.readouterr().err


def test_an_address_nothing_answers_at_is_one_clear_error_within_seconds(tiny_dirs, tmp_path):
    """Ray itself would retry such an address for minutes, printing its own warnings."""
    import socket

    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    source = str(Path(baco.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([source, os.environ.get("PYTHONPATH", "")])}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run([sys.executable, "-m", "baco.cli", "generate", "--base", str(tiny_dirs[0]), "--aligned",
                           str(tiny_dirs[1]), "--prompt", "Hi.", "--quiet", "--ray", address],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"baco: error: no Ray cluster answers at {address} "
                                                f"(connection refused); start one there (`ray start --head`) "
                                                f"or give its address"]


def test_ray_auto_finding_no_cluster_says_what_to_do_in_baco_s_flags(monkeypatch, tiny_dirs, capsys):
    """Ray's own message asks for an `--address` flag, which baco does not have: name --ray's forms instead."""
    def no_cluster(**kwargs):  # what ray.init(address="auto") raises where no cluster runs
        raise ConnectionError("Could not find any running Ray instance. Please specify the one to connect to by "
                              "setting `--address` flag or `RAY_ADDRESS` environment variable.")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", no_cluster)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert main(["generate", "--base", str(tiny_dirs[0]), "--aligned", str(tiny_dirs[1]), "--prompt", "Hi.",
                 "--quiet", "--ray", "auto"]) == 2
    err = capsys.readouterr().err
    assert "--address" not in err
    assert err.strip() == ("baco: error: --ray auto found no Ray cluster (RAY_ADDRESS is unset and no `ray start` "
                           "cluster runs on this machine); start one (`ray start --head`), give its address "
                           "(--ray HOST:6379) or give --ray alone to start a local one")


@pytest.mark.parametrize("address", ["", " "])
@pytest.mark.parametrize("command", [["generate", "--prompt", "Hi."], ["sweep", "sweep.yaml"]])
def test_an_empty_ray_address_is_refused_not_read_as_a_bare_ray(command, address, capsys):
    """`--ray "$HEAD"` with HEAD unset must not start a new local cluster in place of the one meant (an empty
    --out or --seeds is refused the same way)."""
    with pytest.raises(SystemExit) as stop:
        main([*command, "--ray", address])
    assert stop.value.code == 2
    assert "argument --ray: the address is empty (an unset variable?); give HOST:6379, ray://HOST:10001 or auto, " \
           "or --ray alone to start a local cluster" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["generate", "--prompt", "Hi."], ["sweep", "sweep.yaml"]])
def test_a_bare_ray_passes_the_address_checks_and_means_no_address(command):
    from baco.cli import _ray_options, build_parser

    for argv in ([*command, "--ray"], [*command, "--ray", "--workers", "1"]):
        args = build_parser().parse_args(argv)
        assert _ray_options(args).address is None


@pytest.mark.parametrize("config", ["sweep.yaml", "configs/x.yml", "c.json"])
def test_a_configuration_read_as_the_ray_address_is_named_as_such(tmp_path, capsys, config):
    """`baco sweep --ray CONFIG`: --ray takes an optional address, so it swallows the configuration; say so, not
    just that the configuration is missing."""
    with pytest.raises(SystemExit) as stop:
        main(["sweep", "--ray", config])
    err = capsys.readouterr().err
    assert stop.value.code == 2
    assert f"argument --ray: {config} is read as the Ray address; put --ray after the configuration " \
           f"(baco sweep {config} --ray) or give the address first (--ray auto {config})" in err


@pytest.mark.parametrize("options, message", [
    ({"workers": 0}, "--workers must be an integer >= 1"),
    ({"gpus_per_worker": -1}, "--gpus-per-worker must be a number >= 0"),
    ({"shard_size": 1.5}, "--shard-size must be an integer >= 1"),
    ({"address": " "}, "the Ray address must be a non-empty string"),
])
def test_ray_options_are_checked_before_ray_starts(options, message):
    with pytest.raises(ClusterError, match=message):
        RayOptions(**options)


def test_workers_that_ask_for_no_resources_always_fit():
    """Ray places actors of 0 CPUs and 0 GPUs without limit (to oversubscribe a node): such --workers N are made."""
    cluster = {"CPU": 2.0}
    assert RayOptions(workers=3, cpus_per_worker=0, gpus_per_worker=0).worker_count(cluster) == 3
    assert RayOptions(cpus_per_worker=0, gpus_per_worker=0).worker_count(cluster) == 1  # none asked: one
    with pytest.raises(ClusterError, match="at most 4 such workers"):
        RayOptions(workers=5, cpus_per_worker=0.5).worker_count(cluster)


@pytest.mark.parametrize("flag", ["--workers", "--gpus-per-worker", "--cpus-per-worker", "--shard-size"])
def test_ray_flags_without_ray_are_a_usage_error(tiny_dirs, capsys, flag):
    """Not a local run that silently ignores them (the user forgot --ray)."""
    assert main(["generate", "--prompt", "Hi.", flag, "2"]) == 2
    assert f"{flag} applies to Ray workers: add --ray" in capsys.readouterr().err


def test_the_local_path_never_imports_ray(tiny_dirs, tmp_path):
    code = f"""
import sys
from baco.cli import main
assert main(["generate", "--base", {str(tiny_dirs[0])!r}, "--aligned", {str(tiny_dirs[1])!r}, "--prompt", "Hi.",
             "--max-new-tokens", "2", "--quiet", "--device", "cpu"]) == 0
assert "ray" not in sys.modules, "the local path imported ray"
"""
    source = str(Path(baco.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([source, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
