"""The ingress side of the job streams: admitting a job, withdrawing it, reading usage.

Admission is one Lua script (quota check and bounded XADD together, invariant 4), so two
ingress processes can never both take the last place in a queue. The worker side of the
same streams (read, heartbeat, reclaim, finish) is `workers.queue`.
"""

from __future__ import annotations

from typing import Any

import coredis

from schemas import names
from schemas.envelopes import Job, job_encoder

# Quota check and bounded XADD in one step (invariant 4). Entries stay in the stream
# until acknowledged, so "waiting" is the length minus those delivered and running.
_ADMIT = """
local limit = tonumber(ARGV[2])
if limit >= 0 then
  local used = tonumber(redis.call('HGET', KEYS[2], 'tokens') or '0')
  if used >= limit then return {0} end
end
local max = tonumber(ARGV[1])
local len = redis.call('XLEN', KEYS[1])
if len >= max then
  local ok, pend = pcall(redis.call, 'XPENDING', KEYS[1], ARGV[4])
  local running = 0
  if ok then running = pend[1] end
  if len - running >= max then return {-1} end
end
-- The provider's byte budget (max_queue_bytes, ARGV[5]): the stream's memory as Redis
-- counts it, running entries included, plus this job must fit.
local max_bytes = tonumber(ARGV[5])
if max_bytes >= 0 then
  local held = redis.call('MEMORY', 'USAGE', KEYS[1], 'SAMPLES', '0') or 0
  if held + #ARGV[3] > max_bytes then return {-2} end
end
return {1, redis.call('XADD', KEYS[1], '*', 'j', ARGV[3])}
"""

ADMITTED, OVER_QUOTA, QUEUE_BYTES_FULL = 1, 0, -2


class Admission:
    """Puts jobs on the provider streams and takes back those whose client left."""

    def __init__(self, redis: coredis.Redis[bytes]) -> None:
        self.redis = redis
        self._admit = redis.register_script(_ADMIT)

    async def admit(self, job: Job, *, max_queue: int, token_limit: int | None,
                    max_queue_bytes: int | None = None) -> tuple[int, bytes]:
        """Enqueue `job` unless the org is over quota or the queue is full.

        Returns (ADMITTED, entry id), or (OVER_QUOTA, a full queue's -1, or
        QUEUE_BYTES_FULL when the job does not fit the provider's byte budget, b"").
        """
        provider = job.route.provider
        result: Any = await self._admit(
            keys=[names.queue(provider), names.usage(job.org, names.month())],
            args=[max_queue, -1 if token_limit is None else token_limit,
                  job_encoder.encode(job), names.GROUP,
                  -1 if max_queue_bytes is None else max_queue_bytes],
        )
        code = int(result[0])
        return code, (result[1] if code == ADMITTED else b"")

    async def withdraw(self, provider: str, entry_id: bytes, request_id: str,
                       remember_s: float) -> None:
        """The client left: drop its queued job, tell a worker running it to stop, and
        remember it for `remember_s` so a copy moved to a failover route is not started."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xdel(names.queue(provider), [entry_id])
            pipe.publish(names.CANCEL_CHANNEL, request_id.encode())
            pipe.set(names.withdrawn(request_id), "1", ex=max(1, int(remember_s)))

    async def usage(self, org: str, when: str | None = None) -> dict[str, int]:
        """An org's metered usage for a month (default: this one)."""
        raw = await self.redis.hgetall(names.usage(org, when or names.month()))
        return {k.decode(): int(v) for k, v in raw.items()}

