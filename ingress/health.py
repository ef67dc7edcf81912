"""The ingress's view of the providers: cool-downs and queue depths, read from Redis.

Workers record each provider's failure streak and cool-down (`workers.health`); this
view re-reads them, with every provider's count of waiting jobs, in one read-only Lua
script every `route_refresh_s`, so ordering a request's routes costs no Redis round trip.
The one exception is probation (a cool-down just ended): the request that takes the
provider's probe token (one script: it checks the cool-down and SET NX in one step)
tries it, and every other request skips it until a worker records the probe's outcome.
"""

from __future__ import annotations

from typing import Any

import trio

from ingress.balance import ProviderState, Wheel, order_routes
from schemas import names
from schemas.config import Config, Route
from workers.connection import RedisClient
from workers.logs import log_event

# KEYS: per provider: health hash, cool-down key, probe token, job stream. ARGV[1]: group.
# Returns per provider {tripped, cool-down ms left (<= 0: none), probing, waiting}.
_READ = """
local out = {}
for i = 1, #KEYS, 4 do
  local tripped = redis.call('HEXISTS', KEYS[i], 'tripped')
  local cool = redis.call('PTTL', KEYS[i + 1])
  local probing = redis.call('EXISTS', KEYS[i + 2])
  local waiting = redis.call('XLEN', KEYS[i + 3])
  if waiting > 0 then
    local ok, pend = pcall(redis.call, 'XPENDING', KEYS[i + 3], ARGV[1])
    if ok then waiting = waiting - pend[1] end
  end
  table.insert(out, {tripped, cool, probing, waiting})
end
return out
"""

# KEYS: health hash, cool-down key, probe token. ARGV: token TTL (ms).
# 1: this request is the probe; 0: not now (cooling, or someone else probes); 2: healthy.
_TAKE_PROBE = """
if redis.call('HEXISTS', KEYS[1], 'tripped') == 0 then return 2 end
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
if redis.call('SET', KEYS[3], '1', 'NX', 'PX', ARGV[1]) then return 1 end
return 0
"""


class RouteHealth:
    """Orders each request's routes from the latest view of the providers."""

    def __init__(self, redis: RedisClient, config: Config) -> None:
        self.config = config
        self.providers = list(config.providers)
        self.states: dict[str, ProviderState] = {}
        self._cool_until: dict[str, float] = {}  # trio clock: when a cool-down we saw ends
        self._wheel = Wheel()
        self._read = redis.register_script(_READ)
        self._take_probe = redis.register_script(_TAKE_PROBE)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Refresh the view every `route_refresh_s` until cancelled. Redis trouble keeps
        the last view (admission answers 503 meanwhile) and is logged once per outage."""
        task_status.started()
        failing = False
        while True:
            try:
                with trio.fail_after(self.config.limits.redis_timeout_s):
                    await self.refresh()
                failing = False
            except Exception as exc:
                if not failing:
                    log_event("route_health_unread", error=type(exc).__name__)
                failing = True
            await trio.sleep(self.config.limits.route_refresh_s)

    async def refresh(self) -> None:
        """Read every provider's cool-down, probe and waiting jobs (one round trip)."""
        keys = [key for p in self.providers for key in (
            names.health(p), names.cooldown(p), names.probe(p), names.queue(p))]
        if not keys:  # no provider: nothing to read (and a script needs a key on a cluster)
            return
        result: Any = await self._read(keys=keys, args=[names.GROUP])
        now = trio.current_time()
        states: dict[str, ProviderState] = {}
        for provider, (tripped, cool_ms, probing, waiting) in zip(self.providers, result,
                                                                  strict=True):
            cool_ms = int(cool_ms)
            self._cool_until[provider] = now + cool_ms / 1000 if cool_ms > 0 else 0.0
            states[provider] = ProviderState(tripped=bool(tripped), cooling=cool_ms > 0,
                                             probing=bool(probing), waiting=max(0, int(waiting)))
        self.states = states

    async def order(self, slug: str, routes: list[Route]) -> list[Route]:
        """`routes` in the order this request tries them, as its job carries them."""
        return [_bare(route) for route in await self._order(slug, routes)]

    async def _order(self, slug: str, routes: list[Route]) -> list[Route]:
        if len(routes) < 2:
            return routes
        now = trio.current_time()
        probe = None
        for route in routes:
            state = self.states.get(route.provider)
            if state is None or not state.tripped:
                continue
            if state.cooling and now >= self._cool_until.get(route.provider, 0.0):
                state.cooling = False  # it ended since the last read
            if state.probe_due:
                state.probing = True  # whatever the answer, this ingress asks once per read
                if await self._probe(route.provider):
                    probe = route.provider
                    break
        return order_routes(routes, self.states, wheel=self._wheel, key=slug,
                            backlog_skew=self.config.limits.backlog_skew, probe=probe)

    async def _probe(self, provider: str) -> bool:
        """Take the provider's probe token; False when someone else has it (or on trouble)."""
        ttl_ms = int(self.config.providers[provider].cooldown_s * 1000)
        try:
            with trio.fail_after(self.config.limits.redis_timeout_s):
                taken = int(await self._take_probe(
                    keys=[names.health(provider), names.cooldown(provider), names.probe(provider)],
                    args=[ttl_ms]))
        except Exception as exc:
            log_event("route_probe_failed", provider=provider, error=type(exc).__name__)
            return False
        if taken == 2:
            self.states[provider] = ProviderState(waiting=self.states[provider].waiting)
        if taken == 1:
            log_event("provider_probe", provider=provider)
        return taken == 1


def _bare(route: Route) -> Route:
    """The route as the job carries it: provider and model only. The order already says
    what weight and priority meant, and workers of an older version, whose Route forbids
    unknown fields, can still decode the job during a rolling deploy. Prices stay behind
    too: the worker reads them from its own config (schemas/pricing.py)."""
    if route == Route(route.provider, route.model):
        return route
    return Route(route.provider, route.model)
