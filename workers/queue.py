"""The worker side of the job streams: reading, heartbeating, reclaiming, finishing.

Every multi-step change is one Lua script or one MULTI, so a crash between steps cannot
leave a job half-moved. The ingress side (admission, withdrawal) is `ingress.admission`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import coredis
import msgspec

from schemas import names
from schemas.envelopes import Frame, Head, Job, frame_encoder, job_decoder, job_encoder
from schemas.usage import day_expiry, encode_dimensions
from workers.batches.lines import LineOutcome
from workers.connection import RedisClient
from workers.finish_script import COST_FIELDS, FINISH_LUA, OUTCOME_KEEP_MS, USAGE_FIELDS
from workers.health import cooldown_ended, health_keys
from workers.logs import log_event
from workers.outbox import Outbox

# Take over entries whose owner is dead: its liveness key (`names.alive`, refreshed by
# every heartbeat, expiring after `reclaim_after_s`) is gone. Idle time (ARGV[3]) is only a
# safety floor. Our own entries idle past ARGV[5] were read but never run (a reply lost
# in flight, a freeze): they are returned without a claim, and the caller skips the ones
# it runs. Each comes with its count of earlier deliveries so the new run can number its
# attempt. Deleted entries (their client left) are acknowledged away.
_RECLAIM = """
local floor, room, own_idle = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local pend = redis.call('XPENDING', KEYS[1], ARGV[1], 'IDLE', math.min(floor, own_idle),
                        '-', '+', 1000)
local out, dead = {}, {}
for _, p in ipairs(pend) do
  if #out >= room then break end
  local id, owner, idle = p[1], p[2], p[3]
  if owner == ARGV[2] then
    if idle >= own_idle then
      local entry = redis.call('XRANGE', KEYS[1], id, id)
      if #entry > 0 then
        table.insert(out, {id, entry[1][2][2], p[4]})
      else
        redis.call('XACK', KEYS[1], ARGV[1], id)
      end
    end
  elseif idle >= floor then
    if dead[owner] == nil then
      dead[owner] = redis.call('EXISTS', ARGV[6] .. owner) == 0
    end
    if dead[owner] then
      local claimed = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], floor, id)
      if #claimed > 0 and claimed[1][2] then
        table.insert(out, {claimed[1][1], claimed[1][2][2], p[4]})
      else
        redis.call('XACK', KEYS[1], ARGV[1], id)
      end
    end
  end
end
return out
"""

# Keep this consumer alive and its running entries fresh: refresh the liveness key, then
# reset the idle time of each entry we still own. Entries another worker took over (we
# were presumed dead) are returned, never taken back: the caller stops those jobs.
_HEARTBEAT = """
if tonumber(ARGV[3]) > 0 then
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[3])
end
local lost = {}
for i = 4, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if #p > 0 and p[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
  elseif #p > 0 then
    table.insert(lost, ARGV[i])
  end
  -- Not pending at all: finished (by us a moment ago, or by the worker that took it over,
  -- whose outcome counts: our own finish will find the entry not ours and do nothing).
end
return lost
"""

# Remove consumers that are dead (no liveness key), own no entry and were idle at least
# ARGV[2] ms, so the group does not collect a name per worker start.
_PRUNE = """
local removed = 0
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local f = {}
  for i = 1, #c, 2 do f[c[i]] = c[i + 1] end
  if f['pending'] == 0 and f['idle'] >= tonumber(ARGV[2])
      and redis.call('EXISTS', ARGV[3] .. f['name']) == 0 then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], f['name'])
    removed = removed + 1
  end
end
return removed
"""

HEARTBEAT_ENTRIES = 256  # running entries refreshed per heartbeat script call


@dataclass(slots=True)
class Delivery:
    """A job read from a stream, with how many times it was delivered before."""

    entry_id: bytes
    job: Job
    earlier_deliveries: int
    consumer: str = ""  # who read it: only that consumer may finish it


class Queue:
    """The job streams of all providers, seen through one Redis client."""

    def __init__(self, redis: RedisClient) -> None:
        self.redis = redis
        self.outbox = Outbox(redis)  # stream frames: one round trip for many streams
        self._reclaim = redis.register_script(_RECLAIM)
        self._finish = redis.register_script(FINISH_LUA)
        self._heartbeat = redis.register_script(_HEARTBEAT)
        self._prune = redis.register_script(_PRUNE)

    async def ensure_group(self, provider: str, *, batch: bool = False) -> None:
        """Create the provider's stream (`batch`: its batch stream) and consumer group if
        they do not exist. Every method taking `batch` works on either stream the same way."""
        try:
            await self.redis.xgroup_create(stream(provider, batch), names.GROUP, "0",
                                           mkstream=True)
        except coredis.exceptions.StreamDuplicateConsumerGroupError:
            pass  # another process created it first


    async def was_withdrawn(self, request_id: str) -> bool:
        """Whether the client of this request left (see `withdraw`)."""
        return bool(await self.redis.exists([names.withdrawn(request_id)]))

    async def read(self, provider: str, consumer: str, count: int, block_ms: int | None, *,
                   batch: bool = False) -> list[Delivery]:
        """Read up to `count` new jobs, waiting at most `block_ms` for the first (None: not
        at all)."""
        reply = await self.redis.xreadgroup(
            names.GROUP, consumer, streams={stream(provider, batch): ">"},
            count=count, block=block_ms,
        )
        out: list[Delivery] = []
        for entries in (reply or {}).values():
            for entry in entries:
                entry_id = _bytes(entry.identifier)
                payload = entry.field_values.get(b"j")
                job = None if payload is None else _decode_job(_bytes(payload))
                if job is None:  # written by something else: never retried
                    await self.ack(provider, [entry_id], batch=batch)
                    continue
                out.append(Delivery(entry_id, job, 0, consumer))
        return out

    async def reclaim(self, provider: str, consumer: str, *, floor_ms: int, own_idle_ms: int,
                      count: int, batch: bool = False) -> list[Delivery]:
        """Take over up to `count` jobs of dead workers (no liveness key; idle at least
        `floor_ms`), and return our own entries idle `own_idle_ms` (read, maybe never run)."""
        rows: Any = await self._reclaim(
            keys=[stream(provider, batch)],
            args=[names.GROUP, consumer, floor_ms, count, own_idle_ms, names.alive("")])
        out: list[Delivery] = []
        for row in rows:
            entry_id, payload, deliveries = bytes(row[0]), bytes(row[1]), int(row[2])
            job = _decode_job(payload)
            if job is None:
                await self.ack(provider, [entry_id], batch=batch)
                continue
            out.append(Delivery(entry_id, job, deliveries, consumer))
        return out

    async def heartbeat(self, provider: str, consumer: str, entry_ids: Sequence[bytes],
                        alive_ms: int = 0, *, batch: bool = False) -> list[bytes]:
        """Keep `consumer` alive for `alive_ms` (when given) and reset the idle time of the
        entries it still owns; returns those another worker took over.

        The entries go `HEARTBEAT_ENTRIES` to a script call: a script holds Redis for its
        whole run, so one for all of a worker's thousands of held streams made every other
        command (every stream's chunks included) wait for all of them. Each call renews the
        liveness: on a busy worker the calls for thousands of entries can take longer than
        `alive_ms`, and a worker alive but slow must not be taken for dead meanwhile."""
        lost: list[bytes] = []
        for start in range(0, max(1, len(entry_ids)), HEARTBEAT_ENTRIES):
            part = entry_ids[start:start + HEARTBEAT_ENTRIES]
            found: Any = await self._heartbeat(
                keys=[stream(provider, batch), names.alive(consumer)],
                args=[names.GROUP, consumer, alive_ms, *part])
            lost += [bytes(entry_id) for entry_id in found]
        return lost

    async def retire(self, consumer: str) -> None:
        """A worker stops: its liveness key goes, so what it leaves is reclaimed at once."""
        await self.redis.delete([names.alive(consumer)])

    async def prune(self, provider: str, idle_ms: int, *, batch: bool = False) -> int:
        """Remove dead consumers that own nothing from the provider's group."""
        removed: Any = await self._prune(keys=[stream(provider, batch)],
                                         args=[names.GROUP, idle_ms, names.alive("")])
        return int(removed)

    async def ack(self, provider: str, entry_ids: Sequence[bytes], *,
                  batch: bool = False) -> None:
        """Remove finished entries from the stream and the pending list."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(stream(provider, batch), names.GROUP, list(entry_ids))
            pipe.xdel(stream(provider, batch), list(entry_ids))

    async def publish(self, channel: str, frame: Frame, timeout_s: float) -> int:
        """Publish one frame (in a round trip shared with other streams' frames, within
        `timeout_s`); returns how many ingress processes heard it."""
        return await self.outbox.publish(channel, frame_encoder.encode(frame), timeout_s)

    # ── stream integrity (output-began marker, stored big answers) ──────────────
    async def publish_head(self, channel: str, frame: Head, ttl_s: int) -> int:
        """Publish a stream's Head and mark that its output began, in one MULTI."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(names.began(frame.request_id), b"1", ex=max(ttl_s, 1))
            listeners = pipe.spublish(channel, frame_encoder.encode(frame))
        return int(await listeners)

    async def output_began(self, request_id: str) -> bool:
        """Whether an earlier run of this streamed request already published output."""
        return bool(await self.redis.exists([names.began(request_id)]))

    async def store_body(self, request_id: str, body: bytes, ttl_s: int) -> str:
        """Keep a whole answer too big for a reply frame; the ingress reads it once."""
        key = names.body(request_id)
        await self.redis.set(key, body, ex=max(ttl_s, 1))
        return key

    async def finish(self, delivery: Delivery, frame: Frame | None, *,
                     usage: dict[str, int] | None = None, forward: Job | None = None,
                     error: bool = False, retention_days: int = 400,
                     line: LineOutcome | None = None, healthy: bool = False) -> bool:
        """Publish the outcome, meter usage, and acknowledge: all or nothing (invariant 3).
        False when this consumer no longer owns the entry: then nothing was done.

        `usage` (a request that used tokens) goes to the monthly counters of the org, the
        key and the project; it and `error` (the job ended in an error) to the day's
        breakdown by dimension, which expires `retention_days` after the day.

        With `forward`, the job moves to another provider's stream instead of publishing;
        with `line` (a batch line: no frame) its outcome becomes a line of its batch's output
        or error file, a retry or nothing (`workers.batches.lines`); with neither (the client
        left) it is only acknowledged. `healthy` (the provider answered this attempt) is
        recorded for the provider's cool-downs (`workers.health`) in the same step. One
        script call: atomic, and one command on the worker's hot path instead of a MULTI of
        nine.
        """
        job = delivery.job
        batch = bool(job.batch)
        if forward is not None:
            target = stream(forward.route.provider, batch)
            payload, action = job_encoder.encode(forward), "forward"
        elif line is not None:
            target, payload, action = "", line.payload, line.mode
        elif frame is not None:
            target, payload, action = job.reply_to, frame_encoder.encode(frame), "publish"
        else:
            target, payload, action = "", b"", "ack"
        metered = usage or {}
        now = int(time.time())
        day = names.day(now)  # the month is the day's, so both agree around midnight
        month = day[:7]
        own = stream(job.route.provider, batch)
        done: Any = await self._finish(
            keys=[own, names.usage(job.org, month), target if forward is not None else own,
                  names.reservation(job.request_id), names.RESERVATIONS_DUE,
                  names.outcome(job.request_id), names.began(job.request_id),
                  names.usage_project(job.org, job.project, month),
                  names.usage_key(job.key_id, month), names.usage_day(job.org, day),
                  names.batch(job.batch) if batch else own,
                  line.key if line is not None and line.key else own,
                  *health_keys(job.route.provider)],
            args=[names.GROUP, delivery.entry_id, action, target, payload,
                  *(metered.get(field, 0) for field in USAGE_FIELDS),
                  delivery.consumer, OUTCOME_KEEP_MS,
                  *(metered.get(field, 0) for field in COST_FIELDS),
                  int(error), encode_dimensions(job.project, job.key_id, job.model,
                                                  job.route.provider, job.identity, job.thread,
                                                  "batch" if batch else ""),
                  day_expiry(now // 86_400 * 86_400, retention_days),
                  "1" if job.project else "0",
                  line.counter if line is not None else "", job.batch_line, "",
                  line.due if line is not None else 0,
                  line.keep_s if line is not None else 0, "1" if healthy else "0"])
        owned, event, failures = (int(value) for value in done)
        if event == 2:
            cooldown_ended(job.route.provider, failures)
        return bool(owned)


def stream(provider: str, batch: bool = False) -> str:
    """The provider's job stream, or (`batch`) its stream of batch lines."""
    return names.batch_queue(provider) if batch else names.queue(provider)


def _bytes(value: str | bytes) -> bytes:
    """The client is made with decode_responses=False: values arrive as bytes."""
    return value if isinstance(value, bytes) else value.encode()


def _decode_job(payload: bytes) -> Job | None:
    try:
        return job_decoder.decode(payload)
    except msgspec.DecodeError:
        log_event("job_undecodable", size=len(payload))
        return None
