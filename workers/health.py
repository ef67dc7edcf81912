"""The worker side of provider cool-downs: recording how each job's call to a provider went.

A provider whose jobs fail `cooldown_failures` times in a row (5xx, timeouts, connection
errors) goes on a cool-down of `cooldown_s`: a key with a TTL that every ingress reads
when it orders a request's routes (`ingress.health`). When the key expires the provider
is on probation: the ingress that takes its one probe token sends it one request; the
success of any job (outside the cool-down itself) clears the streak and the token, and a
failure while on probation starts the next cool-down. Each outcome is one Lua script, so workers on
several machines keep one count.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

import trio

from schemas import names
from schemas.config import Config
from workers.connection import RedisClient
from workers.logs import log_event
from workers.providers._base import CLIENT_FAULT, UpstreamFailure

# A success for a provider (defined for the scripts that record one: `_RECORD` here, and
# the worker's finish script, which records a job's success in the step that answers it).
# Returns {event, failures}: event 2 = a cool-down ended, 0 = nothing changed.
HEALTHY_LUA = """
local function provider_ok(health, cooldown, probe)
  if redis.call('EXISTS', health) == 0 then return {0, 0} end
  -- A success while the cool-down runs (a job begun before it) ends nothing: the cool-down
  -- runs its course and the probe after it decides.
  if redis.call('EXISTS', cooldown) == 1 then return {0, 0} end
  local state = redis.call('HMGET', health, 'fails', 'tripped')
  redis.call('DEL', health, cooldown, probe)
  if state[2] then return {2, tonumber(state[1] or '0')} end
  return {0, tonumber(state[1] or '0')}
end
"""

# KEYS: health hash, cool-down key, probe token. ARGV: 'ok' | 'fail', threshold,
# cool-down ms, how long a streak is remembered (ms).
# Returns {event, failures}: event 1 = a cool-down began, 2 = one ended, 0 = neither.
_RECORD = HEALTHY_LUA + """
if ARGV[1] == 'ok' then return provider_ok(KEYS[1], KEYS[2], KEYS[3]) end
local fails = redis.call('HINCRBY', KEYS[1], 'fails', 1)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
local threshold = tonumber(ARGV[2])
if threshold > 0 and fails >= threshold and redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('HSET', KEYS[1], 'tripped', 1)
  redis.call('SET', KEYS[2], fails, 'PX', ARGV[3])
  redis.call('DEL', KEYS[3])
  return {1, fails}
end
return {0, fails}
"""
STREAK_MEMORY_MS = 3_600_000  # a streak with no new failure for an hour is forgotten

Verdict = Literal["ok", "fail"]


def verdict(error: BaseException | None) -> Verdict | None:
    """What a job's outcome says about its provider: None when it says nothing.

    5xx, timeouts and unreachable or broken answers are the provider's failures; an answer
    (a 400 about the client's request included) is its success. Rate limits (429), refused
    credentials and everything that is not an upstream call (the client left, a deadline
    passed before the call, a bug) say nothing about the provider's health.
    """
    if error is None:
        return "ok"
    if not isinstance(error, UpstreamFailure) or error.code == "no_provider":
        return None
    upstream = error.details.get("status") if error.details else None
    if upstream is None:
        return "fail"  # timed out, unreachable, cut short or malformed
    if upstream in CLIENT_FAULT:
        return "ok"
    return "fail" if upstream >= 500 or upstream == 408 else None


class ProviderHealth:
    """Records job outcomes per provider in Redis (see the module docstring)."""

    def __init__(self, redis: RedisClient, config: Config) -> None:
        self.config = config
        self._record = redis.register_script(_RECORD)

    @asynccontextmanager
    async def watch(self, provider: str) -> AsyncIterator[None]:
        """Run one job's attempt at `provider` and record what its failure says.

        A success is not recorded here: the finish script records it in the step that
        answers the job (`Queue.finish(healthy=True)`), saving a round trip per job. The
        attempt's exception passes through unchanged; recording never raises.
        """
        try:
            yield
        except BaseException as exc:
            said = verdict(exc)
            if said is not None:
                await self.record(provider, said)
            raise

    async def record(self, provider: str, said: Verdict) -> None:
        """Count one outcome for `provider`; log when a cool-down begins or ends."""
        settings = self.config.providers.get(provider)
        if settings is None:
            return
        try:
            with trio.fail_after(self.config.limits.redis_timeout_s):
                result: Any = await self._record(
                    keys=health_keys(provider),
                    args=[said, settings.cooldown_failures, int(settings.cooldown_s * 1000),
                          STREAK_MEMORY_MS + int(settings.cooldown_s * 1000)])
        except Exception as exc:  # Redis trouble must not change the job's outcome
            log_event("provider_health_unrecorded", provider=provider, error=type(exc).__name__)
            return
        event, failures = int(result[0]), int(result[1])
        if event == 1:
            log_event("provider_cooldown", provider=provider, phase="start", failures=failures,
                      seconds=settings.cooldown_s)
        elif event == 2:
            cooldown_ended(provider, failures)


def health_keys(provider: str) -> list[str]:
    """The keys of `provider`'s health, in the order `provider_ok` takes them."""
    return [names.health(provider), names.cooldown(provider), names.probe(provider)]


def cooldown_ended(provider: str, failures: int) -> None:
    """Log the end of `provider`'s cool-down (its probe, or any job after it, succeeded)."""
    log_event("provider_cooldown", provider=provider, phase="end", failures=failures)
