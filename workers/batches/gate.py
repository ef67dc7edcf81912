"""Whether a batch line picked up from a batch stream may start.

Checked just before the upstream call of every run: a line of a batch that is being
cancelled (or has ended) is acknowledged without one, which is what stops a cancelled
batch's lines within a moment of `cancelling`; a line whose batch's window has passed
becomes its `batch_expired` line of the error file.
"""

from __future__ import annotations

import time

import coredis

from schemas import names
from schemas.config import Config
from schemas.envelopes import Job
from workers.batches.lines import EXPIRED, LineOutcome, keep_seconds, not_answered

RUNNABLE = frozenset({b"in_progress", b"validating", b"finalizing"})


async def line_gate(redis: coredis.Redis[bytes], config: Config, job: Job) -> LineOutcome | None:
    """None: run it. Else how to end it without an upstream call."""
    status = await redis.hget(names.batch(job.batch), "status")
    if status == b"expired" or (status in RUNNABLE and time.time() >= job.deadline):
        return not_answered(job, EXPIRED, keep_seconds(config))
    if status not in RUNNABLE:  # cancelling, cancelled, or a batch that is gone
        return LineOutcome("drop")
    return None
