"""What a sample's floating-point rounding depends on beyond its seed: recorded with each cell a sweep runs.

A seed fixes every draw, but the log-probs the draws read are float sums whose order changes with the library
versions, the CPU thread count and the device (docs/engine.md, "Randomness"): a cell resumed on another machine,
or with another `--threads`, may round differently. `cells.jsonl` keeps this record per cell run, so such a
difference can be told from a bug.
"""

from __future__ import annotations

import platform
from functools import lru_cache


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
