"""How baco uses a Ray cluster: where it is, how many workers, what each holds. Imports no Ray.

A worker is one Ray actor holding one model pair (or the evaluation models), loaded once. By
default there is one worker per GPU of the cluster (`gpus_per_worker=1`), or, on a cluster
without GPUs, one CPU worker per `cpus_per_worker` CPUs. Ray restarts a worker that dies (up to
`max_restarts` times, reloading its models) and runs the unit it was working on again on the
restarted worker (up to `max_task_retries` times).
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass

from baco.errors import BacoError


class ClusterError(BacoError):
    """Ray is missing, the cluster cannot be reached or cannot hold the workers asked for, or every worker died."""


def require_ray():
    """The `ray` module, or a clear error naming the extra to install."""
    if importlib.util.find_spec("ray") is None:
        raise ClusterError("--ray needs Ray on this machine and on every node of the cluster: "
                           "pip install 'ray>=2.40' (baco's `ray` extra)")
    import ray

    return ray


def _check(value, name: str, *, minimum: float, integer: bool = False, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    kind = int if integer else (int, float)
    if (not isinstance(value, kind) or isinstance(value, bool) or not math.isfinite(value)
            or value < minimum):
        what = "an integer" if integer else "a number"
        raise ClusterError(f"{name} must be {what} >= {minimum:g}, got {value!r}")


@dataclass(frozen=True)
class RayOptions:
    """Where the cluster is and how baco's workers use it (validated here, before Ray starts)."""

    # "HOST:6379", "ray://HOST:10001"; "auto": RAY_ADDRESS or the cluster `ray start` made on this machine;
    # None: the same, else a new local Ray
    address: str | None = None
    workers: int | None = None  # None: as many as the cluster's GPUs (or CPUs) hold
    gpus_per_worker: float | None = None  # None: 1 where the cluster has GPUs, else 0 (CPU workers)
    cpus_per_worker: float = 1.0
    max_restarts: int = 3  # times Ray restarts a worker that died (it reloads its models)
    max_task_retries: int = 3  # times Ray reruns a unit whose worker died, on the restarted worker
    shard_size: int | None = None  # prompts per unit of `baco generate --ray` (None: about 4 units per worker)

    def __post_init__(self):
        if self.address is not None and (not isinstance(self.address, str) or not self.address.strip()):
            raise ClusterError(f"the Ray address must be a non-empty string such as 'auto' or 'HOST:6379', "
                               f"got {self.address!r}")
        _check(self.workers, "--workers", minimum=1, integer=True)
        _check(self.gpus_per_worker, "--gpus-per-worker", minimum=0)
        _check(self.cpus_per_worker, "--cpus-per-worker", minimum=0, allow_none=False)
        _check(self.max_restarts, "max_restarts", minimum=-1, integer=True, allow_none=False)
        _check(self.max_task_retries, "max_task_retries", minimum=-1, integer=True, allow_none=False)
        _check(self.shard_size, "--shard-size", minimum=1, integer=True)

    def gpus(self, cluster: dict) -> float:
        """GPUs per worker: as asked, else one where the cluster has any."""
        if self.gpus_per_worker is not None:
            return self.gpus_per_worker
        return 1.0 if cluster.get("GPU", 0) >= 1 else 0.0

    def worker_count(self, cluster: dict) -> int:
        """Workers the cluster can hold at once (as asked, checked against its resources)."""
        gpus, cpus = self.gpus(cluster), self.cpus_per_worker
        room = min(int(cluster.get("GPU", 0) // gpus) if gpus else math.inf,
                   int(cluster.get("CPU", 0) // cpus) if cpus else math.inf)
        if room == math.inf:  # workers of no CPU and no GPU: Ray places any number (none asked: one)
            return self.workers or 1
        if self.workers is None:
            if room < 1:
                raise ClusterError(f"the Ray cluster ({_resources(cluster)}) cannot hold one worker of "
                                   f"{gpus:g} GPU and {cpus:g} CPU; lower --gpus-per-worker / --cpus-per-worker")
            return room
        if self.workers > room:
            raise ClusterError(f"--workers {self.workers} x ({gpus:g} GPU, {cpus:g} CPU) does not fit the Ray "
                               f"cluster ({_resources(cluster)}): at most {room} such workers")
        return self.workers


def _resources(cluster: dict) -> str:
    return f"{cluster.get('GPU', 0):g} GPUs, {cluster.get('CPU', 0):g} CPUs"
