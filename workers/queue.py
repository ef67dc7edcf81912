"""The worker side of the job streams: reading, heartbeating, reclaiming, finishing.

Every multi-step change is one Lua script or one MULTI, so a crash between steps cannot
leave a job half-moved. The ingress side (admission, withdrawal) is `ingress.admission`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import coredis
import msgspec

from schemas import names
from schemas.envelopes import Frame, Head, Job, frame_encoder, job_decoder, job_encoder
from workers.logs import log_event

# Take over entries whose worker stopped heartbeating; return each with its count of
# earlier deliveries so the new run can number its attempt. Deleted entries (their
# client left) are acknowledged away.
_RECLAIM = """
local pend = redis.call('XPENDING', KEYS[1], ARGV[1], 'IDLE', ARGV[3], '-', '+', 1000)
local out = {}
for _, p in ipairs(pend) do
  -- Our own entries are left alone (we are alive, so they run and are heartbeated) unless
  -- idle far longer than any heartbeat delay: then they were taken but never run.
  local ours = p[2] == ARGV[2] and p[3] < tonumber(ARGV[5])
  if not ours and #out < tonumber(ARGV[4]) then
    local claimed = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], p[1])
    if #claimed > 0 and claimed[1][2] then
      table.insert(out, {claimed[1][1], claimed[1][2][2], p[4]})
    else
      redis.call('XACK', KEYS[1], ARGV[1], p[1])
    end
  end
end
return out
"""

# Publish the outcome (or move the job to its next route), meter, acknowledge: one step.
_FINISH = """
if ARGV[3] == 'publish' then
  redis.call('PUBLISH', ARGV[4], ARGV[5])
elseif ARGV[3] == 'forward' then
  redis.call('XADD', KEYS[3], '*', 'j', ARGV[5])
end
if tonumber(ARGV[9]) > 0 then
  redis.call('HINCRBY', KEYS[2], 'tokens', ARGV[6])
  redis.call('HINCRBY', KEYS[2], 'prompt_tokens', ARGV[7])
  redis.call('HINCRBY', KEYS[2], 'completion_tokens', ARGV[8])
  redis.call('HINCRBY', KEYS[2], 'requests', ARGV[9])
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return 1
"""
USAGE_FIELDS = ("tokens", "prompt_tokens", "completion_tokens", "requests")



@dataclass(slots=True)
class Delivery:
    """A job read from a stream, with how many times it was delivered before."""

    entry_id: bytes
    job: Job
    earlier_deliveries: int


class Queue:
    """The job streams of all providers, seen through one Redis client."""

    def __init__(self, redis: coredis.Redis[bytes]) -> None:
        self.redis = redis
        self._reclaim = redis.register_script(_RECLAIM)
        self._finish = redis.register_script(_FINISH)

    async def ensure_group(self, provider: str) -> None:
        """Create the provider's stream and consumer group if they do not exist."""
        try:
            await self.redis.xgroup_create(names.queue(provider), names.GROUP, "0", mkstream=True)
        except coredis.exceptions.StreamDuplicateConsumerGroupError:
            pass  # another process created it first


    async def was_withdrawn(self, request_id: str) -> bool:
        """Whether the client of this request left (see `withdraw`)."""
        return bool(await self.redis.exists([names.withdrawn(request_id)]))

    async def read(self, provider: str, consumer: str, count: int, block_ms: int) -> list[Delivery]:
        """Read up to `count` new jobs, waiting at most `block_ms` for the first."""
        reply = await self.redis.xreadgroup(
            names.GROUP, consumer, streams={names.queue(provider): ">"},
            count=count, block=block_ms,
        )
        out: list[Delivery] = []
        for entries in (reply or {}).values():
            for entry in entries:
                entry_id = _bytes(entry.identifier)
                payload = entry.field_values.get(b"j")
                job = None if payload is None else _decode_job(_bytes(payload))
                if job is None:  # written by something else: never retried
                    await self.ack(provider, [entry_id])
                    continue
                out.append(Delivery(entry_id, job, 0))
        return out

    async def reclaim(self, provider: str, consumer: str, idle_ms: int, count: int) -> list[Delivery]:
        """Take over up to `count` jobs whose worker has not heartbeated for `idle_ms`
        (our own entries only after three times that: they were read but never run)."""
        rows: Any = await self._reclaim(
            keys=[names.queue(provider)], args=[names.GROUP, consumer, idle_ms, count, 3 * idle_ms]
        )
        out: list[Delivery] = []
        for row in rows:
            entry_id, payload, deliveries = bytes(row[0]), bytes(row[1]), int(row[2])
            job = _decode_job(payload)
            if job is None:
                await self.ack(provider, [entry_id])
                continue
            out.append(Delivery(entry_id, job, deliveries))
        return out

    async def heartbeat(self, provider: str, consumer: str, entry_ids: Sequence[bytes]) -> None:
        """Reset the idle time of the jobs this worker runs, so nobody reclaims them."""
        if entry_ids:
            await self.redis.xclaim(
                names.queue(provider), names.GROUP, consumer, 0, list(entry_ids), justid=True
            )

    async def ack(self, provider: str, entry_ids: Sequence[bytes]) -> None:
        """Remove finished entries from the stream and the pending list."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(names.queue(provider), names.GROUP, list(entry_ids))
            pipe.xdel(names.queue(provider), list(entry_ids))

    async def publish(self, channel: str, frame: Frame) -> int:
        """Publish one frame; returns how many ingress processes heard it."""
        return await self.redis.publish(channel, frame_encoder.encode(frame))

    # ── stream integrity (output-began marker, stored big answers) ──────────────
    async def publish_head(self, channel: str, frame: Head, ttl_s: int) -> int:
        """Publish a stream's Head and mark that its output began, in one MULTI."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(names.began(frame.request_id), b"1", ex=max(ttl_s, 1))
            listeners = pipe.publish(channel, frame_encoder.encode(frame))
        return int(await listeners)

    async def output_began(self, request_id: str) -> bool:
        """Whether an earlier run of this streamed request already published output."""
        return bool(await self.redis.exists([names.began(request_id)]))

    async def forget_began(self, request_id: str) -> None:
        """A finished job is never reclaimed: its output-began mark can go."""
        await self.redis.unlink([names.began(request_id)])

    async def store_body(self, request_id: str, body: bytes, ttl_s: int) -> str:
        """Keep a whole answer too big for a reply frame; the ingress reads it once."""
        key = names.body(request_id)
        await self.redis.set(key, body, ex=max(ttl_s, 1))
        return key

    async def finish(self, delivery: Delivery, frame: Frame | None, *,
                     usage: dict[str, int] | None = None, forward: Job | None = None) -> None:
        """Publish the outcome, meter usage, and acknowledge: all or nothing (invariant 3).

        With `forward`, the job moves to another provider's stream instead of publishing;
        with neither (the client left) it is only acknowledged. One script call: atomic,
        and one command on the worker's hot path instead of a MULTI of nine.
        """
        job = delivery.job
        if forward is not None:
            target, payload = names.queue(forward.route.provider), job_encoder.encode(forward)
        elif frame is not None:
            target, payload = job.reply_to, frame_encoder.encode(frame)
        else:
            target, payload = "", b""
        metered = usage or {}
        await self._finish(
            keys=[names.queue(job.route.provider), names.usage(job.org, names.month()),
                  target if forward is not None else names.queue(job.route.provider)],
            args=[names.GROUP, delivery.entry_id, "forward" if forward is not None else
                  "publish" if frame is not None else "ack", target, payload,
                  *(metered.get(field, 0) for field in USAGE_FIELDS)])


def _bytes(value: str | bytes) -> bytes:
    """The client is made with decode_responses=False: values arrive as bytes."""
    return value if isinstance(value, bytes) else value.encode()


def _decode_job(payload: bytes) -> Job | None:
    try:
        return job_decoder.decode(payload)
    except msgspec.DecodeError:
        log_event("job_undecodable", size=len(payload))
        return None
