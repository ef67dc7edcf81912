"""Prometheus metrics of an ingress process, served at `GET /metrics`.

One `CollectorRegistry` per Gateway (never the library's global one), so several
ingresses in one process count apart. Requests are counted where each one ends: the
request log (`Gateway._log`) for admitted requests, the refusal for refused ones.
Cost is counted in USD with every route at price 0 until the config has prices.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import coredis
import trio
from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from ingress.batchmetrics import BatchGauges
from schemas import names
from schemas.config import Config
from schemas.metrics import LATENCY_BUCKETS, QUEUE_SCRIPT, QueueGauges
from workers.connection import RedisClient
from workers.logs import log_event

__all__ = ["CONTENT_TYPE", "IngressMetrics"]

TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


class IngressMetrics:
    """What one ingress counts; `render()` reads the queues and returns the text format."""

    def __init__(self, config: Config, redis: RedisClient,
                 in_flight: Callable[[], int]) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("switchboard_requests", "Requests answered, by endpoint, model "
                                "slug, provider and HTTP status (refused ones included).",
                                ["endpoint", "model", "provider", "status"], registry=r)
        self.latency = Histogram("switchboard_request_duration_seconds", "From admission to "
                                 "the end of the answer (a stream's last event).",
                                 ["endpoint", "provider"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("switchboard_time_to_first_token_seconds", "Streams: from "
                              "admission to the first content relayed.", ["endpoint", "provider"],
                              buckets=TTFT_BUCKETS, registry=r)
        self.refused = Counter("switchboard_admissions_refused", "Requests admission refused, "
                               "by endpoint and reason (the error code).", ["endpoint", "reason"],
                               registry=r)
        self.tokens = Counter("switchboard_tokens", "Tokens metered, by model slug, provider "
                              "and type (prompt, completion).", ["model", "provider", "type"],
                              registry=r)
        self.cost = Counter("switchboard_cost_usd", "Cost in USD by model slug and provider "
                            "(always 0 here: workers meter and count the cost).",
                            ["model", "provider"], registry=r)
        in_flight_gauge = Gauge("switchboard_requests_in_flight", "Requests admitted or waiting "
                                "for their answer now.", registry=r)
        in_flight_gauge.set_function(in_flight)
        self.streams = Gauge("switchboard_streams_held", "Streamed answers being relayed now.",
                             registry=r)
        self.queues = QueueGauges(r, list(config.providers))
        self._read_queues = redis.register_script(QUEUE_SCRIPT)
        self.batches = BatchGauges(r, redis, list(config.providers))
        self._timeout_s = config.limits.redis_timeout_s

    def stream_began(self) -> float:
        """A stream's first content arrived: count it held; returns the time (monotonic)."""
        self.streams.inc()
        return time.monotonic()

    def finished(self, endpoint: str, model: str, provider: str, status: int, started: float,
                 first_at: float | None, prompt_tokens: int, completion_tokens: int) -> None:
        """Count one admitted request that ended (called once, from the request log)."""
        self.requests.labels(endpoint, model, provider, str(status)).inc()
        self.latency.labels(endpoint, provider).observe(time.monotonic() - started)
        if first_at is not None:
            self.streams.dec()
            self.ttft.labels(endpoint, provider).observe(first_at - started)
        self.tokens.labels(model, provider, "prompt").inc(prompt_tokens)
        self.tokens.labels(model, provider, "completion").inc(completion_tokens)
        # The Done frame carries no cost and the ingress cannot tell which route model of
        # a provider served: the worker that meters the request counts its cost.
        self.cost.labels(model, provider).inc(0.0)

    def refusal(self, endpoint: str, model: str, provider: str, reason: str) -> None:
        """Count one request admission refused (a 429 with `reason` as its code)."""
        self.refused.labels(endpoint, reason).inc()
        self.requests.labels(endpoint, model, provider, "429").inc()

    async def render(self) -> bytes:
        """The text format, with the queue and batch gauges read from Redis now (each
        read bounded by `redis_timeout_s`)."""
        if self.queues.providers:  # a script without keys would go to any node of a cluster
            try:
                with trio.fail_after(self._timeout_s):
                    rows = await self._read_queues.execute(keys=self.queues.keys(),
                                                           args=[names.GROUP])
            except (trio.TooSlowError, coredis.exceptions.RedisError, OSError) as exc:
                log_event("metrics_queue_read_failed", error=type(exc).__name__)
                self.queues.failed()
            else:
                self.queues.record(rows)
        await self.batches.read(self._timeout_s)
        return generate_latest(self.registry)
