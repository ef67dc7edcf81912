"""Which route a request tries first, and in what order it fails over: the policy alone.

The inputs are the slug's usable routes (catalog order) and what the ingress last read
of each provider (`ProviderState`, see `ingress.health`):

1. Routes whose provider is on cool-down (or on probation, its probe out) are skipped
   while another route is left; if every route is, all are kept, in order.
2. Routes are ranked by `priority` (lower first, as DNS SRV records do), then position.
3. The first choice is drawn among the best priority's routes with a positive `weight`,
   by smooth weighted round-robin (nginx's), leaving out routes whose queue is much
   deeper than the shallowest one's. Without weights it is that priority's first route.
4. The other routes follow as failovers, in rank order. A request holding a provider's
   probe token tries that provider first.

Round-robin instead of a random draw: the split is exact per ingress process (3:1 is
three and one in every four requests), so neither bursts nor tests see noise.
"""

from __future__ import annotations

from collections.abc import Mapping

from msgspec import Struct

from schemas.config import Route


class ProviderState(Struct, kw_only=True):
    """What routing knows of one provider."""

    tripped: bool = False  # went on cool-down and has not succeeded since
    cooling: bool = False  # the cool-down is still running
    probing: bool = False  # after the cool-down, its one probe request is out
    waiting: int = 0  # jobs queued on its stream that no worker has taken yet

    @property
    def probe_due(self) -> bool:
        """The cool-down is over and nobody is probing yet: one request may try it."""
        return self.tripped and not self.cooling and not self.probing


HEALTHY = ProviderState()


class Wheel:
    """Smooth weighted round-robin state, per slug (catalog slugs only: weights come
    from the catalog, so the number of keys is bounded by the config)."""

    def __init__(self) -> None:
        self._current: dict[str, list[int]] = {}

    def pick(self, key: str, weights: list[int], eligible: list[bool]) -> int:
        """The index to use next among `eligible` ones (at least one is)."""
        current = self._current.get(key)
        if current is None or len(current) != len(weights):
            current = self._current[key] = [0] * len(weights)
        total, best = 0, -1
        for i, weight in enumerate(weights):
            if eligible[i]:
                current[i] += weight
                total += weight
                if best < 0 or current[i] > current[best]:
                    best = i
        current[best] -= total
        return best


def deeper(waiting: int, least: int, skew: int) -> bool:
    """Whether a queue is much deeper than the shallowest: by more than `skew` jobs and
    more than twice as deep, so a few jobs apart never counts, nor do two busy routes."""
    return waiting - least > max(skew, least)


def order_routes(routes: list[Route], states: Mapping[str, ProviderState], *, wheel: Wheel,
                 key: str, backlog_skew: int, probe: str | None = None) -> list[Route]:
    """The routes of one request, first choice first (see the module docstring)."""
    ranked = sorted(routes, key=lambda r: r.priority)  # stable: position breaks ties
    if len(ranked) < 2:
        return ranked
    kept = [r for r in ranked if r.provider == probe or not states.get(r.provider, HEALTHY).tripped]
    if not kept:
        return ranked
    if probe is not None and kept[0].provider != probe:
        probed = [r for r in kept if r.provider == probe]
        kept = probed + [r for r in kept if r.provider != probe]
    if probe is not None:
        return kept
    tier = kept[0].priority
    pool = [i for i, r in enumerate(ranked) if r.weight and r.priority == tier and r in kept]
    if not pool:
        first = kept[0]
    elif len(pool) == 1:
        first = ranked[pool[0]]
    else:
        # Indexes into the whole ranked list, so the wheel's state survives a route
        # leaving the pool (cool-down, deep queue) and coming back.
        waiting = {i: states.get(ranked[i].provider, HEALTHY).waiting for i in pool}
        least = min(waiting.values())
        eligible = [i in waiting and not deeper(waiting[i], least, backlog_skew)
                    for i in range(len(ranked))]
        first = ranked[wheel.pick(key, [r.weight or 0 for r in ranked], eligible)]
    return [first, *(r for r in kept if r is not first)]
