"""Prometheus metrics of a worker process, served on `--metrics-port`.

Each Runner builds its own `CollectorRegistry` (never the library's global one), so
several workers in one test process keep separate counts. The queue gauges of the
providers it serves are read from Redis when scraped (`schemas.metrics`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import coredis
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_asgi_app

from schemas import names
from schemas.metrics import LATENCY_BUCKETS, QUEUE_SCRIPT, QueueGauges
from workers.connection import RedisClient
from workers.logs import log_event


async def read_queues(script: Any, gauges: QueueGauges, timeout_s: float) -> None:
    """Update the queue gauges from Redis (bounded); on trouble they say `read_ok 0`."""
    if not gauges.providers:
        return
    try:
        with trio.fail_after(timeout_s):
            rows = await script.execute(keys=gauges.keys(), args=[names.GROUP])
    except (trio.TooSlowError, coredis.exceptions.RedisError, OSError) as exc:
        log_event("metrics_queue_read_failed", error=type(exc).__name__)
        gauges.failed()
    else:
        gauges.record(rows)


class WorkerMetrics:
    """What a worker counts: jobs and the upstream calls made for them, per provider."""

    def __init__(self, running: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.jobs = Counter("switchboard_jobs", "Job runs finished, by provider and outcome "
                            "(done, error, forwarded, cancelled).", ["provider", "outcome"],
                            registry=r)
        self.attempts = Counter("switchboard_upstream_attempts", "Upstream calls made.",
                                ["provider"], registry=r)
        self.retries = Counter("switchboard_upstream_retries", "Upstream calls repeated on the "
                               "same provider after a retryable failure.", ["provider"], registry=r)
        self.failovers = Counter("switchboard_upstream_failovers", "Jobs handed to their next "
                                 "route after this provider failed.", ["provider"], registry=r)
        self.errors = Counter("switchboard_upstream_errors", "Job runs that ended in an error, "
                              "by provider and HTTP status.", ["provider", "status"], registry=r)
        self.duration = Histogram("switchboard_job_duration_seconds", "Time a worker spent on "
                                  "one job run.", ["provider"], buckets=LATENCY_BUCKETS, registry=r)
        self.cost = Counter("switchboard_cost_usd", "Cost in USD of the requests this worker "
                            "metered, by model slug and provider (0 for unpriced routes).",
                            ["model", "provider"], registry=r)
        self.batch_lines = Counter("switchboard_batch_lines", "Batch lines this worker ended "
                                   "or put back, by provider and outcome (completed, failed, "
                                   "retried, dropped).", ["provider", "outcome"], registry=r)
        running_gauge = Gauge("switchboard_jobs_running", "Jobs this worker runs now.",
                              registry=r)
        running_gauge.set_function(running)

    def job_finished(self, provider: str, outcome: str, status: int, seconds: float,
                     tries: int) -> None:
        """Count one job run (called once, beside the job's log line)."""
        self.jobs.labels(provider, outcome).inc()
        self.duration.labels(provider).observe(seconds)
        if tries:
            self.attempts.labels(provider).inc(tries)
            self.retries.labels(provider).inc(tries - 1)
        if outcome == "forwarded":
            self.failovers.labels(provider).inc()
        elif outcome == "error":
            self.errors.labels(provider, str(status)).inc()

    def batch_line(self, provider: str, outcome: str) -> None:
        """Count one batch line's outcome, once, where the finish script wrote it:
        `completed` (a 2xx, in the output file), `failed` (in the error file), `retried`
        (a retryable failure, back in the provider's retry set), `dropped` (its batch was
        cancelling when it was picked up: no upstream call) or `expired` (its batch's
        window had passed when it was picked up: a `batch_expired` error line)."""
        self.batch_lines.labels(provider, outcome).inc()


async def serve_metrics(registry: CollectorRegistry, redis: RedisClient,
                        providers: Sequence[str], timeout_s: float, bind: tuple[str, int], *,
                        task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
                        ) -> None:
    """Serve `GET /metrics` (no authentication) on `bind` = (host, port) until cancelled,
    with the queue gauges of `providers`; `started(binds)`."""
    metrics_app = make_asgi_app(registry=registry)
    gauges = QueueGauges(registry, providers)
    script = redis.register_script(QUEUE_SCRIPT)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/metrics":
            await read_queues(script, gauges, timeout_s)
            await metrics_app(scope, receive, send)
            return
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 404,
                        "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"only /metrics is served here\n"})
        elif scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})

    server = HypercornConfig()
    server.bind = [f"{bind[0]}:{bind[1]}"]
    server.accesslog = None
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(partial(serve, app, server))  # type: ignore[arg-type]
        log_event("worker_metrics", binds=binds)
        task_status.started(binds)
