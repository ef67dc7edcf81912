"""Files in Redis, per org: uploads (purpose `batch`) and the files batches produce.

The layout is `schemas/names.py`'s, the same for the files the workers write (output and
error files, purpose `batch_output`):

    names.file(id)       hash {org, meta: JSON `schemas.batch.FileObject`}, expires with it
    names.file_data(id)  string, the file's bytes, expires with it
    names.files(org)     sorted set of the org's file ids by created_at; ids of files that
                         expired are dropped when the list is read

A file is written in two steps: its bytes first (in chunks: one 200 MB command would hold
Redis and this process for as long), then, in one MULTI, its hash and its place in the
org's list. Until that MULTI nobody can see the file; an ingress that dies between them
leaves only bytes that expire. Every Redis step is bounded by `timeout_s` (a 503 when it
is exceeded or Redis fails): a file is too big for the one budget a request shares.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import Any, TypeVar

import coredis
import msgspec
import trio
from coredis.tokens import PureToken

from ingress.gateway import redis_error
from schemas import names
from schemas.batch import FILE_PREFIX, FileObject
from schemas.errors import GatewayError
from workers.connection import RedisClient

CHUNK = 4 * 1024 * 1024  # bytes per APPEND / GETRANGE
UNPUBLISHED_S = 3600  # how long bytes whose upload did not finish may stay
T = TypeVar("T")
_encode = msgspec.json.Encoder().encode
_meta = msgspec.json.Decoder(FileObject).decode


def sortable_id(prefix: str) -> str:
    """A new id whose text sorts by creation time (microseconds, then random): the lists
    order by created_at in seconds, and ids break the ties of one second in creation order."""
    return f"{prefix}{time.time_ns() // 1000:014x}{secrets.token_hex(9)}"


def new_file_id() -> str:
    return sortable_id(FILE_PREFIX)


class FileStore:
    """An org's files, read and written in bounded steps."""

    def __init__(self, redis: RedisClient, timeout_s: float) -> None:
        self.redis = redis
        self.timeout_s = timeout_s

    async def _call(self, awaitable: Awaitable[T]) -> T:
        try:
            with trio.fail_after(self.timeout_s):
                return await awaitable
        except (trio.TooSlowError, coredis.exceptions.RedisError, OSError) as exc:
            raise redis_error() from exc

    async def put(self, org: str, meta: FileObject, data: bytes) -> None:
        """Store a new file (`meta.id`), expiring at `meta.expires_at`."""
        assert meta.expires_at is not None
        key = names.file_data(meta.id)
        try:
            # Unpublished bytes expire soon; publishing gives them the file's expiry.
            await self._call(self.redis.set(key, data[:CHUNK], ex=UNPUBLISHED_S))
            for start in range(CHUNK, len(data), CHUNK):
                await self._call(self.redis.append(key, data[start:start + CHUNK]))
            await self._call(self._publish(org, meta))
        except BaseException:
            with trio.CancelScope(shield=True), trio.move_on_after(self.timeout_s):
                try:
                    await self.redis.delete([key])  # nothing half-stored stays behind
                except (coredis.exceptions.RedisError, OSError):
                    pass  # it expires: only a hash would make it visible
            raise

    async def _publish(self, org: str, meta: FileObject) -> None:
        assert meta.expires_at is not None
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.expireat(names.file_data(meta.id), meta.expires_at)
            pipe.hset(names.file(meta.id), {"org": org, "meta": _encode(meta)})
            pipe.expireat(names.file(meta.id), meta.expires_at)
            pipe.zadd(names.files(org), {meta.id: meta.created_at})
            # The list lives as long as the newest file it holds.
            pipe.expireat(names.files(org), meta.expires_at, PureToken.GT)
            pipe.expireat(names.files(org), meta.expires_at, PureToken.NX)

    async def get(self, file_id: str, org: str) -> FileObject | None:
        """A file of `org`; None when there is none (or it is another org's, or expired)."""
        if not file_id.startswith(FILE_PREFIX) or len(file_id) > 128:
            return None
        raw = await self._call(self.redis.hgetall(names.file(file_id)))
        return _readable(raw, org)

    async def read(self, meta: FileObject) -> bytes:
        """A file's bytes, whole (a file that expired meanwhile: 404)."""
        return b"".join([chunk async for chunk in self.chunks(meta)])

    async def chunks(self, meta: FileObject) -> AsyncIterator[bytes]:
        """A file's bytes, a few MB at a time (its stored length: what `meta.bytes` says)."""
        key = names.file_data(meta.id)
        size = int(await self._call(self.redis.strlen(key)))
        if size == 0 and meta.bytes:
            raise not_found(meta.id)  # its bytes expired or were deleted
        for start in range(0, max(size, 1), CHUNK):
            chunk = await self._call(self.redis.getrange(key, start, start + CHUNK - 1))
            if len(chunk) < min(CHUNK, size - start):
                raise not_found(meta.id)  # expired or deleted while being read
            yield chunk

    async def list(self, org: str, *, purpose: str | None, after: str | None, limit: int,
                   ascending: bool) -> tuple[list[FileObject], bool]:
        """The org's files in created_at order (newest first unless `ascending`), after the
        file `after`, of `purpose` if given; and whether more follow."""
        index = names.files(org)
        rank_of = self.redis.zrank if ascending else self.redis.zrevrank
        start = 0
        if after:
            rank = await self._call(rank_of(index, after))
            if rank is None:
                return [], False
            start = int(rank) + 1  # type: ignore[arg-type]
        out: list[FileObject] = []
        page = min(limit + 1, 1000)
        while len(out) <= limit:
            ids: Any = await self._call(self.redis.zrange(index, start, start + page - 1,
                                                          rev=None if ascending else True))
            if not ids:
                break
            start += len(ids)
            reads = await self._call(self._metas([bytes(i).decode() for i in ids]))
            gone = []
            for file_id, found in zip(ids, reads, strict=True):
                meta = _readable(found, org)
                if meta is None:
                    gone.append(file_id)
                elif purpose is None or meta.purpose == purpose:
                    out.append(meta)
            if gone:
                await self._call(self.redis.zrem(index, gone))
                start -= len(gone)  # the ranks after them moved up
        return out[:limit], len(out) > limit

    async def _metas(self, ids: Sequence[str]) -> Sequence[dict[bytes, bytes]]:
        async with self.redis.pipeline(transaction=False) as pipe:
            reads = [pipe.hgetall(names.file(i)) for i in ids]
        return [await read for read in reads]

    async def delete(self, meta: FileObject, org: str) -> None:
        await self._call(self._delete(meta.id, org))

    async def _delete(self, file_id: str, org: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete([names.file(file_id), names.file_data(file_id)])
            pipe.zrem(names.files(org), [file_id])


def _readable(raw: dict[bytes, bytes], org: str) -> FileObject | None:
    if not raw or raw.get(b"org", b"").decode() != org or b"meta" not in raw:
        return None
    try:
        return _meta(raw[b"meta"])
    except msgspec.DecodeError:
        return None


def not_found(file_id: str, param: str | None = None) -> GatewayError:
    """OpenAI's answer for a file that is absent, expired or another org's."""
    return GatewayError(404, "not_found", f"No such File object: {file_id[:128]}", param=param)
