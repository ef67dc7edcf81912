"""A batch line's outcome as the finish script writes it (`workers.queue.Queue.finish`).

A line ends once, in the same script that acknowledges its stream entry, under the same
ownership guard, in one of these ways (`LineOutcome.mode`):

    line   a line of the output file (a 2xx answer: `completed` +1) or of the error file
           (any other HTTP answer, ours or the provider's: `failed` +1; or, `counter` "",
           a line that expired unrun: counted in neither), written with HSETNX keyed by
           the line's index, the counters moved only when that write was the first
    retry  a retryable failure: the line waits in `names.batch_retry` until it is due,
           still counted in `queued`
    drop   its batch is cancelling or cancelled: no line, `queued` -1

Pure functions only: the runner decides, the script does it.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Literal

import msgspec

from schemas import names
from schemas.batch import LINE_PREFIX, LineError, LineResponse, OutputLine
from schemas.config import Config
from schemas.envelopes import Done, Error, Job, job_encoder
from schemas.errors import GatewayError

LineMode = Literal["line", "retry", "drop"]
EXPIRED = LineError(code="batch_expired",
                    message="This request could not be executed before the completion window "
                            "expired.")
_encode = msgspec.json.Encoder().encode


@dataclass(frozen=True, slots=True)
class LineOutcome:
    """What the finish script does with a batch line (see the module's docstring)."""

    mode: LineMode
    key: str = ""  # the output or error hash (line), the retry set (retry); "" for drop
    payload: bytes = b""  # the file line's JSON (line), the job to run again (retry)
    counter: str = ""  # "completed", "failed" or "" (line only)
    due: float = 0.0  # unix time the retry is due
    keep_s: int = 0  # how long the output or error hash is kept (retention)


def line_id(job: Job) -> str:
    """The output line's id: the same for every run of the same line."""
    digest = hashlib.blake2b(f"{job.batch}:{job.batch_line}".encode(), digest_size=12)
    return LINE_PREFIX + digest.hexdigest()


def answered(job: Job, status: int, body: bytes, keep_s: int) -> LineOutcome:
    """An HTTP answer: the output file's line when 2xx, else the error file's."""
    text = _encode(OutputLine(id=line_id(job), custom_id=job.custom_id, error=None,
                              response=LineResponse(status_code=status,
                                                    request_id=job.request_id,
                                                    body=msgspec.Raw(body))))
    ok = 200 <= status < 300
    return LineOutcome("line", names.batch_output(job.batch) if ok else names.batch_errors(job.batch),
                       text, "completed" if ok else "failed", keep_s=keep_s)


def not_answered(job: Job, error: LineError, keep_s: int, counter: str = "") -> LineOutcome:
    """A failure that is no HTTP answer (`batch_expired`, ...): the error file's line."""
    return LineOutcome("line", names.batch_errors(job.batch), error_line(job, error), counter,
                       keep_s=keep_s)


def error_line(job: Job, error: LineError) -> bytes:
    return _encode(OutputLine(id=line_id(job), custom_id=job.custom_id, response=None,
                              error=error))


def retry_delay(config: Config, attempt: int, retry_after: float | None) -> float:
    """Seconds before a line that failed retryably runs again: doubling from the base,
    capped, and never before the provider's own Retry-After."""
    batch = config.batch
    delay = min(batch.retry_base_s * 2 ** min(attempt, 30), batch.retry_max_s)
    return max(delay, retry_after or 0.0)


def after_failure(config: Config, job: Job, attempt: int, failure: GatewayError,
                  status: int, body: bytes) -> LineOutcome:
    """A line whose every route (and their retries) failed: a retryable failure waits for
    a retry on its first route, unless the retry would come after the batch's expiry;
    then, as any other failure, it is the error file's line (`status`, `body`: the error
    a direct call answers)."""
    keep = keep_seconds(config)
    if getattr(failure, "retryable", False):
        due = time.time() + retry_delay(config, attempt, failure.retry_after or None)
        if due < job.deadline:
            again = msgspec.structs.replace(job, route_index=0, attempt=attempt + 1)
            return LineOutcome("retry", names.batch_retry(job.routes[0].provider),
                               job_encoder.encode(again), due=due)
    return answered(job, status, body, keep)


def batch_line(config: Config, job: Job, attempt: int, outcome: Done | Error,
               failure: GatewayError | None) -> LineOutcome:
    """The finish of a batch line that ran: its answer, or what its failure leads to."""
    if isinstance(outcome, Done):
        return answered(job, 200, outcome.body, keep_seconds(config))
    if failure is None:  # the gateway's own failure (a crash): no retry
        return answered(job, outcome.status, outcome.body, keep_seconds(config))
    return after_failure(config, job, attempt, failure, outcome.status, outcome.body)


def keep_seconds(config: Config) -> int:
    return config.batch.retention_days * 86_400


def batch_cost(config: Config, job: Job, cost: int | None) -> int | None:
    """A batch line's cost: the route's price times its provider's `batch_price_factor`."""
    provider = config.providers.get(job.route.provider)
    if cost is None or not job.batch or provider is None:
        return cost
    return round(cost * provider.batch_price_factor)
