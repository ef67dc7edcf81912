"""Ending a batch: its output and error files, and its last status.

A batch can end when nothing of it is in flight any more (`queued` 0):

    in_progress, every line ended   → finalizing → completed
    cancelling                      → cancelled (the files of what finished)
    in_progress, its window passed  → expired: the lines never fed go to the error file
                                      with `batch_expired` (counted in neither count)

Lines of a cancelling or expired batch waiting for a retry are settled first (dropped, or
their `batch_expired` line). Safe with many workers and crashes: a worker takes the batch's
lease (`names.batch_lease`, a TTL) before it writes; files have ids derived from the
batch's, their bytes are appended under a key of the writer's own and renamed into place,
and every write is idempotent, so a worker that dies mid-way leaves nothing a second try
would not redo the same. The last step (status, file ids, off the active list) is one
script that checks the batch is still where this worker found it.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Sequence
from typing import Any

import coredis
import msgspec
import trio
from coredis.tokens import PureToken

from schemas import names
from schemas.batch import FILE_PREFIX, BatchState, FileObject
from schemas.config import Config
from schemas.envelopes import job_decoder
from workers.batches.lines import EXPIRED, error_line, keep_seconds
from workers.connection import RedisClient
from workers.logs import log_event

LEASE_S = 60
CHUNK = 4 * 1024 * 1024  # bytes per SET / APPEND of a file
PAGE = 1000  # lines per HSCAN / LRANGE / pipeline
STAGING_S = 3600  # bytes a writer that died left behind expire
_encode = msgspec.json.Encoder().encode

# KEYS[1] the batch, KEYS[2..] its line lists. in_progress → finalizing, once every line
# ended with an answer (nothing queued, nothing left to feed, none expired: an expired line
# counts as neither completed nor failed).
_BEGIN = """
local h = redis.call('HMGET', KEYS[1], 'status', 'queued', 'completed', 'failed', 'total')
if h[1] ~= 'in_progress' or tonumber(h[2]) ~= 0 then return 0 end
if tonumber(h[3]) + tonumber(h[4]) < tonumber(h[5]) then return 0 end
for i = 2, #KEYS do
  if redis.call('LLEN', KEYS[i]) > 0 then return 0 end
end
redis.call('HSET', KEYS[1], 'status', 'finalizing', 'finalizing_at', ARGV[1])
return 1
"""

# KEYS[1] the batch, KEYS[2] the active set, KEYS[3], KEYS[4] its output and error hashes,
# KEYS[5] its set of providers, KEYS[6..] its line lists (all deleted once it ended);
# ARGV: expected status, new status, its timestamp field, now, output file id, error file
# id, batch id.
_END = """
local h = redis.call('HMGET', KEYS[1], 'status', 'queued')
if h[1] ~= ARGV[1] or tonumber(h[2]) ~= 0 then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[2], ARGV[3], ARGV[4],
           'output_file_id', ARGV[5], 'error_file_id', ARGV[6])
redis.call('SREM', KEYS[2], ARGV[7])
for i = 3, #KEYS do redis.call('DEL', KEYS[i]) end
return 1
"""

# KEYS[1] a retry set, KEYS[2] the batch, KEYS[3] its error hash; ARGV: the line job, its
# index, its error line ('' = none: cancelled), how long the error hash is kept.
_SETTLE = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
if ARGV[3] ~= '' then
  redis.call('HSETNX', KEYS[3], ARGV[2], ARGV[3])
  redis.call('EXPIRE', KEYS[3], ARGV[4])
end
redis.call('HINCRBY', KEYS[2], 'queued', -1)
return 1
"""

_UNLEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def file_id(batch_id: str, kind: str) -> str:
    """The id of a batch's output or error file: the same from every worker, every try."""
    return FILE_PREFIX + hashlib.blake2b(f"{batch_id}:{kind}".encode(), digest_size=12).hexdigest()


class Finalizer:
    """Ends batches (module docstring); `step` is called for each active batch per tick."""

    lease_s = LEASE_S

    def __init__(self, redis: RedisClient, config: Config, writer: str) -> None:
        self.redis = redis
        self.config = config
        self.writer = writer
        self._begin = redis.register_script(_BEGIN)
        self._end = redis.register_script(_END)
        self._settle = redis.register_script(_SETTLE)
        self._unlease = redis.register_script(_UNLEASE)

    async def step(self, state: BatchState, providers: Sequence[str]) -> None:
        """Move the batch on if it can end (`state` as read at the tick's start)."""
        batch_id = state.record.id
        lists = [names.batch_lines(batch_id, p) for p in providers]
        status = state.status
        now = int(time.time())
        if status == "in_progress" and state.queued == 0 and await self._begin(
                keys=[names.batch(batch_id), *lists], args=[now]):
            status = "finalizing"
        if status == "finalizing":
            await self._close(state, providers, "finalizing", "completed")
        elif status == "cancelling" or (status == "in_progress" and now >= state.record.expires_at):
            expired = status != "cancelling"
            if state.queued > 0:  # in flight: they end by themselves; retries end here
                await self._settle_retries(state, providers, expired=expired)
            else:
                await self._close(state, providers, status, "expired" if expired else "cancelled")

    async def _close(self, state: BatchState, providers: Sequence[str], expected: str,
                     target: str) -> None:
        batch_id = state.record.id
        lease = names.batch_lease(batch_id)
        token = f"{self.writer}:{uuid.uuid4().hex[:8]}"
        if not await self.redis.set(lease, token, condition=PureToken.NX,
                                    px=int(self.lease_s * 1000)):
            return  # another worker is at it
        try:
            if target == "expired":
                await self._expire_unfed(state, providers)
            output = await self._write_file(state, "output", names.batch_output(batch_id), token)
            errors = await self._write_file(state, "error", names.batch_errors(batch_id), token)
            ended: Any = await self._end(
                keys=[names.batch(batch_id), names.BATCHES_ACTIVE, names.batch_output(batch_id),
                      names.batch_errors(batch_id), names.batch_providers(batch_id),
                      *(names.batch_lines(batch_id, p) for p in providers)],
                args=[expected, target, f"{target}_at", int(time.time()), output, errors,
                      batch_id])
            if ended:
                log_event("batch_ended", batch=batch_id, org=state.org, status=target,
                          completed=state.completed, failed=state.failed, total=state.total)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(
                    self.config.limits.redis_timeout_s):
                try:
                    await self._unlease(keys=[lease], args=[token])
                except (coredis.exceptions.RedisError, OSError):
                    pass  # it expires

    async def _expire_unfed(self, state: BatchState, providers: Sequence[str]) -> None:
        """Each line never fed gets its `batch_expired` line (nothing feeds them now)."""
        batch_id = state.record.id
        keep = keep_seconds(self.config)
        for provider in providers:
            key = names.batch_lines(batch_id, provider)
            start = 0
            while True:
                page: Any = await self.redis.lrange(key, start, start + PAGE - 1)
                if not page:
                    break
                start += len(page)
                async with self.redis.pipeline(transaction=False) as pipe:
                    for raw in page:
                        job = job_decoder.decode(bytes(raw))
                        pipe.hsetnx(names.batch_errors(batch_id), str(job.batch_line),
                                    error_line(job, EXPIRED))
                    pipe.expire(names.batch_errors(batch_id), keep)

    async def _settle_retries(self, state: BatchState, providers: Sequence[str], *,
                              expired: bool) -> None:
        batch_id = state.record.id
        keep = keep_seconds(self.config)
        for provider in providers:
            key = names.batch_retry(provider)
            mine = []
            start = 0
            while True:
                page: Any = await self.redis.zrange(key, start, start + PAGE - 1)
                if not page:
                    break
                start += len(page)
                for raw in page:
                    job = job_decoder.decode(bytes(raw))
                    if job.batch == batch_id:
                        mine.append((bytes(raw), job))
            for raw, job in mine:
                await self._settle(
                    keys=[key, names.batch(batch_id), names.batch_errors(batch_id)],
                    args=[raw, job.batch_line, error_line(job, EXPIRED) if expired else b"", keep])

    async def _write_file(self, state: BatchState, kind: str, lines_key: str, token: str) -> str:
        """Write the batch's output or error file from its lines hash, in input order;
        returns its id, or "" when it has no line (no file, as OpenAI does)."""
        lines: dict[int, bytes] = {}
        cursor: int | None = 0
        while True:
            cursor, part = await self.redis.hscan(lines_key, cursor, count=PAGE)
            assert isinstance(part, dict)
            lines.update((int(k), bytes(v)) for k, v in part.items())
            if not cursor:
                break
        if not lines:
            return ""
        data = b"".join(lines[index] + b"\n" for index in sorted(lines))
        batch_id = state.record.id
        created = int(time.time())
        meta = FileObject(id=file_id(batch_id, kind), bytes=len(data), created_at=created,
                          filename=f"{batch_id}_{kind}.jsonl", purpose="batch_output",
                          expires_at=created + keep_seconds(self.config))
        assert meta.expires_at is not None
        staging = names.file_staging(meta.id, token)
        await self.redis.set(staging, data[:CHUNK], ex=STAGING_S)
        for start in range(CHUNK, len(data), CHUNK):
            await self.redis.append(staging, data[start:start + CHUNK])
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.rename(staging, names.file_data(meta.id))
            pipe.expireat(names.file_data(meta.id), meta.expires_at)
            pipe.hset(names.file(meta.id), {"org": state.org, "meta": _encode(meta)})
            pipe.expireat(names.file(meta.id), meta.expires_at)
            pipe.zadd(names.files(state.org), {meta.id: created})
            pipe.expireat(names.files(state.org), meta.expires_at, PureToken.GT)
            pipe.expireat(names.files(state.org), meta.expires_at, PureToken.NX)
        return meta.id
