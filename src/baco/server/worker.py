"""The stepping thread: it owns the engines, steps them, and hands each request's tokens to its queue.

    HTTP handlers (asyncio) --submit/cancel--> inbox --> stepping thread: engine.add / engine.abort
                                                          loop: engine.step() for each engine with work
    asyncio queue per request <--call_soon_threadsafe-- tokens, finish reasons (one batch per step)

Requests join an engine's batch at a step boundary and leave it as soon as they finish; a cancelled
request (client gone) is aborted before the next step. One engine runs one router, so requests with
different routers are grouped: one engine per router, created on first use, at most `max_engines`
of them (the least recently used idle engine makes room; while a router waits for one, the least recently used
engine takes no new rows, so that it idles; all engines share the loaded models).
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

import torch

from baco.decode.engine import Engine, check_lockstep_pair
from baco.decode.loop import Request, StepEvent
from baco.decode.sampling import SamplingParams
from baco.defaults import PREFILL_TOKENS
from baco.errors import CapacityError
from baco.routers import get_router
from baco.decode.choice import ChoiceText, Token

log = logging.getLogger("baco.server")

TOP_LOGPROBS = 20  # the most alternatives a request may ask for (OpenAI's limit)
FLOOR = -1e4  # log-probs below this (masked tokens) are reported as this: JSON has no -inf


class QueueFull(Exception):
    """More rows wait than the server accepts (HTTP 429)."""


@dataclass(eq=False)
class Job:
    """One HTTP request: its rows (one per choice) and where their tokens go.

    `deliver` is called from the stepping thread with a list of messages, in order:
    ("tokens", choice, [Token, ...]), ("finish", choice, "stop" | "length"), then on failure ("error", None,
    message) or ("capacity", None, message) (the device has no room for it now: the server answers 503).
    """

    requests: list[Request]
    params: SamplingParams
    router: str  # a validated router name
    stop_strings: tuple[str, ...]  # the prompt format's and the request's own
    deliver: Callable[[list], None]
    top_logprobs: int = 0  # alternatives per token (0: none)
    submitted: float = field(default_factory=time.perf_counter)
    unplaced: int = -1  # rows not in an engine yet (set by submit)


@dataclass(eq=False)
class _Row:
    job: Job
    choice: int
    text: ChoiceText
    first: bool = True


class Worker(threading.Thread):
    """See the module docstring. `submit` and `cancel` may be called from any thread."""

    def __init__(self, pair, *, stop_strings: tuple[str, ...], max_batch: int, max_len: int, max_queue: int,
                 max_engines: int, metrics, prefill_tokens: int = PREFILL_TOKENS):
        check_lockstep_pair(pair)  # the app (create_app) is refused, not each of its requests
        super().__init__(name="baco-stepper", daemon=True)
        self.pair, self.stop_strings = pair, tuple(stop_strings)
        self.max_batch, self.max_len, self.max_queue, self.max_engines = max_batch, max_len, max_queue, max_engines
        self.metrics, self.prefill_tokens = metrics, prefill_tokens
        self.tokenizer = pair.aligned.tokenizer
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.engines: OrderedDict[str, Engine] = OrderedDict()
        self.rows: dict[tuple[str, int], _Row] = {}
        self.pending: list[Job] = []  # jobs whose router has no engine yet (all engines busy)
        self.outstanding = 0  # rows submitted and not finished (guarded by `lock`)
        self.lock = threading.Lock()
        self.closed = False

    # ---- any thread ---------------------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        """Queue a job's rows, or raise QueueFull when more than `max_queue` rows would wait for a slot."""
        with self.lock:
            if self.outstanding + len(job.requests) > self.max_batch + self.max_queue:
                raise QueueFull(f"the server has {self.outstanding} rows running or waiting, at most "
                                f"{self.max_batch + self.max_queue}; retry later")
            self.outstanding += len(job.requests)
        job.unplaced = len(job.requests)
        self.inbox.put(("submit", job))

    def cancel(self, job: Job) -> None:
        """The client is gone: its rows leave their batch before the next step."""
        self.inbox.put(("cancel", job))

    def close(self) -> None:
        self.inbox.put(("close", None))
        self.join(timeout=30)

    # ---- the stepping thread ------------------------------------------------------------------------
    def run(self) -> None:
        while not self.closed:
            busy = [key for key, engine in self.engines.items() if engine.has_work]
            self._drain(block=not busy and not self.pending)
            self._place_pending()
            for key in [key for key, engine in self.engines.items() if engine.has_work]:
                self._step(key)
            self._gauges()

    def _drain(self, *, block: bool) -> None:
        while True:
            try:
                kind, job = self.inbox.get(timeout=None) if block else self.inbox.get_nowait()
            except queue.Empty:
                return
            block = False
            if kind == "submit":
                self.pending.append(job)
            elif kind == "cancel":
                self._cancel(job)
            else:
                self.closed = True
                return

    def _place_pending(self) -> None:
        waiting = []
        draining = None  # while a job waits for an engine, the least recently used one takes no new rows: it idles
        for job in self.pending:
            try:
                if job.router == draining:
                    waiting.append(job)
                    continue
                engine = self._engine_for(job.router)
                if engine is None:
                    waiting.append(job)  # every engine is busy with another router: wait for one to idle
                    draining = draining or next(iter(self.engines))
                    continue
                for choice, request in enumerate(job.requests):
                    rid = engine.add(request, job.params, top_logprobs=job.top_logprobs > 0)
                    text = ChoiceText(self.tokenizer, self.pair.vocab.stop_ids, job.stop_strings, job.params.min_tokens)
                    self.rows[(job.router, rid)] = _Row(job, choice, text)
                    job.unplaced -= 1
            except (CapacityError, torch.OutOfMemoryError) as error:  # no room now: the client may retry later
                log.warning("a request for router %s does not fit: %s", job.router, error)
                self._fail_job(job, str(error), kind="capacity")
            except Exception as error:  # noqa: BLE001 - e.g. a router whose model fails to load
                log.exception("a request for router %s could not start", job.router)
                self._fail_job(job, f"{type(error).__name__}: {error}")
        self.pending = waiting

    def _engine_for(self, router: str) -> Engine | None:
        if router in self.engines:
            self.engines.move_to_end(router)
            return self.engines[router]
        if len(self.engines) >= self.max_engines:
            busy = {key for key, _ in self.rows}
            idle = next((key for key, engine in self.engines.items() if key not in busy and not engine.has_work), None)
            if idle is None:
                return None
            del self.engines[idle]
        engine = Engine(self.pair, get_router(router), max_batch=self.max_batch, max_len=self.max_len,
                        stop_strings=self.stop_strings, top_logprobs=TOP_LOGPROBS, prefill_tokens=self.prefill_tokens)
        self.engines[router] = engine
        return engine

    def _step(self, key: str) -> None:
        engine = self.engines[key]
        started = time.perf_counter()
        try:
            event = engine.step()
            self.metrics.step_seconds.observe(time.perf_counter() - started)
            if event is not None:
                self._dispatch(key, engine, event)
        except torch.OutOfMemoryError as error:  # the device is full: its requests may fit later (503)
            log.warning("engine for router %s ran out of device memory: %s", key, error)
            self._fail_engine(key, f"the device ran out of memory during a step of router {key}'s engine; its "
                                   f"requests were stopped and the engine dropped ({error})", kind="capacity")
        except Exception as error:  # noqa: BLE001 - one failed engine must not take the server down
            log.exception("engine for router %s failed", key)
            self._fail_engine(key, f"{type(error).__name__}: {error}")

    def _dispatch(self, key: str, engine: Engine, event: StepEvent) -> None:
        """Hand each row's step to its job. A row that cannot be read fails its own job only: the other rows of
        the step, whoever's they are, go on as if it had not been there."""
        out: dict[Job, list] = {}
        probs = event.chosen_prob.tolist()
        for i, rid in enumerate(event.rows):
            row = self.rows.get((key, rid))
            if row is None:
                continue  # aborted, or its job failed earlier in this step
            try:
                messages, finish = self._read(engine, event, i, rid, row, probs[i])
            except Exception as error:  # noqa: BLE001 - e.g. a token its tokenizer cannot decode
                log.exception("reading a row of router %s failed", key)
                out.pop(row.job, None)  # it hears of the failure, not of this step's tokens
                self._fail_job(row.job, f"{type(error).__name__}: {error}")
                continue
            out.setdefault(row.job, []).extend(messages)
            if finish is not None:
                self._retire(key, rid, finish)
        for job, messages in out.items():
            self._deliver(job, messages)

    def _read(self, engine: Engine, event: StepEvent, i: int, rid: int, row: _Row, prob: float):
        """(messages, finish reason or None) of row `i` of `event`: its token's content and whether it finished."""
        job = row.job
        finish = event.finished.get(rid)
        token = Token(int(event.tokens[i]), "", "mix" if event.mixed else "base" if bool(event.use_base[i])
                      else "aligned", event.reasons[i], float(event.base_top1_prob[i]),
                      max(math.log(max(prob, 1e-300)), FLOOR))
        if job.top_logprobs and event.top_ids is not None:
            best = [(int(t), max(float(v), FLOOR)) for t, v in zip(event.top_ids[i], event.top_logprobs[i])]
            token.top = best[:job.top_logprobs]
            # the chosen token's own entry, where it has one, is its log-prob: the two agree to the bit, as in
            # OpenAI's API (log(chosen_prob) rounds through a float32 probability, ~1e-7 away)
            token.logprob = next((value for top_id, value in best if top_id == token.token_id), token.logprob)
        if row.first:
            self.metrics.time_to_first_token.observe(time.perf_counter() - job.submitted)
            row.first = False
        self.metrics.completion_tokens.labels(writer=token.writer).inc()
        if row.text.add(token, last=finish is not None):  # a stop string of this request's own
            if finish is None:
                engine.abort(rid)  # the row leaves now
            finish = "stop"  # also where its last allowed token completed it ("length" to the engine)
        messages = []
        released = row.text.release(final=finish is not None)
        if released:
            messages.append(("tokens", row.choice, released))
        if finish is not None:
            messages.append(("finish", row.choice, finish))
        return messages, finish

    def _retire(self, key: str, rid: int, outcome: str) -> None:
        del self.rows[(key, rid)]
        with self.lock:
            self.outstanding -= 1
        self.metrics.rows.labels(outcome=outcome).inc()

    def _cancel(self, job: Job, outcome: str = "cancelled") -> None:
        """Drop a job's rows: those in a batch leave it before the next step, the others are forgotten."""
        for (key, rid), row in list(self.rows.items()):
            if row.job is job:
                self.engines[key].abort(rid)
                self._retire(key, rid, outcome)
        if job in self.pending:
            self.pending.remove(job)
        if job.unplaced > 0:
            with self.lock:
                self.outstanding -= job.unplaced
            self.metrics.rows.labels(outcome=outcome).inc(job.unplaced)
            job.unplaced = 0

    def _fail_engine(self, key: str, message: str, kind: str = "error") -> None:
        """An engine failed: its rows leave, it is dropped, and each of its jobs hears why (`kind`: "error", or
        "capacity" where the device ran out of memory)."""
        failed = {}
        for (row_key, rid), row in list(self.rows.items()):
            if row_key == key:
                failed[row.job] = True
                self._retire(key, rid, kind)
        del self.engines[key]  # before telling the clients: by the time they hear of it, the engine is gone
        for job in failed:
            self._deliver(job, [(kind, None, message)])

    def _fail_job(self, job: Job, message: str, kind: str = "error") -> None:
        """One job failed: its rows leave, and it hears why if it still listens (its own failure may have been
        that it does not). `kind`: "error", or "capacity" where the device had no room for it."""
        self._cancel(job, outcome=kind)
        try:
            job.deliver([(kind, None, message)])
        except Exception:  # noqa: BLE001 - nobody left to tell
            log.debug("a failed request could not be told why", exc_info=True)

    def _deliver(self, job: Job, messages: list) -> None:
        """Hand messages to a job; a job that cannot take them fails alone, never the stepping thread."""
        try:
            job.deliver(messages)
        except RuntimeError:  # the event loop is gone (the server is shutting down)
            self._cancel(job)
        except Exception as error:  # noqa: BLE001 - its consumer failed (a bug on the HTTP side)
            log.exception("delivering to a request failed")
            self._fail_job(job, f"{type(error).__name__}: {error}")

    def _gauges(self) -> None:
        running = sum(len(engine.live) for engine in self.engines.values())
        slots = self.max_batch * max(1, len(self.engines))
        self.metrics.running_rows.set(running)
        self.metrics.queued_rows.set(self.outstanding - running)
        self.metrics.batch_occupancy.set(running / slots)
        self.metrics.engines.set(len(self.engines))
