"""The batch gauges of an ingress's `/metrics`, read from Redis at scrape time.

Nobody pushes them: each scrape reads the active batches (`BatchStore.active`) and the
providers' batch streams and retry sets, bounded by `limits.redis_timeout_s` like the
queue gauges. Finished batches leave the gauges (their figures are in the API and the
CLI); per-batch series are capped at `LISTED` batches so one scrape stays small whatever
the backlog.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import coredis
import trio
from prometheus_client import CollectorRegistry, Gauge

from ingress.batchstore import BatchStore
from schemas import names
from schemas.batch import ACTIVE
from schemas.metrics import QUEUE_SCRIPT
from workers.connection import RedisClient
from workers.logs import log_event

LISTED = 100
"""At most this many active batches get `switchboard_batch_lines` series: the oldest
(by created_at), which drain first; `switchboard_batches_unlisted` counts the others."""


class BatchGauges:
    """`switchboard_batches{status}`, `switchboard_batch_lines{batch,org,state}`,
    `switchboard_batches_unlisted`, `switchboard_batch_queue_depth{provider}`,
    `switchboard_batch_queue_pending{provider}`, `switchboard_batch_retry_waiting{provider}`
    and `switchboard_batch_read_ok`."""

    def __init__(self, registry: CollectorRegistry, redis: RedisClient,
                 providers: Sequence[str]) -> None:
        r = registry
        self.providers = list(providers)
        self.store = BatchStore(redis)
        self.redis = redis
        self._queues = redis.register_script(QUEUE_SCRIPT)
        self.batches = Gauge("switchboard_batches", "Batches not finished yet, by status "
                             "(validating, in_progress, finalizing, cancelling).", ["status"],
                             registry=r)
        self.lines = Gauge("switchboard_batch_lines", f"Lines of an unfinished batch by state "
                           f"(completed, failed, remaining); the {LISTED} oldest batches only.",
                           ["batch", "org", "state"], registry=r)
        self.unlisted = Gauge("switchboard_batches_unlisted", "Unfinished batches left out of "
                              f"switchboard_batch_lines (beyond the {LISTED} oldest).", registry=r)
        self.depth = Gauge("switchboard_batch_queue_depth", "Batch lines waiting in a "
                           "provider's batch stream (not yet delivered to a worker).",
                           ["provider"], registry=r)
        self.pending = Gauge("switchboard_batch_queue_pending", "Batch lines delivered to a "
                             "worker and not finished yet.", ["provider"], registry=r)
        self.retrying = Gauge("switchboard_batch_retry_waiting", "Batch lines waiting for "
                              "their retry after a retryable failure.", ["provider"], registry=r)
        self.ok = Gauge("switchboard_batch_read_ok", "1 if the last scrape read the batches "
                        "from Redis, 0 if it failed or took over redis_timeout_s.", registry=r)

    async def read(self, timeout_s: float) -> None:
        """Set every gauge from Redis now; on trouble keep the last values, `read_ok` 0."""
        try:
            with trio.fail_after(timeout_s):
                active = await self.store.active()
                rows: Any = []
                waiting: list[Any] = []
                if self.providers:
                    rows = await self._queues.execute(
                        keys=[names.batch_queue(p) for p in self.providers], args=[names.GROUP])
                    async with self.redis.pipeline(transaction=False) as pipe:
                        cards = [pipe.zcard(names.batch_retry(p)) for p in self.providers]
                    waiting = [await card for card in cards]
        except (trio.TooSlowError, coredis.exceptions.RedisError, OSError) as exc:
            log_event("metrics_batch_read_failed", error=type(exc).__name__)
            self.ok.set(0)
            return
        counts = dict.fromkeys(sorted(ACTIVE), 0)
        for state in active:
            counts[state.status] = counts.get(state.status, 0) + 1
        for status, count in counts.items():
            self.batches.labels(status).set(count)
        active.sort(key=lambda s: (s.record.created_at, s.record.id))
        self.lines.clear()  # finished batches leave the gauge
        for state in active[:LISTED]:
            labels = (state.record.id, state.org)
            self.lines.labels(*labels, "completed").set(state.completed)
            self.lines.labels(*labels, "failed").set(state.failed)
            self.lines.labels(*labels, "remaining").set(
                max(state.total - state.completed - state.failed, 0))
        self.unlisted.set(max(len(active) - LISTED, 0))
        for provider, (entries, pending), retry in zip(self.providers, rows, waiting,
                                                       strict=True):
            self.depth.labels(provider).set(max(int(entries) - int(pending), 0))
            self.pending.labels(provider).set(int(pending))
            self.retrying.labels(provider).set(int(retry))
        self.ok.set(1)
