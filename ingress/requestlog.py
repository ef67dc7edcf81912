"""The request log: written off the request path, read newest first.

Each ingress has one `RequestLog`. A request that ends hands its record to `record`,
which never waits: it puts the record in a bounded buffer, or drops and counts it when
the buffer is full (Redis slow or away). One task (`serve`, in the server's nursery)
takes everything buffered and writes it in one script call per org and flush: an `XADD`
per record to its org's stream (`names.request_log`), then an exact `XTRIM MINID` to the
retention window and an `EXPIRE`, so an org that stops sending leaves nothing behind.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Iterable

import coredis
import msgspec
import trio
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from ingress.keys import Identity
from schemas import names
from schemas.envelopes import Job
from schemas.errors import ErrorBody
from schemas.pricing import MICRO_USD, Prices
from schemas.requestlog import (
    MAX_SCAN,
    RequestPage,
    RequestRecord,
    RequestsQuery,
    iso_time,
    record_decoder,
    record_encoder,
)
from workers.connection import RedisClient
from workers.logs import log_event

_error_decoder = msgspec.json.Decoder(ErrorBody)
BATCH_MAX = 500  # records per flush: a bigger backlog is written in several flushes
COLLECT_S = 0.05  # after a first record, wait this long for more: fewer, bigger writes
# One org's records in one call: append each, trim to the retention window, keep the
# stream only while it is written to. One script call costs the ingress a few
# microseconds per record where a pipelined XADD each cost ~60 (the client's Python).
_WRITE = """
for i = 3, #ARGV do redis.call('XADD', KEYS[1], '*', 'r', ARGV[i]) end
redis.call('XTRIM', KEYS[1], 'MINID', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return #ARGV - 2
"""
DAY_MS = 86_400_000


class RequestLog:
    """One ingress's buffer of records and the task that writes them."""

    def __init__(self, redis: RedisClient, *, retention_days: int, buffer: int,
                 timeout_s: float) -> None:
        self.redis = redis
        self.retention_ms = retention_days * DAY_MS
        self.timeout_s = timeout_s
        self._send, self._receive = trio.open_memory_channel[tuple[str, bytes]](buffer)
        self.written = 0
        self.dropped = 0  # records lost: the buffer was full, or Redis refused their flush
        self._overflowed = 0  # of those, dropped by a full buffer (logged after each flush)
        self._closing = False
        self._write = redis.register_script(_WRITE)

    def expose(self, registry: CollectorRegistry) -> None:
        """Count this log's records in the ingress's metrics (read at scrape time)."""
        registry.register(_Counts(self))

    def statistics(self) -> dict[str, int]:
        """Records written, dropped, and waiting in the buffer now."""
        return {"written": self.written, "dropped": self.dropped,
                "buffered": self._receive.statistics().current_buffer_used}

    def record(self, record: RequestRecord) -> None:
        """Keep a record for the writer; never waits (a full buffer drops it, counted)."""
        try:
            self._send.send_nowait((record.org, record_encoder.encode(record)))
        except (trio.WouldBlock, trio.ClosedResourceError):
            self.dropped += 1
            self._overflowed += 1

    def close(self) -> None:
        """No more records: the writer flushes what is buffered (once each), then returns."""
        self._closing = True
        self._send.close()

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write buffered records until `close`; started with `nursery.start`."""
        task_status.started()
        async with self._receive:
            while True:
                try:
                    batch = [await self._receive.receive()]
                except trio.EndOfChannel:
                    return
                if not self._closing:
                    await trio.sleep(COLLECT_S)
                while len(batch) < BATCH_MAX:
                    try:
                        batch.append(self._receive.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                flushed = await self._flush(batch)
                if self._overflowed:  # one line per flush, not one per dropped record
                    log_event("request_log_dropped", records=self._overflowed,
                              error="buffer_full")
                    self._overflowed = 0
                if not flushed and self._closing:
                    # Shutting down with Redis away: one failed flush is enough waiting.
                    self.dropped += self._receive.statistics().current_buffer_used
                    return

    async def _flush(self, batch: list[tuple[str, bytes]]) -> bool:
        """One script call per org in the batch, bounded by the Redis timeout; a failed
        flush is dropped and counted (retrying would let a backlog grow without bound)."""
        oldest = int(time.time() * 1000) - self.retention_ms
        by_org: dict[str, list[bytes]] = {}
        for org, payload in batch:
            by_org.setdefault(org, []).append(payload)
        with trio.move_on_after(self.timeout_s) as scope:
            try:
                for org, payloads in by_org.items():
                    await self._write(keys=[names.request_log(org)],
                                      args=[oldest, self.retention_ms, *payloads])
                self.written += len(batch)
                return True
            except (coredis.exceptions.RedisError, OSError) as exc:
                log_event("request_log_dropped", records=len(batch), error=type(exc).__name__)
        if scope.cancelled_caught:
            log_event("request_log_dropped", records=len(batch), error="timeout")
        self.dropped += len(batch)
        return False


class _Counts(Collector):
    """`switchboard_request_log_records_total{outcome="written"|"dropped"}`."""

    def __init__(self, log: RequestLog) -> None:
        self.log = log

    def collect(self) -> Iterable[CounterMetricFamily]:
        family = CounterMetricFamily("switchboard_request_log_records", "Request log records "
                                     "this ingress wrote to Redis, or dropped (its buffer was "
                                     "full, or Redis failed their flush).", labels=["outcome"])
        family.add_metric(["written"], self.log.written)
        family.add_metric(["dropped"], self.log.dropped)
        yield family


def _stream_id(entry_id: bytes | str) -> str:
    return entry_id.decode() if isinstance(entry_id, bytes) else entry_id


def _day_ms(day: datetime.date) -> int:
    return int(datetime.datetime(day.year, day.month, day.day, tzinfo=datetime.UTC).timestamp()
               * 1000)


async def read_log(redis: RedisClient, org: str, query: RequestsQuery,
                   retention_days: int, timeout_s: float = 30.0) -> RequestPage:
    """A page of the org's log, newest first, filtered; `next_cursor` when more may follow
    (a full page, or `MAX_SCAN` records read without filling it). Each read of up to a few
    thousand records has `timeout_s`."""
    key = names.request_log(org)
    newest = f"({query.cursor}" if query.cursor else "+"
    if query.to is not None:
        end = f"{_day_ms(query.to) + DAY_MS - 1}-18446744073709551615"
        newest = end if newest == "+" or _before(end, newest[1:]) else newest
    floor = int(time.time() * 1000) - retention_days * DAY_MS  # trimming lags a flush
    if query.from_ is not None:
        floor = max(floor, _day_ms(query.from_))
    found: list[RequestRecord] = []
    scanned, last = 0, ""
    while len(found) < query.limit and scanned < MAX_SCAN:
        count = min(max(query.limit * 2, 100), MAX_SCAN - scanned)
        with trio.fail_after(timeout_s):
            entries = await redis.xrevrange(key, newest, str(floor), count=count)
        for entry in entries:
            last = _stream_id(entry.identifier)
            scanned += 1
            record = _decode(entry.field_values.values())
            if record is not None and query.matches(record):
                found.append(record)
                if len(found) == query.limit:
                    return RequestPage(org=org, data=found, next_cursor=last)
        if len(entries) < count:
            return RequestPage(org=org, data=found)
        newest = f"({last}"
    return RequestPage(org=org, data=found, next_cursor=last or None)


def _before(a: str, b: str) -> bool:
    """Whether stream id `a` is older than `b`."""
    ams, _, aseq = a.partition("-")
    bms, _, bseq = b.partition("-")
    return (int(ams), int(aseq or 0)) < (int(bms), int(bseq or 0))


def _decode(values: Iterable[bytes | str]) -> RequestRecord | None:
    for value in values:  # one field, `r`
        raw = value if isinstance(value, bytes) else value.encode()
        try:
            return record_decoder.decode(raw)
        except msgspec.DecodeError:  # written by something else: skipped, never fatal
            log_event("request_log_undecodable", size=len(raw))
    return None


def job_record(job: Job, prices: Prices, *, provider: str, status: int, code: str,
               latency_s: float, ttft_s: float | None, prompt_tokens: int,
               completion_tokens: int) -> RequestRecord:
    """The record of an admitted request. Its cost is the price of the route that answered
    (the first of the job's routes on the provider the frame named), as the worker meters it."""
    route = next((r for r in job.routes if r.provider == provider), job.route)
    cost = prices.cost(job.model, route, prompt_tokens, completion_tokens)
    return RequestRecord(
        id=job.request_id, time=iso_time(time.time()), org=job.org, project=job.project,
        key_id=job.key_id, endpoint=job.endpoint, model=job.model, provider=provider,
        status=status, code=code, latency_ms=round(latency_s * 1000, 1),
        ttft_ms=None if ttft_s is None else round(ttft_s * 1000, 1),
        prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
        cost_usd=None if cost is None else cost / MICRO_USD, identity=job.identity,
        thread=job.thread, stream=job.stream)


def refusal_record(caller: Identity, request_id: str, status: int, code: str,
                   latency_s: float, *, endpoint: str = "", model: str = "", stream: bool = False,
                   identity: str = "", thread: str = "") -> RequestRecord:
    """The record of a request refused before any worker ran it (invalid, unroutable,
    over a limit, Redis trouble): no provider, no tokens, no cost."""
    return RequestRecord(
        id=request_id, time=iso_time(time.time()), org=caller.org, project=caller.project,
        key_id=caller.key_id, endpoint=endpoint, model=model, provider="", status=status,
        code=code, latency_ms=round(latency_s * 1000, 1), identity=identity, thread=thread,
        stream=stream)


def error_code(error_body: bytes) -> str:
    """The code of a rendered error body ("" if it is not the gateway's shape)."""
    try:
        return _error_decoder.decode(error_body).error.code
    except msgspec.DecodeError:
        return ""
