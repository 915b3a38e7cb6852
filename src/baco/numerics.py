"""What a sample's floating-point rounding depends on beyond its seed: recorded with each cell a sweep runs.

A seed fixes every draw, but the log-probs the draws read are float sums whose order changes with the library
versions, the CPU thread count and the device (docs/engine.md, "Randomness"): a cell resumed on another machine,
or with another `--threads`, may round differently. `cells.jsonl` keeps this record per cell run, so such a
difference can be told from a bug.

`warm_vector_math` (run when baco is imported) removes a source of difference that is a bug, not rounding: PyTorch
computes float32/float64 `cos`, `exp`, `log`, `sqrt`, ... with MKL's vector math library (VML), each intra-op thread on
its share of the tensor, and MKL 2024.2 (the one in torch's CPU wheels, 2.13.0 included) chooses each VML function's
kernel on that function's first call. When the first call runs on several threads at once, a thread can run a
low-accuracy kernel for its whole share of that one call (pytorch/pytorch#188792). Here it hit the first forward of a
fresh process: Gemma's rotary `cos` on the second thread's half, errors up to 1.5e-4, about one process in ten, other
samples for the same seed (docs/engine.md, "Randomness").
"""

from __future__ import annotations

import os
import platform
from functools import lru_cache

# the torch functions that ATen may hand to MKL VML for float32 and float64 tensors (aten/src/ATen/cpu/vml.h); a name
# that ATen computes itself costs one tiny call and nothing else
VECTOR_MATH = ("abs", "acos", "asin", "atan", "ceil", "cos", "cosh", "erf", "erfc", "erfinv", "exp", "expm1", "floor",
               "lgamma", "log", "log10", "log1p", "log2", "reciprocal", "round", "rsqrt", "sigmoid", "sin", "sinh",
               "sqrt", "tan", "tanh", "trunc")


@lru_cache(maxsize=1)
def warm_vector_math() -> tuple[str, ...]:
    """Call each of `VECTOR_MATH` once on a one-element float32 and float64 tensor, on this thread alone, so MKL has
    chosen its kernels before any call that runs on several threads; returns the names called (none when the
    environment sets BACO_VML_WARMUP=0, a switch for measuring the race: `benchmarks/first_call_race.py`).
    Once per process; about a millisecond."""
    if os.environ.get("BACO_VML_WARMUP", "1").strip() == "0":
        return ()
    import torch

    for name in VECTOR_MATH:
        for dtype in (torch.float32, torch.float64):
            getattr(torch, name)(torch.full((1,), 0.5, dtype=dtype))  # 0.5: inside every function's domain
    return VECTOR_MATH


def numerics(device=None) -> dict:
    """{torch, transformers, threads, cpu[, gpu]} of this process, `gpu` when `device` is a CUDA device (or, with
    no device given, when one is visible)."""
    import torch
    import transformers

    record = {"torch": torch.__version__, "transformers": transformers.__version__,
              "threads": torch.get_num_threads(), "cpu": cpu_name()}
    device = torch.device(device) if device is not None else None
    if (device is None or device.type == "cuda") and torch.cuda.is_available():
        record["gpu"] = torch.cuda.get_device_name(device)
    return record


@lru_cache(maxsize=1)
def cpu_name() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), else what `platform` says of the machine."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
