"""Workers on Ray: connect to the cluster, start actors that each build their models once, and hand
them units of work, one at a time each, collecting what the units yield as it comes.

Fault tolerance is Ray's: every actor is created with `max_restarts` (a dead actor is started again
and rebuilds its models) and `max_task_retries` (the unit it was running is run again on the
restarted actor; Ray's streaming generators drop what the first attempt had already delivered).
Only when an actor is gone for good (its restarts spent, its node lost) does the pool give its
unfinished unit to another actor; when none is left it stops with a ClusterError. Whatever the
units yielded before is with the caller (the run directory's writer), so nothing finished is lost.
"""

from __future__ import annotations

import itertools
import logging
import os
import signal
import socket
import threading
import time
import warnings
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

from baco.cluster.options import ClusterError, RayOptions, require_ray
from baco.errors import BacoError
from baco.numerics import numerics


@contextmanager
def connected(options: RayOptions):
    """Ray, connected: to the session already open in this process, or to `options.address` (shut down after)."""
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    if options.address in (None, "auto"):
        _check_reachable(os.environ.get("RAY_ADDRESS"), "RAY_ADDRESS ")
    else:
        _check_reachable(options.address)
    try:
        # workers' own output stays in the cluster's log files (/tmp/ray/session_latest/logs on each node);
        # their errors come back here as exceptions
        with _sigterm_kept():
            ray.init(address=options.address, logging_level=logging.WARNING, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as error:
        if isinstance(error, ConnectionError) and options.address == "auto" and not os.environ.get("RAY_ADDRESS"):
            raise ClusterError("--ray auto found no Ray cluster (RAY_ADDRESS is unset and no `ray start` cluster "
                               "runs on this machine); start one (`ray start --head`), give its address "
                               "(--ray HOST:6379) or give --ray alone to start a local one") from None
        where = options.address or os.environ.get("RAY_ADDRESS") or "a new local cluster"
        raise ClusterError(f"cannot start or reach the Ray cluster ({where}): {error}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


@contextmanager
def _sigterm_kept():
    """Put back this process's own SIGTERM handler after `ray.init`, which replaces it with `sys.exit(15)`: the
    CLI's handler stops a command as Ctrl-C does (its finished samples kept, a line saying so, exit 143). Where
    none was set (the default action), Ray's stays: a script then exits as Ray makes it."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main else None
    try:
        yield
    finally:
        if callable(previous):
            signal.signal(signal.SIGTERM, previous)


def _check_reachable(address: str | None, named: str = "", timeout: float = 10.0) -> None:
    """A HOST:PORT address must accept a connection: at one that nothing answers Ray retries for minutes."""
    host, _, port = (address or "").rpartition(":")
    if not host or "://" in address or not port.isdigit():
        return  # none, `auto`, `ray://` (Ray's client checks it) or a form Ray names itself
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as error:
        why = "timed out" if isinstance(error, TimeoutError) else (error.strerror or str(error)).lower()
        raise ClusterError(f"no Ray cluster answers at {named}{address} ({why}); start one there "
                           f"(`ray start --head`) or give its address") from None


@dataclass
class UnitDone:
    """The last item a unit yields: what it made and where it ran."""

    made: int
    total: int | None  # samples of the unit's cell stored once it finished (what it skipped + made)
    seconds: float
    router_stats: dict | None
    worker: dict = field(default_factory=dict)
    numerics: dict = field(default_factory=dict)  # what the unit's rounding depended on (`baco.numerics`)


def where_am_i() -> dict:
    import ray

    with warnings.catch_warnings():  # Ray's property reads a deprecated attribute of its own
        warnings.simplefilter("ignore")
        restarted = bool(ray.get_runtime_context().was_current_actor_reconstructed)
    return {"host": socket.gethostname(), "pid": os.getpid(), "restarted": restarted}


class Worker:
    """A Ray actor's body: builds its state once (a model pair, or evaluation models) and runs units on it.

    A unit is any object with `run(state)`, a generator; the actor yields (item, seconds since the
    unit began) for each item and then one UnitDone.
    """

    def __init__(self, build: Callable[[], object]):
        self._build, self._state = build, None

    def load(self) -> dict:
        if self._state is None:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # a worker's output goes to log files: no bars there
            self._state = self._build()
        return where_am_i()

    def run(self, unit):
        self.load()
        began = time.perf_counter()
        for item in unit.run(self._state):
            yield item, time.perf_counter() - began
        yield UnitDone(getattr(unit, "made", 0), getattr(unit, "total", None), time.perf_counter() - began,
                       getattr(unit, "router_stats", None), where_am_i(),
                       numerics(getattr(getattr(self._state, "pair", None), "device", None)))


_SERIAL = itertools.count()
RESENDS = 3  # times a unit that came back short goes out again (each time for what it still lacks)


def _short(unit, done: UnitDone | None) -> bool:
    """Whether the caller holds fewer of the unit's items than its worker says the unit made.

    Ray reruns the unit of a worker that died and drops as many of the rerun's items as the first
    attempt had delivered: the first ones, whatever they are. A rerun that yields in another order
    (`batch_size: auto` sized on the restarted worker's free memory, GPU kernels that round
    otherwise) so loses items the first attempt never delivered.
    """
    return (done is not None and done.total is not None and isinstance(getattr(unit, "skip", None), set)
            and len(unit.skip) < done.total)


class WorkerPool:
    """`count` actors of Worker(build), each with its share of the cluster; `run(units)` spreads units over them."""

    def __init__(self, ray, build: Callable[[], object], options: RayOptions, count: int, kind: str):
        self.ray = ray
        cluster = ray.cluster_resources()
        serial = next(_SERIAL)
        actor = ray.remote(Worker)
        self.actors = [actor.options(num_gpus=options.gpus(cluster), num_cpus=options.cpus_per_worker,
                                     max_restarts=options.max_restarts, max_task_retries=options.max_task_retries,
                                     name=f"baco-{kind}-{serial}-{i}").remote(build) for i in range(count)]
        try:
            self.where = self._get([a.load.remote() for a in self.actors], "loading its models")
        except ray.exceptions.RayActorError as error:  # died while loading, again after each restart
            self.close()
            raise ClusterError(f"a Ray worker died while loading its models (out of memory?): {error}") from None
        except BaseException:
            self.close()
            raise

    def _get(self, refs, doing: str):
        """ray.get, with a worker's own error (a BacoError) raised as itself, and Ray's errors in one line."""
        ray = self.ray
        try:
            return ray.get(refs)
        except ray.exceptions.RayTaskError as error:
            cause = getattr(error, "cause", None)
            if isinstance(cause, BacoError):
                raise cause from None
            raise ClusterError(f"a Ray worker failed while {doing}: {type(cause).__name__}: {cause}") from error

    def run(self, units: list) -> Iterator[tuple[object, object]]:
        """(unit, item) for every item a unit yields, as it comes, then one (unit, UnitDone) per unit.

        The caller adds what it got to `unit.skip` (where a unit has one): a unit that goes out again
        makes only the rest. A unit's UnitDone is handed on once, when the unit will not go out again
        (the one of its last run): a caller that logs each finished unit (the sweep's `cells.jsonl`)
        so logs it once, even when a unit came back short and was sent again.
        """
        ray = self.ray
        queue, idle, busy, resent = deque(units), list(self.actors), {}, {}
        while queue or busy:
            while queue and idle:
                actor, unit = idle.pop(), queue.popleft()
                busy[actor.run.remote(unit)] = (actor, unit, None)
            ready, _ = ray.wait(list(busy), num_returns=1)
            for stream in ready:
                actor, unit, done = busy[stream]
                try:
                    item = self._get(next(stream), "running a unit")
                except StopIteration:
                    del busy[stream]
                    idle.append(actor)
                    if _short(unit, done) and resent.get(id(unit), 0) < RESENDS:
                        resent[id(unit)] = resent.get(id(unit), 0) + 1
                        queue.append(unit)
                    elif done is not None:
                        yield unit, done
                    continue
                except ray.exceptions.RayActorError as error:
                    # gone for good (restarts spent, node lost): its unit goes to another worker, unless
                    # it had ended (its UnitDone came) with every item delivered, and only its end was lost
                    del busy[stream]
                    self.actors.remove(actor)
                    if done is None or _short(unit, done):
                        queue.appendleft(unit)
                    else:
                        yield unit, done
                    if not self.actors and queue:
                        raise ClusterError(f"every Ray worker died (the last: {error}); finished results are "
                                           f"kept; run the same command again to complete them") from None
                    continue
                if isinstance(item, UnitDone):
                    busy[stream] = (actor, unit, item)  # handed on when the unit ends for good
                    continue
                yield unit, item

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor, no_restart=True)

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
