"""Prometheus metrics of a worker process, and the queue gauges both sides expose.

Each process builds its own `CollectorRegistry` (never the library's global one), so
several ingresses and workers in one test process keep separate counts. The queue
gauges are read from Redis when scraped (one read-only script, bounded by
`redis_timeout_s`); a scrape whose read fails says so in `switchboard_queue_read_ok`.
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
from workers.logs import log_event

# Seconds: from a fast embedding to a long completion.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)

# KEYS: the providers' streams. ARGV[1]: the group. Per stream {entries, pending}.
_DEPTHS = """
local out = {}
for i = 1, #KEYS do
  local entries = redis.call('XLEN', KEYS[i])
  local pending = 0
  if entries > 0 then
    local ok, pend = pcall(redis.call, 'XPENDING', KEYS[i], ARGV[1])
    if ok then pending = pend[1] end
  end
  table.insert(out, {entries, pending})
end
return out
"""


class QueueGauges:
    """`switchboard_queue_depth` (jobs waiting for a worker) and `switchboard_queue_pending`
    (jobs a worker holds), per provider, read from Redis at scrape time."""

    def __init__(self, registry: CollectorRegistry, redis: coredis.Redis[bytes],
                 providers: Sequence[str], timeout_s: float) -> None:
        self.providers = list(providers)
        self.timeout_s = timeout_s
        self._read = redis.register_script(_DEPTHS)
        self.depth = Gauge("switchboard_queue_depth", "Jobs waiting in a provider's stream "
                           "(not yet delivered to a worker).", ["provider"], registry=registry)
        self.pending = Gauge("switchboard_queue_pending", "Jobs delivered to a worker and not "
                             "finished yet.", ["provider"], registry=registry)
        self.ok = Gauge("switchboard_queue_read_ok", "1 if the last scrape read the queues "
                        "from Redis, 0 if Redis did not answer within redis_timeout_s.",
                        registry=registry)

    async def refresh(self) -> None:
        """Read every provider's stream; on Redis trouble keep the last values, ok = 0."""
        if not self.providers:
            return
        try:
            with trio.fail_after(self.timeout_s):
                rows: Any = await self._read.execute(
                    keys=[names.queue(p) for p in self.providers], args=[names.GROUP])
        except (trio.TooSlowError, coredis.exceptions.RedisError, OSError) as exc:
            log_event("metrics_queue_read_failed", error=type(exc).__name__)
            self.ok.set(0)
            return
        for provider, (entries, pending) in zip(self.providers, rows, strict=True):
            self.depth.labels(provider).set(max(int(entries) - int(pending), 0))
            self.pending.labels(provider).set(int(pending))
        self.ok.set(1)


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


async def serve_metrics(registry: CollectorRegistry, queues: QueueGauges, host: str, port: int,
                        *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
                        ) -> None:
    """Serve `GET /metrics` (no authentication) until cancelled; `started(binds)`."""
    metrics_app = make_asgi_app(registry=registry)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/metrics":
            await queues.refresh()
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
    server.bind = [f"{host}:{port}"]
    server.accesslog = None
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(partial(serve, app, server))  # type: ignore[arg-type]
        log_event("worker_metrics", binds=binds)
        task_status.started(binds)
