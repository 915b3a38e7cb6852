"""Prometheus metrics of one server (its own registry, so that several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("baco_requests", "HTTP requests answered, by route and status code",
                                ["route", "status"], registry=r)
        self.prompt_tokens = Counter("baco_prompt_tokens", "prompt tokens of accepted requests (the aligned "
                                     "model's rendering)", registry=r)
        self.completion_tokens = Counter("baco_completion_tokens", "tokens generated, by writer", ["writer"],
                                         registry=r)
        self.rows = Counter("baco_rows", "rows (choices) that left the batch, by outcome", ["outcome"], registry=r)
        self.running_rows = Gauge("baco_running_rows", "rows in a batch slot now", registry=r)
        self.queued_rows = Gauge("baco_queued_rows", "rows accepted and waiting for a slot", registry=r)
        self.batch_occupancy = Gauge("baco_batch_occupancy", "running rows / slots of the engines", registry=r)
        self.engines = Gauge("baco_engines", "engines (one per router in use)", registry=r)
        self.step_seconds = Histogram("baco_step_seconds", "time of one engine step", buckets=SECONDS, registry=r)
        self.time_to_first_token = Histogram("baco_time_to_first_token_seconds", "from a request's acceptance to "
                                             "its first token", buckets=SECONDS, registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
