"""The ingress side of the job streams: admitting a job, withdrawing it, reading usage.

Admission is one Lua script (limits, reservations and the bounded XADD together,
invariants 4 and 9), so two ingress processes can never both take the last place in a
queue or the last tokens of a plan. What a request reserves is a list of `Hold`s
(`schemas.reservations`): the worker's finish settles them, a withdraw releases them,
and admission sweeps those whose owners died. The worker side of the same streams
(read, heartbeat, reclaim, finish) is `workers.queue`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from schemas import names
from schemas.envelopes import Job, job_encoder
from schemas.reservations import RELEASE_LUA, Hold
from schemas.windows import WINDOW_LUA
from workers.connection import RedisClient

SWEEP_BATCH = 16  # expired reservations released per admission (bounded work per call)
EXPIRY_GRACE_S = 60.0  # past its job's deadline a reservation is abandoned (no job runs then)
MAX_ESTIMATE = 2**40  # tokens; above any plan, and far below what overflows a counter
# What one more entry can add to a stream's memory as Redis counts it, at most: its job
# rounded up to the allocator's next size class (jemalloc's are at most 25% apart), and a
# node of its own with the entry's id and field.
ENTRY_GROWTH = 1.25
ENTRY_OVERHEAD = 256

# Sweep expired reservations; refuse if any limit has no room or the queue is full;
# else reserve every Hold, record the reservation and XADD: one step (invariants 4, 9).
# Entries stay in the stream until acknowledged, so "waiting" is the length minus
# those delivered and running. Windows are read on Redis's clock (one for all ingresses).
# Returns {code, entry id or refused index, ms until the refused limit has room, then
# for each window Hold: its level (after this request, if admitted), ms until empty}.
_ADMIT = RELEASE_LUA + f"""
local ENTRY_GROWTH, ENTRY_OVERHEAD = {ENTRY_GROWTH}, {ENTRY_OVERHEAD}""" + """
local clock = redis.call('TIME')
local sec = tonumber(clock[1])
local now_ms = sec * 1000 + math.floor(tonumber(clock[2]) / 1000)
for _, record in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[4],
                                   'LIMIT', 0, tonumber(ARGV[6]))) do
  release(record, KEYS[3])
end
local holds = tonumber(ARGV[7])
local levels, buckets, refused, room = {}, {}, -1, 0
for i = 0, holds - 1 do
  local at = 9 + i * 6
  local amount, limit, flags = tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2]), ARGV[at + 5]
  local level
  if string.find(flags, 'w', 1, true) then
    level, buckets[i] = window_level(ARGV[at], sec)
  else
    level = tonumber(redis.call('GET', ARGV[at]) or '0')
  end
  if ARGV[at + 3] ~= '' then
    level = level + tonumber(redis.call('HGET', ARGV[at + 3], ARGV[at + 4]) or '0')
  end
  levels[i] = level
  local fit = string.find(flags, 'f', 1, true) and level + amount > limit
  if refused < 0 and (level >= limit or fit) then
    refused = i
    if buckets[i] then room = window_room_ms(buckets[i], level, amount, limit, now_ms) end
  end
end
local function answer(code, what)
  local out = {code, what, room}
  for i = 0, holds - 1 do
    if buckets[i] then
      table.insert(out, levels[i])
      table.insert(out, window_empty_ms(buckets[i], now_ms))
    end
  end
  return out
end
if refused >= 0 then return answer(0, refused) end
local max = tonumber(ARGV[1])
local len = redis.call('XLEN', KEYS[1])
if len >= max then
  local ok, pend = pcall(redis.call, 'XPENDING', KEYS[1], ARGV[3])
  local running = 0
  if ok then running = pend[1] end
  if len - running >= max then return answer(-1, 0) end
end
-- The provider's byte budget (max_queue_bytes, ARGV[8]; -1: none): the stream's memory as
-- Redis counts it, running entries included, plus this job must fit. Counting it walks
-- every node of the stream, so the count is kept a second (KEYS[4]) with what every job
-- admitted since can have added at most; a job that does not fit by that reckoning is
-- refused only on a new count.
local max_bytes = tonumber(ARGV[8])
if max_bytes >= 0 then
  local held = tonumber(redis.call('GET', KEYS[4]) or '-1')
  if held < 0 or held + #ARGV[2] > max_bytes then
    held = redis.call('MEMORY', 'USAGE', KEYS[1], 'SAMPLES', '0') or 0
    redis.call('SET', KEYS[4], held, 'PX', 1000)
  end
  if held + #ARGV[2] > max_bytes then return answer(-2, 0) end
  redis.call('INCRBY', KEYS[4], math.floor(#ARGV[2] * ENTRY_GROWTH) + ENTRY_OVERHEAD)
end
local recorded = 0
for i = 0, holds - 1 do
  local at = 9 + i * 6
  local counter, amount, flags = ARGV[at], tonumber(ARGV[at + 1]), ARGV[at + 5]
  if buckets[i] then
    window_add(counter, sec, amount)
    levels[i] = levels[i] + amount
    table.insert(buckets[i], {sec, amount})
    -- Requests per minute are kept: a request counts once admitted, whatever its end.
    if not string.find(flags, 'k', 1, true) then
      redis.call('HINCRBY', KEYS[2], counter .. '|' .. sec, amount)
      recorded = recorded + 1
    end
  else
    redis.call('INCRBY', counter, amount)
    redis.call('HINCRBY', KEYS[2], counter, amount)
    recorded = recorded + 1
  end
end
if recorded > 0 then redis.call('ZADD', KEYS[3], ARGV[5], KEYS[2]) end
return answer(1, redis.call('XADD', KEYS[1], '*', 'j', ARGV[2]))
"""

# The client left: drop the queued entry, remember the request as withdrawn, release
# its reservation and tell a worker running it to stop; one step.
_WITHDRAW = RELEASE_LUA + """
redis.call('XDEL', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], '1', 'EX', ARGV[2])
release(KEYS[3], KEYS[4])
redis.call('SPUBLISH', ARGV[3], ARGV[4])
return 1
"""

_RELEASE = RELEASE_LUA + "return release(KEYS[1], KEYS[2])"

# The state of some windows, reserving nothing: {level, ms until empty} for each KEYS[i].
_PEEK = WINDOW_LUA + """
local clock = redis.call('TIME')
local sec = tonumber(clock[1])
local now_ms = sec * 1000 + math.floor(tonumber(clock[2]) / 1000)
local out = {}
for _, key in ipairs(KEYS) do
  local level, buckets = window_level(key, sec)
  table.insert(out, level)
  table.insert(out, window_empty_ms(buckets, now_ms))
end
return out
"""

ADMITTED, OVER_LIMIT, QUEUE_FULL, QUEUE_BYTES_FULL = 1, 0, -1, -2


@dataclass(frozen=True, slots=True)
class WindowState:
    """A rolling window as admission left it: its Hold, its level (this request
    included when admitted) and the ms until everything in it has aged out."""

    hold: Hold
    level: int
    empty_ms: int

    @property
    def remaining(self) -> int:
        return max(self.hold.limit - self.level, 0)


@dataclass(frozen=True, slots=True)
class Verdict:
    """Admission's answer: the entry id when admitted, else the Hold that refused it
    (`refused`, and for a window the ms until it has room: `room_ms`, -1 never), or
    neither when the provider's queue is full. `windows`: every window Hold's state."""

    code: int
    entry_id: bytes = b""
    refused: Hold | None = None
    room_ms: int = 0
    windows: tuple[WindowState, ...] = ()


def estimate_tokens(body_bytes: int, max_output: int | None, default_output: int,
                    choices: int = 1) -> int:
    """What a request may cost in tokens, reserved until its real usage is known.

    The prompt is estimated as a quarter of the body's bytes (above the real count for
    text, since the JSON around it is counted too), the output as the request's own
    `max_tokens` limit, else `default_output`, for each of `choices` answers.
    """
    output = default_output if max_output is None else max_output
    # Clamped: a client's absurd max_tokens must not overflow Redis's 64-bit counters.
    return min(prompt_estimate(body_bytes) + output * choices, MAX_ESTIMATE)


def prompt_estimate(body_bytes: int) -> int:
    """The prompt's share of `estimate_tokens`: a quarter of the body's bytes."""
    return -(-body_bytes // 4)


def holds_for(job: Job, month: str, *, token_limit: int | None, estimate: int,
              org_cap: int) -> list[Hold]:
    """The limits a job falls under: its org's monthly plan (if it has one), and its
    org's share of the provider's queue."""
    holds = []
    if token_limit is not None:
        holds.append(Hold(counter=names.held_tokens(job.org, month), amount=estimate,
                          limit=token_limit, code="subscription_limit",
                          used=names.usage(job.org, month), used_field="tokens"))
    holds.append(Hold(counter=names.held_queue(job.route.provider, job.org), amount=1,
                      limit=org_cap, code="queue_full"))
    return holds


def _flags(hold: Hold) -> str:
    """A Hold's options as the admission script reads them."""
    return ("f" if hold.fit else "") + ("w" if hold.window else "") + ("k" if hold.kept else "")


class Admission:
    """Puts jobs on the provider streams and takes back those whose client left."""

    def __init__(self, redis: RedisClient) -> None:
        self.redis = redis
        self._admit = redis.register_script(_ADMIT)
        self._withdraw = redis.register_script(_WITHDRAW)
        self._release = redis.register_script(_RELEASE)
        self._peek = redis.register_script(_PEEK)

    async def admit(self, job: Job, *, holds: list[Hold], max_queue: int,
                    expires_at: float, max_queue_bytes: int | None = None) -> Verdict:
        """Enqueue `job` and reserve its `holds` unless a limit or the queue is full.

        The reservation is swept as abandoned after `expires_at` (unix time) if nothing
        settled it by then. `max_queue_bytes` bounds the stream's memory in Redis.
        """
        args: list[Any] = [max_queue, job_encoder.encode(job), names.GROUP, time.time(),
                           expires_at, SWEEP_BATCH, len(holds),
                           -1 if max_queue_bytes is None else max_queue_bytes]
        for hold in holds:
            args += [hold.counter, hold.amount, hold.limit, hold.used, hold.used_field,
                     _flags(hold)]
        result: Any = await self._admit(
            keys=[names.queue(job.route.provider), names.reservation(job.request_id),
                  names.RESERVATIONS_DUE, names.queue_bytes(job.route.provider)], args=args)
        code = int(result[0])
        figures = iter(int(figure) for figure in result[3:])
        windows = tuple(WindowState(hold, next(figures), next(figures))
                        for hold in holds if hold.window)
        if code == ADMITTED:
            return Verdict(ADMITTED, entry_id=result[1], windows=windows)
        if code == OVER_LIMIT:
            return Verdict(OVER_LIMIT, refused=holds[int(result[1])], room_ms=int(result[2]),
                           windows=windows)
        return Verdict(code, windows=windows)  # QUEUE_FULL or QUEUE_BYTES_FULL

    async def withdraw(self, provider: str, entry_id: bytes, request_id: str,
                       remember_s: float) -> None:
        """The client left: drop its queued job and its reservation, tell a worker
        running it to stop, and remember it for `remember_s` so a copy moved to a
        failover route is not started."""
        await self._withdraw(
            keys=[names.queue(provider), names.withdrawn(request_id),
                  names.reservation(request_id), names.RESERVATIONS_DUE],
            args=[entry_id, max(1, int(remember_s)), names.CANCEL_CHANNEL, request_id])

    async def peek(self, holds: list[Hold]) -> tuple[WindowState, ...]:
        """The state of the window Holds among `holds`, reserving nothing (for the
        headers of an answer that never reached admission)."""
        windows = [hold for hold in holds if hold.window]
        if not windows:
            return ()
        result: Any = await self._peek(keys=[hold.counter for hold in windows], args=[])
        figures = iter(int(figure) for figure in result)
        return tuple(WindowState(hold, next(figures), next(figures)) for hold in windows)

    async def release(self, request_id: str) -> bool:
        """Give back what a request reserved; False if it was already settled."""
        released: Any = await self._release(
            keys=[names.reservation(request_id), names.RESERVATIONS_DUE])
        return bool(released)

    async def usage(self, org: str, when: str | None = None) -> dict[str, int]:
        """An org's metered usage for a month (default: this one)."""
        raw = await self.redis.hgetall(names.usage(org, when or names.month()))
        return {k.decode(): int(v) for k, v in raw.items()}
