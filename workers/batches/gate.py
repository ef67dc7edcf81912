"""Whether a batch line picked up from a batch stream may start.

Checked just before the upstream call of every run: a line of a batch that is being
cancelled (or has ended) is acknowledged without one, which is what stops a cancelled
batch's lines within a moment of `cancelling`; a line whose batch's window has passed
becomes its `batch_expired` line of the error file.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import coredis
import trio

from schemas import names
from schemas.config import Config
from schemas.envelopes import Job
from workers.batches.lines import EXPIRED, LineOutcome, keep_seconds, not_answered
from workers.connection import RedisClient
from workers.logs import log_event

if TYPE_CHECKING:  # workers.queue imports workers.batches.lines
    from workers.queue import Delivery, Queue

RUNNABLE = frozenset({b"in_progress", b"validating", b"finalizing"})


async def line_gate(redis: RedisClient, config: Config, job: Job) -> LineOutcome | None:
    """None: run it. Else how to end it without an upstream call."""
    status = await redis.hget(names.batch(job.batch), "status")
    if status == b"expired" or (status in RUNNABLE and time.time() >= job.deadline):
        return not_answered(job, EXPIRED, keep_seconds(config))
    if status not in RUNNABLE:  # cancelling, cancelled, or a batch that is gone
        return LineOutcome("drop")
    return None


async def batch_open(queue: Queue, config: Config, delivery: Delivery,
                     ended: Callable[[str], None] | None = None) -> bool:
    """Whether a batch line may start (the runner asks before its upstream call). One that
    may not is ended here, acknowledged in the finish script, and `ended` is told how
    ("dropped": its batch is cancelling or gone; "expired"); one whose batch Redis cannot
    tell stays pending, and is run again later."""
    job = delivery.job
    try:
        with trio.fail_after(config.limits.redis_timeout_s):
            skip = await line_gate(queue.redis, config, job)
            if skip is not None:
                if await queue.finish(delivery, None, line=skip) and ended is not None:
                    ended("dropped" if skip.mode == "drop" else "expired")
                log_event("batch_line_skipped", request_id=job.request_id, batch=job.batch,
                          mode=skip.mode)
            return skip is None
    except (trio.TooSlowError, coredis.exceptions.RedisError, OSError) as exc:
        log_event("batch_gate_failed", request_id=job.request_id, error=type(exc).__name__)
        return False


def still_open(queue: Queue, config: Config, job: Job) -> Callable[[], Awaitable[bool]]:
    """The check a batch line's wait for its provider's pace asks now and then: whether
    its batch still runs (when Redis cannot tell within redis_timeout_s: go on waiting)."""
    async def check() -> bool:
        with trio.move_on_after(config.limits.redis_timeout_s):
            try:
                return await line_gate(queue.redis, config, job) is None
            except (coredis.exceptions.RedisError, OSError):
                pass
        return True
    return check
