"""What a sample's rounding depends on beyond its seed (`baco.numerics`), and the MKL VML warm-up that keeps a
process's first calls from rounding otherwise (pytorch/pytorch#188792; measured in benchmarks/first_call_race.py)."""

import os
import subprocess
import sys

import torch

from baco.numerics import VECTOR_MATH, numerics


def test_importing_baco_warms_vector_math_once_unless_switched_off():
    code = ("import baco; from baco.numerics import warm_vector_math as w; "
            "print(w.cache_info().currsize, len(w()), w.cache_info().misses)")
    env = {key: value for key, value in os.environ.items() if key != "BACO_VML_WARMUP"}
    on = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert on.stdout.split() == ["1", str(len(VECTOR_MATH)), "1"]  # done at import, not again when asked
    off = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**env, "BACO_VML_WARMUP": "0"})
    assert off.stdout.split() == ["1", "0", "1"]


def test_a_fresh_process_first_threaded_calls_are_as_accurate_as_math():
    """The first call of each function on a tensor over ATen's 2048-element grain runs on two threads at once, with
    MKL initialised and the OpenMP threads running, as model loading leaves them: the race's setting (without the
    warm-up, about one such process in ten ran `cos` wrongly: docs/benchmarks.md). After `import baco` it computes
    what Python's math module computes (to float rounding)."""
    code = """
import math, sys, torch
torch.set_num_threads(2)
torch.randn(256, 256) @ torch.randn(256, 256)
import baco
for _ in range(3):
    torch.ones(1 << 20).mul_(2)
for name in ("cos", "sin", "exp", "log", "sqrt", "tanh", "erf", "log1p"):
    for dtype, tolerance in ((torch.float32, 1e-6), (torch.float64, 1e-14)):
        x = torch.linspace(0.05, 0.95, 12000, dtype=dtype)
        got = getattr(torch, name)(x).double()
        want = torch.tensor([getattr(math, name)(v) for v in x.double().tolist()], dtype=torch.float64)
        error = ((got - want).abs() / want.abs()).max().item()
        if error > tolerance:
            sys.exit(f"{name} {dtype}: relative error {error:.2g}")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_numerics_names_versions_threads_and_cpu():
    record = numerics("cpu")
    assert record["torch"] == torch.__version__ and record["threads"] == torch.get_num_threads()
    assert record["cpu"] and "gpu" not in record
