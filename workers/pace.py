"""Sending upstream at the provider's pace: `rpm` and `tpm` shared by every worker process.

A provider's `rpm` and `tpm` (`schemas.providers.ProviderBase`; None = unlimited) bound
what every worker process together sends it in ANY rolling `WINDOW_MS`: before each
upstream call the runner awaits `Pace.acquire`, which returns once the call fits, and
afterwards `Pace.settle`s the window with the call's real usage.

A window is a sorted set (`names.pace_window(limit, provider)`) of one member per call,
`{id}:{amount}` scored by the millisecond it was sent, and its running total (the same
name with `-sum`). One Lua script reads Redis's own `TIME` (one clock for every worker),
drops the members that left the window, and adds the call to every window only if it
fits in all of them: exact to the millisecond, never a 1-second bucket. A member counts
`GUARD_MS` longer than the window, so a call's trip from the check to the upstream
(event-loop delays, a new connection) cannot make the upstream's own count of the same
rolling minute see one call more than the limit.

Batch lines (`job.batch`) may use only `1 - batch.interactive_share` of each limit: a
batch line must fit in the provider's window (all traffic, the whole limit) and in the
batch lines' own (`batch-rpm`, `batch-tpm`: that share of it), so interactive traffic
always has its share, and the batch takes what interactive traffic leaves up to its own.
Batch lines never go while `names.pace_pause(provider)` exists (set for the
`Retry-After` of an upstream 429), and are spread evenly (`spread-rpm`: at most BURST
calls in any BURST / share of the window; `spread-tpm`: 1/60 of their token share in any
1/60 of it). A batch would otherwise take its whole minute in the first seconds and, the
window being rolling, again every minute, and then every burst of calls would crowd the
interactive ones on the workers' CPUs. Interactive calls ignore the pause.

Tokens are counted before the call runs, from its body alone (`estimate`): a quarter of
the body's bytes for the prompt (the JSON around the text makes this above the real
count for ordinary text) plus the output limit the body sets (`max_completion_tokens`,
`max_tokens`, `max_output_tokens`, times `n`), else `limits.reserve_output_tokens`;
embeddings have no output. When the call answers, its member is replaced by one of the
real usage (`settle`); a failed call keeps its estimate (the upstream may have counted
it). So an estimate above the real usage delays calls only while the call runs, and one
below it (prompts of dense text, such as CJK) may let the upstream see the difference
of the calls in flight over `tpm` at most; its 429 then pauses batch traffic. One call
whose estimate exceeds a budget counts as the whole budget (it runs in an empty window).

With neither limit set an interactive call costs nothing here (no Redis call); a batch
line costs one PTTL (the pause).
"""

from __future__ import annotations

import itertools
import math
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import coredis
import msgspec
import trio

from schemas import names
from schemas.chat import Usage
from schemas.config import Config
from schemas.envelopes import Job
from schemas.errors import GatewayError
from schemas.providers import ProviderBase
from workers.connection import RedisClient
from workers.logs import log_event
from workers.providers._base import UpstreamFailure

WINDOW_MS = 60_000  # the rolling window of `rpm` and `tpm` (per minute: the config's unit)
GUARD_MS = 500  # a call counts this much longer than the window (see the module docstring)
# Batch lines are spread: at most BURST calls in any window_ms * BURST / budget (10 calls
# in 133 ms at 4,500 a minute), and at most 1/SPREAD of their token budget in any 1/SPREAD
# of the window.
BURST = 10
SPREAD = 60
STEP_S = 0.25  # longest sleep between two tries of a waiting call (cancellable, re-checked)
MAX_PAUSE_S = 86_400.0  # an upstream's Retry-After is honoured up to a day
SCAN = 256  # members read to find when a refused call fits (the wait is re-checked anyway)

# KEYS: the pause key, then (sorted set, total) of each window.
# ARGV: batch ('1' = the pause applies), call id, (span ms, limit, amount) per window, and
# how many members to read at most to find when a refused call fits.
# Returns {0, now_ms} when the call was added to every window, else {ms to wait, index of
# the window that refused it (0: the pause)}.
_ACQUIRE = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
if ARGV[1] == '1' then
  local left = redis.call('PTTL', KEYS[1])
  if left > 0 then return {left, 0} end
end
local n = (#ARGV - 3) / 3
local scan = tonumber(ARGV[#ARGV])
for i = 1, n do
  local key, total = KEYS[2 * i], KEYS[2 * i + 1]
  local span, limit, amount = tonumber(ARGV[3 * i]), tonumber(ARGV[3 * i + 1]), tonumber(ARGV[3 * i + 2])
  local gone = redis.call('ZRANGEBYSCORE', key, '-inf', now - span)
  if #gone > 0 then
    local freed = 0
    for _, member in ipairs(gone) do freed = freed + tonumber(string.match(member, ':(%d+)$')) end
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now - span)
    if redis.call('EXISTS', key) == 0 then redis.call('DEL', total)
    else redis.call('DECRBY', total, freed) end
  end
  local level = tonumber(redis.call('GET', total) or '0')
  if level + amount > limit then
    local entries = redis.call('ZRANGE', key, 0, scan - 1, 'WITHSCORES')
    local freed, at = 0, now
    for j = 1, #entries, 2 do
      freed = freed + tonumber(string.match(entries[j], ':(%d+)$'))
      at = tonumber(entries[j + 1]) + span
      if level - freed + amount <= limit then break end
    end
    return {math.max(at - now, 1), i}
  end
end
for i = 1, n do
  local key, total = KEYS[2 * i], KEYS[2 * i + 1]
  local span, amount = tonumber(ARGV[3 * i]), ARGV[3 * i + 2]
  redis.call('ZADD', key, now, ARGV[2] .. ':' .. amount)
  redis.call('INCRBY', total, amount)
  redis.call('PEXPIRE', key, span + 1000)
  redis.call('PEXPIRE', total, span + 1000)
end
return {0, now}
"""

# KEYS: (sorted set, total) of each token window. ARGV: (old member, new member, delta)
# of each. A member that already left its window is not brought back.
_SETTLE = """
for i = 1, #KEYS, 2 do
  local at = (i - 1) / 2 * 3
  local score = redis.call('ZSCORE', KEYS[i], ARGV[at + 1])
  if score then
    redis.call('ZREM', KEYS[i], ARGV[at + 1])
    redis.call('ZADD', KEYS[i], score, ARGV[at + 2])
    redis.call('INCRBY', KEYS[i + 1], ARGV[at + 3])
  end
end
return 1
"""

# KEYS: the pause key. ARGV: ms. Keeps the later end when a pause is already running.
_PAUSE = """
local ms = tonumber(ARGV[1])
if redis.call('PTTL', KEYS[1]) < ms then redis.call('SET', KEYS[1], '1', 'PX', ms) end
return redis.call('PTTL', KEYS[1])
"""


class _Limits(msgspec.Struct):
    """The fields of a request body that bound its output (the rest is skipped unread)."""

    max_completion_tokens: int | None = None
    max_tokens: int | None = None
    max_output_tokens: int | None = None
    n: int | None = None


_limits = msgspec.json.Decoder(_Limits).decode


def estimate(job: Job, reserve_output: int) -> int:
    """The tokens a call of `job` is counted for before it runs (module docstring)."""
    prompt = -(-len(job.body) // 4)
    if job.endpoint == "embeddings":
        return prompt
    try:
        limits = _limits(job.body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        limits = _Limits()
    output = next((v for v in (limits.max_completion_tokens, limits.max_tokens,
                               limits.max_output_tokens) if v is not None), reserve_output)
    return prompt + max(output, 0) * max(limits.n or 1, 1)


def throttled(failure: UpstreamFailure) -> bool:
    """The upstream answered 429 (its own rate limit)."""
    return failure.details is not None and failure.details.get("status") == 429


@dataclass(frozen=True, slots=True)
class _Window:
    label: str  # rpm, tpm, batch-rpm, batch-tpm
    key: str
    span_ms: int
    limit: int
    amount: int


@dataclass(frozen=True, slots=True)
class Ticket:
    """A call counted in its provider's windows: what `settle` corrects."""

    member: str  # the call's id
    tokens: tuple[_Window, ...]  # the token windows it was counted in (estimate: `amount`)


class Pace:
    """The per-provider rolling windows of one worker process (module docstring)."""

    def __init__(self, redis: RedisClient, config: Config, *,
                 window_ms: int | None = None, guard_ms: int | None = None) -> None:
        self.config = config
        # Other lengths are for tests only: the config's limits are per minute.
        self.window_ms = WINDOW_MS if window_ms is None else window_ms
        self.guard_ms = GUARD_MS if guard_ms is None else guard_ms
        self._acquire = redis.register_script(_ACQUIRE)
        self._settle = redis.register_script(_SETTLE)
        self._pause = redis.register_script(_PAUSE)
        self._ids = itertools.count()
        self._gates: dict[tuple[str, bool], trio.Lock] = {}
        self._prefix = os.urandom(5).hex()

    def _windows(self, provider: str, settings: ProviderBase, batch: bool,
                 tokens: int) -> list[_Window]:
        """Every window a call must fit in: the provider's (all traffic); for a batch line
        also the batch lines' own (their share of the limit) and its spread."""
        span = self.window_ms + self.guard_ms
        out = []
        for label, limit, amount in (("rpm", settings.rpm, 1), ("tpm", settings.tpm, tokens)):
            if limit is None:
                continue
            windows = [(label, span, limit)]
            if batch:
                budget = max(int(limit * (1 - self.config.batch.interactive_share)), 1)
                spread = (max(self.window_ms * BURST // budget, 1), BURST) if label == "rpm" \
                    else (max(self.window_ms // SPREAD, 1), -(-budget // SPREAD))
                windows += [(f"batch-{label}", span, budget), (f"spread-{label}", *spread)]
            out += [_Window(name, names.pace_window(name, provider), length, most,
                            min(amount, most)) for name, length, most in windows]
        return out

    def limited(self, job: Job) -> bool:
        """Whether `acquire` has anything to check for this job (else it costs nothing)."""
        settings = self.config.providers.get(job.route.provider)
        return settings is not None and (job.batch != "" or settings.rpm is not None
                                         or settings.tpm is not None)

    async def acquire(self, job: Job,
                      wanted: Callable[[], Awaitable[bool]] | None = None) -> Ticket | None:
        """Wait until a call of `job` to its route's provider fits, and count it.

        Sleeps in steps of at most STEP_S (cancellable); raises a 504 GatewayError once the
        wait would pass the job's deadline, a 503 when Redis does not answer, and NotWanted
        when `wanted` (asked every WANTED_S while it waits) says the call is no longer
        wanted (a batch line whose batch is being cancelled): nothing was counted then.
        """
        if not self.limited(job):
            return None
        provider = job.route.provider
        settings = self.config.providers[provider]
        batch = job.batch != ""
        tokens = estimate(job, self.config.limits.reserve_output_tokens) \
            if settings.tpm is not None else 0
        windows = self._windows(provider, settings, batch, tokens)
        member = f"{self._prefix}{next(self._ids):x}"
        keys = [names.pace_pause(provider)]
        args: list[Any] = ["1" if batch else "0", member]
        for window in windows:
            keys += [window.key, window.key + "-sum"]
            args += [window.span_ms, window.limit, window.amount]
        args.append(SCAN)
        wait_ms, which = await self._call(self._acquire, keys, args)
        if wait_ms:
            self._wait(job, wait_ms, which, windows)
            # One waiting call per provider and traffic class of this process asks Redis at
            # a time (in arrival order), so a freed slot is not raced for by every waiter.
            started = time.monotonic()
            left = job.deadline - time.time()
            unwanted = trio.Event()
            with trio.move_on_after(max(left, 0)) as scope:
                async with trio.open_nursery() as waiting:
                    if wanted is not None:  # asked now and then while this call waits
                        waiting.start_soon(_watch, wanted, scope, unwanted)
                    async with self._gates.setdefault((provider, batch), trio.Lock()):
                        while wait_ms:
                            wait_ms, which = await self._call(self._acquire, keys, args)
                            if wait_ms:
                                self._wait(job, wait_ms, which, windows)
                                await trio.sleep(min(wait_ms / 1000, STEP_S))
                    waiting.cancel_scope.cancel()
            if unwanted.is_set():
                raise NotWanted
            if scope.cancelled_caught:  # the deadline passed, waiting for the gate
                self._wait(job, math.inf, which, windows)
            if time.monotonic() - started >= (60 if batch else 1):  # batch lines do wait
                log_event("pace_waited", request_id=job.request_id, provider=provider,
                          batch=batch, seconds=round(time.monotonic() - started, 3))
        return Ticket(member, tuple(w for w in windows if w.label in ("tpm", "batch-tpm")))

    @staticmethod
    def _wait(job: Job, wait_ms: float, which: int, windows: list[_Window]) -> None:
        """Raise the 504 when waiting `wait_ms` would pass the job's deadline."""
        if wait_ms / 1000 < job.deadline - time.time():
            return
        why = "paused after a 429" if which == 0 else \
            f"at its {windows[which - 1].label} limit ({windows[which - 1].limit})"
        raise GatewayError(504, "upstream_timeout", f"the request's deadline passed while "
                           f"provider {job.route.provider!r} was {why}")

    async def settle(self, ticket: Ticket | None, usage: Usage) -> None:
        """Replace a call's token estimate by its real usage; never raises."""
        if ticket is None or not ticket.tokens:
            return
        keys: list[str] = []
        args: list[Any] = []
        for window in ticket.tokens:
            used = min(usage.prompt_tokens + usage.completion_tokens, window.limit)
            if used != window.amount:
                keys += [window.key, window.key + "-sum"]
                args += [f"{ticket.member}:{window.amount}", f"{ticket.member}:{used}",
                         used - window.amount]
        if not keys:
            return
        try:
            with trio.fail_after(self.config.limits.redis_timeout_s):
                await self._settle(keys=keys, args=args)
        except Exception as exc:  # the estimate stays counted: later calls wait a little more
            log_event("pace_unsettled", error=type(exc).__name__)

    async def pause(self, provider: str, seconds: float) -> float:
        """Pause `provider`'s batch traffic for `seconds` (a running later end is kept);
        returns the seconds the pause has left."""
        ms = max(1, int(min(max(seconds, 0.0), MAX_PAUSE_S) * 1000))
        left: Any = await self._redis_call(self._pause, [names.pace_pause(provider)], [ms])
        log_event("pace_paused", provider=provider, seconds=round(int(left) / 1000, 3))
        return int(left) / 1000

    async def on_failure(self, job: Job, failure: UpstreamFailure) -> None:
        """After an upstream 429: pause the provider's batch traffic for its Retry-After
        (`batch.retry_base_s` when it sent none). Never raises."""
        if not throttled(failure):
            return
        seconds = failure.retry_after if failure.retry_after is not None \
            else self.config.batch.retry_base_s
        try:
            await self.pause(job.route.provider, seconds)
        except GatewayError:
            log_event("pace_pause_failed", provider=job.route.provider)

    async def _call(self, script: Any, keys: list[str], args: list[Any]) -> tuple[int, int]:
        result: Any = await self._redis_call(script, keys, args)
        return int(result[0]), int(result[1])

    async def _redis_call(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            with trio.fail_after(self.config.limits.redis_timeout_s):
                return await script(keys=keys, args=args)
        except (trio.TooSlowError, coredis.exceptions.RedisError, OSError) as exc:
            raise GatewayError(503, "service_unavailable",
                               "the gateway cannot reach Redis") from exc


class NotWanted(Exception):
    """A call given up while it waited for room: its `wanted` check said no."""


WANTED_S = 0.5  # how often a waiting call asks whether it is still wanted


async def _watch(wanted: Callable[[], Awaitable[bool]], scope: trio.CancelScope,
                 unwanted: trio.Event) -> None:
    """Cancel `scope` (a call's wait) as soon as `wanted` says no."""
    while True:
        await trio.sleep(WANTED_S)
        if not await wanted():
            unwanted.set()
            scope.cancel()
            return
