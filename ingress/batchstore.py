"""The ingress side of batches in Redis: create one, read it, list an org's, cancel it.

The layout is `schemas/batch.py`'s; the worker side (feeding lines, writing outcomes,
finalizing) is `workers/batches/`. A batch is written in two steps: its line lists
first (in pipelined chunks: a 50,000-line batch is too big for one command), then, in
one MULTI, its hash and its places in the org's, the operator's and the active list. An
ingress that dies between them leaves only lists nobody points to, which expire
within the hour.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Mapping, Sequence
from typing import Any

from schemas import names
from schemas.batch import BatchState, state_fields, state_from_hash
from workers.connection import RedisClient

PUSH_CHUNK = 1000  # line jobs per RPUSH
UNPUBLISHED_S = 3600  # line lists not (yet) pointed to by a batch expire after this

# Cancel a batch that has not ended: cancelling, from now. Returns the status it has after.
_CANCEL = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return false end
if status == 'validating' or status == 'in_progress' then
  redis.call('HSET', KEYS[1], 'status', 'cancelling', 'cancelling_at', ARGV[1])
  return 'cancelling'
end
return status
"""


class BatchStore:
    """Batches as the ingress (and the CLI) sees them."""

    def __init__(self, redis: RedisClient) -> None:
        self.redis = redis
        self._cancel = redis.register_script(_CANCEL)

    async def create(self, state: BatchState, lines: Mapping[str, Sequence[bytes]],
                     ttl_s: int) -> None:
        """Store a new batch: `lines` {provider: msgpack line jobs, in file order}. A batch
        that is not `failed` goes on the active list, where the workers pick it up."""
        batch_id = state.record.id
        for provider, jobs in lines.items():
            key = names.batch_lines(batch_id, provider)
            for start in range(0, len(jobs), PUSH_CHUNK):
                async with self.redis.pipeline(transaction=False) as pipe:
                    pipe.rpush(key, list(jobs[start:start + PUSH_CHUNK]))
                    pipe.expire(key, UNPUBLISHED_S)  # lists of a create that failed go soon
        async with self.redis.pipeline(transaction=True) as pipe:
            for provider in lines:
                pipe.expire(names.batch_lines(batch_id, provider), ttl_s)
            pipe.hset(names.batch(batch_id), state_fields(state))  # type: ignore[arg-type]
            pipe.expire(names.batch(batch_id), ttl_s)
            if lines:
                pipe.sadd(names.batch_providers(batch_id), list(lines))
                pipe.expire(names.batch_providers(batch_id), ttl_s)
            pipe.zadd(names.batches(state.org), {batch_id: state.record.created_at})
            pipe.zadd(names.BATCHES_ALL, {batch_id: state.record.created_at})
            if state.status != "failed":
                pipe.sadd(names.BATCHES_ACTIVE, [batch_id])

    async def get(self, batch_id: str, org: str | None) -> BatchState | None:
        """One batch; None when there is none, or it belongs to another org than `org`
        (None: the operator, who sees every org's)."""
        state = state_from_hash(await self.redis.hgetall(names.batch(batch_id)))
        if state is None or (org is not None and state.org != org):
            return None
        return state

    async def list(self, org: str | None, *, after: str | None = None,
                   limit: int = 20) -> tuple[list[BatchState], bool]:
        """Batches newest first (an org's, or with `org` None every org's), starting after
        the batch `after`; and whether more follow. Ids of expired batches are dropped."""
        index = names.batches(org) if org is not None else names.BATCHES_ALL
        start = 0
        if after:
            rank = await self.redis.zrevrank(index, after)
            if rank is None:
                return [], False
            start = int(rank) + 1  # type: ignore[arg-type]
        out: list[BatchState] = []
        while len(out) <= limit:
            ids: Any = await self.redis.zrange(index, start, start + limit, rev=True)
            if not ids:
                break
            start += len(ids)
            async with self.redis.pipeline(transaction=False) as pipe:
                reads = [pipe.hgetall(names.batch(bytes(i).decode())) for i in ids]
            gone = []
            for batch_id, read in zip(ids, reads, strict=True):
                state = state_from_hash(await read)
                if state is None:
                    gone.append(batch_id)
                elif org is None or state.org == org:
                    out.append(state)
            if gone:
                await self.redis.zrem(index, gone)
                start -= len(gone)  # the ids after them moved up by as many places
        return out[:limit], len(out) > limit

    async def active(self, chunk: int = 500) -> builtins.list[BatchState]:
        """Every batch on the active list (validating, in_progress, finalizing,
        cancelling), read in pipelined chunks of `chunk`; in no particular order. An id
        whose hash is gone is skipped (the workers own the list). For the operator's
        views: the CLI and the metrics."""
        ids: Any = await self.redis.smembers(names.BATCHES_ACTIVE)
        out: builtins.list[BatchState] = []
        ordered = sorted(bytes(i).decode() for i in ids)
        for start in range(0, len(ordered), chunk):
            async with self.redis.pipeline(transaction=False) as pipe:
                reads = [pipe.hgetall(names.batch(i)) for i in ordered[start:start + chunk]]
            for read in reads:
                if (state := state_from_hash(await read)) is not None:
                    out.append(state)
        return out

    async def cancel(self, batch_id: str, org: str | None) -> BatchState | None:
        """Ask for a batch to stop (`cancelling` until its lines in flight end); a batch
        that already ended is left as it is. None when `get` would give None."""
        if await self.get(batch_id, org) is None:
            return None
        await self._cancel(keys=[names.batch(batch_id)], args=[int(time.time())])
        return await self.get(batch_id, org)
