"""Feeding batch lines into the batch streams, and walking each batch through its life.

One `Feeder` per worker process, in `run_workers`'s nursery. Every `FEED_EVERY_S` it
walks `names.BATCHES_ACTIVE` (every worker does; each step is one Lua script that
re-checks the batch's state, so two workers never do a step twice):

- `validating` → `in_progress` (`in_progress_at`);
- for each provider this worker serves, tops the batch stream `names.batch_queue` up to
  `batch.feed_ahead` waiting lines: due retries first, then one line of each batch in
  turn (round-robin, the starting batch rotating from tick to tick), each LPOP, XADD and
  `queued` +1 in the same script, so no crash can lose or double a line on its way;
  nothing of a batch that is not `in_progress` or whose window passed (Redis's clock);
- hands the batches that can end to the `Finalizer`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import coredis
import trio

from schemas import names
from schemas.batch import BatchState, state_from_hash
from schemas.config import Config
from workers.batches.finalizer import Finalizer
from workers.connection import RedisClient
from workers.logs import log_event

FEED_EVERY_S = 0.2

# KEYS[1] the batch stream, KEYS[2] its retry set, then for each batch its hash and its
# line list for this provider; ARGV[1] the group, ARGV[2] feed_ahead, then each batch's
# expires_at. Returns how many lines went to the stream.
_FEED = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local waiting = redis.call('XLEN', KEYS[1])
if waiting > 0 then
  local ok, pend = pcall(redis.call, 'XPENDING', KEYS[1], ARGV[1])
  if ok then waiting = waiting - pend[1] end
end
local room = tonumber(ARGV[2]) - waiting
if room <= 0 then return 0 end
local fed = 0
-- Retries are counted in their batch's `queued` already.
for _, job in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, room)) do
  redis.call('ZREM', KEYS[2], job)
  redis.call('XADD', KEYS[1], '*', 'j', job)
  fed = fed + 1
end
room = room - fed
local live = {}
for i = 3, #KEYS, 2 do
  local expires = tonumber(ARGV[2 + (i - 1) / 2])
  if now < expires and redis.call('HGET', KEYS[i], 'status') == 'in_progress' then
    table.insert(live, i)
  end
end
while room > 0 and #live > 0 do
  local still = {}
  for _, i in ipairs(live) do
    if room > 0 then
      local job = redis.call('LPOP', KEYS[i + 1])
      if job then
        redis.call('XADD', KEYS[1], '*', 'j', job)
        redis.call('HINCRBY', KEYS[i], 'queued', 1)
        room = room - 1
        fed = fed + 1
        table.insert(still, i)
      end
    end
  end
  live = still
end
return fed
"""

_START = """
if redis.call('HGET', KEYS[1], 'status') == 'validating' then
  redis.call('HSET', KEYS[1], 'status', 'in_progress', 'in_progress_at', ARGV[1])
  return 1
end
return 0
"""


class Feeder:
    """Feeds the batch streams of `providers` and moves batches along (module docstring)."""

    def __init__(self, redis: RedisClient, config: Config, providers: Sequence[str],
                 consumer_id: str) -> None:
        self.redis = redis
        self.config = config
        self.providers = list(providers)
        self.finalizer = Finalizer(redis, config, consumer_id)
        self._feed = redis.register_script(_FEED)
        self._start = redis.register_script(_START)
        self._turn = 0

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Feed until cancelled; errors are logged and the next tick tries again."""
        task_status.started()
        while True:
            try:
                # Bounded: a finalization writes whole files, the rest is a few commands.
                with trio.fail_after(self.finalizer.lease_s / 2):
                    await self.tick()
            except Exception as exc:
                log_event("batch_feeder_error", error=type(exc).__name__, detail=str(exc)[:200])
            await trio.sleep(FEED_EVERY_S)

    async def tick(self) -> None:
        """One walk over the active batches."""
        members: Any = await self.redis.smembers(names.BATCHES_ACTIVE)
        ids = sorted(bytes(member).decode() for member in members)
        if not ids:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            reads = [(pipe.hgetall(names.batch(i)), pipe.smembers(names.batch_providers(i)))
                     for i in ids]
        batches: list[tuple[BatchState, list[str]]] = []
        for batch_id, (raw, served) in zip(ids, reads, strict=True):
            state = state_from_hash(await raw)
            if state is None:  # its record expired (or is unreadable): nothing left to do
                log_event("batch_gone", batch=batch_id)
                await self.redis.srem(names.BATCHES_ACTIVE, [batch_id])
                continue
            batches.append((state, sorted(bytes(p).decode() for p in await served)))
        for state, _ in batches:
            if state.status == "validating" and await self._start(
                    keys=[names.batch(state.record.id)], args=[int(time.time())]):
                state.status = "in_progress"
                log_event("batch_started", batch=state.record.id, lines=state.total)
        self._turn += 1
        now = time.time()
        for provider in self.providers:
            feedable = [s for s, provs in batches if provider in provs
                        and s.status == "in_progress" and now < s.record.expires_at]
            await self._feed_provider(provider, feedable)
        for state, provs in batches:
            try:  # one batch that cannot end (a bad line, ...) must not hold the others up
                await self.finalizer.step(state, provs)
            except (coredis.exceptions.RedisError, OSError):
                raise  # Redis trouble: the whole tick is retried
            except Exception as exc:
                log_event("batch_finalize_error", batch=state.record.id,
                          error=type(exc).__name__, detail=str(exc)[:200])

    async def _feed_provider(self, provider: str, batches: list[BatchState]) -> int:
        if batches:
            turn = self._turn % len(batches)
            batches = batches[turn:] + batches[:turn]
        keys = [names.batch_queue(provider), names.batch_retry(provider)]
        args: list[Any] = [names.GROUP, self.config.batch.feed_ahead]
        for state in batches:
            keys += [names.batch(state.record.id), names.batch_lines(state.record.id, provider)]
            args.append(state.record.expires_at)
        fed: Any = await self._feed(keys=keys, args=args)
        return int(fed)
