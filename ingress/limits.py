"""Rate limits and budgets of orgs, projects and keys: their Holds, the 429s of admission
and the x-ratelimit headers.

Each limit a scope sets (`schemas/limits.py`) becomes one `Hold` that admission checks
and reserves atomically with the others, so the tightest applies and replicas agree:

    rpm                 a rolling window of requests, never given back (a request counts
                        once admitted)
    tpm                 a rolling window of tokens: the estimate, replaced by the real
                        tokens when the job finishes (removed if it is withdrawn)
    max_concurrent      a counter of requests in flight, given back when they end
    monthly_budget_usd  micro-dollars held by requests in flight, plus the scope's metered
                        `cost_micro_usd` this month

Every answer to a key whose scopes set rpm or tpm carries OpenAI's x-ratelimit headers,
computed from what the admission script returned (no extra round trip). `scope_use` and
`plan_use` read the same counters back, reserving nothing (the console's Limits page).
"""

from __future__ import annotations

import calendar
import math
import time
from dataclasses import dataclass

from ingress.admission import QUEUE_BYTES_FULL, Admission, Verdict, WindowState
from schemas import names
from schemas.config import Route
from schemas.envelopes import Job
from schemas.errors import GatewayError
from schemas.limits import ScopedLimits
from schemas.pricing import MICRO_USD, Prices
from schemas.reservations import Hold

MAX_COST = 2**50  # micro-dollars; an absurd estimate must not overflow a counter
_SCOPE_WORDS = {"org": "organization", "project": "project", "key": "key"}


def usage_hash(scoped: ScopedLimits, org: str, project: str, month: str) -> str:
    """The monthly usage hash a scope's budget counts (metered by the worker's finish)."""
    match scoped.scope:
        case "org":
            return names.usage(org, month)
        case "project":
            return names.usage_project(org, project, month)
        case "key":
            return names.usage_key(scoped.id, month)
    raise AssertionError(scoped.scope)


def limit_holds(scopes: tuple[ScopedLimits, ...], *, org: str, project: str, month: str,
                tokens: int, cost: int) -> list[Hold]:
    """One Hold per limit the scopes set: `tokens` and `cost` (micro-dollars) are the
    request's estimates."""
    holds = []
    for scoped in scopes:
        limits, scope, owner = scoped.limits, scoped.scope, scoped.id
        if limits.rpm is not None:
            holds.append(Hold(counter=names.window("rpm", scope, owner), amount=1,
                              limit=limits.rpm, code="rate_limit_exceeded", window=True,
                              kept=True, name="rpm", fit=True, scope=scope, owner=owner))
        if limits.tpm is not None:
            holds.append(Hold(counter=names.window("tpm", scope, owner), amount=tokens,
                              limit=limits.tpm, code="rate_limit_exceeded", window=True,
                              name="tpm", fit=True, scope=scope, owner=owner))
        if limits.max_concurrent is not None:
            holds.append(Hold(counter=names.held_concurrent(scope, owner), amount=1,
                              limit=limits.max_concurrent, code="rate_limit_exceeded",
                              name="max_concurrent", fit=True, scope=scope, owner=owner))
        if limits.monthly_budget_usd is not None:
            holds.append(Hold(counter=names.held_cost(scope, owner, month), amount=cost,
                              limit=round(limits.monthly_budget_usd * MICRO_USD),
                              code="budget_exceeded", used=usage_hash(scoped, org, project, month),
                              used_field="cost_micro_usd", name="monthly_budget_usd", fit=True,
                              scope=scope, owner=owner))
    return holds


@dataclass(frozen=True, slots=True)
class ScopeUse:
    """What a scope uses now of what its limits count: requests and tokens in the rolling
    minute, requests in flight, and this month's metered cost plus the cost its requests
    in flight hold (micro-dollars; admission counts both against the budget)."""

    requests_minute: int
    tokens_minute: int
    in_flight: int
    cost_micro_usd: int
    held_cost_micro_usd: int


@dataclass(frozen=True, slots=True)
class PlanUse:
    """An org's plan tokens this month: metered, and held by its requests in flight."""

    tokens: int
    held_tokens: int


def _peek_hold(counter: str) -> Hold:
    return Hold(counter=counter, amount=0, limit=0, code="", window=True)


async def scope_use(admission: Admission, scope: ScopedLimits, *, org: str, project: str,
                    month: str) -> ScopeUse:
    """A scope's current use, read from the counters `limit_holds` names (whether or not
    the scope sets a limit on them now); the windows on Redis's clock, as admission sees them."""
    owner = scope.id
    rpm, tpm = await admission.peek([_peek_hold(names.window("rpm", scope.scope, owner)),
                                     _peek_hold(names.window("tpm", scope.scope, owner))])
    async with admission.redis.pipeline(transaction=False) as pipe:
        concurrent = pipe.get(names.held_concurrent(scope.scope, owner))
        held = pipe.get(names.held_cost(scope.scope, owner, month))
        cost = pipe.hget(usage_hash(scope, org, project, month), "cost_micro_usd")
    return ScopeUse(requests_minute=rpm.level, tokens_minute=tpm.level,
                    in_flight=max(int(await concurrent or 0), 0),
                    cost_micro_usd=int(await cost or 0),
                    held_cost_micro_usd=max(int(await held or 0), 0))


async def plan_use(admission: Admission, org: str, month: str) -> PlanUse:
    """An org's plan tokens this month (what the `subscription_limit` Hold counts)."""
    async with admission.redis.pipeline(transaction=False) as pipe:
        tokens = pipe.hget(names.usage(org, month), "tokens")
        held = pipe.get(names.held_tokens(org, month))
    return PlanUse(tokens=int(await tokens or 0), held_tokens=max(int(await held or 0), 0))


def estimate_cost(prices: Prices, slug: str, routes: list[Route], prompt_tokens: int,
                  output_tokens: int) -> int:
    """What a request may cost in micro-dollars: its estimated tokens priced at the most
    expensive of its routes (failover may land on any); unpriced routes cost 0."""
    worst = max((prices.cost(slug, route, prompt_tokens, output_tokens) or 0 for route in routes),
                default=0)
    return min(worst, MAX_COST)


def seconds_to_next_month(now: float | None = None) -> int:
    """Seconds until the calendar month (UTC) rolls over: when monthly usage starts anew."""
    now = time.time() if now is None else now
    year, month = time.gmtime(now)[:2]
    year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return max(math.ceil(calendar.timegm((year, month, 1, 0, 0, 0)) - now), 1)


def duration(ms: int) -> str:
    """A duration as OpenAI's x-ratelimit-reset-* headers write it (Go's format, to the
    millisecond): "0s", "20ms", "1s", "1.5s", "6m0s", "1h2m3s"."""
    if ms <= 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    text = f"{seconds}.{millis:03d}".rstrip("0").rstrip(".") + "s"
    if hours or minutes:
        text = f"{minutes}m" + text
    if hours:
        text = f"{hours}h" + text
    return text


def rate_headers(windows: tuple[WindowState, ...]) -> dict[str, str]:
    """OpenAI's x-ratelimit headers for the tightest requests and tokens windows (the
    least remaining; of equals, the smaller limit). Only what is limited is reported."""
    headers: dict[str, str] = {}
    for name, kind in (("rpm", "requests"), ("tpm", "tokens")):
        states = [w for w in windows if w.hold.name == name]
        if not states:
            continue
        tightest = min(states, key=lambda w: (w.remaining, w.hold.limit))
        headers[f"x-ratelimit-limit-{kind}"] = str(tightest.hold.limit)
        headers[f"x-ratelimit-remaining-{kind}"] = str(tightest.remaining)
        headers[f"x-ratelimit-reset-{kind}"] = duration(tightest.empty_ms)
    return headers


def limit_refusal(hold: Hold, room_ms: int) -> GatewayError:
    """The 429 for a request a scope's limit refused: which scope, which limit, and
    when to retry (the window has room / the month rolls over / a request ends)."""
    whose = f"{_SCOPE_WORDS.get(hold.scope, hold.scope)} {hold.owner!r}"
    details = {"scope": hold.scope, "id": hold.owner, "limit": hold.name, "max": hold.limit}
    if hold.code == "budget_exceeded":
        budget = hold.limit / MICRO_USD
        return GatewayError(429, "budget_exceeded",
                            f"{whose} has used its monthly budget of ${budget:g} (counting "
                            "what its requests in flight may cost)",
                            retry_after=seconds_to_next_month(),
                            details={**details, "max": budget,
                                     "requested": hold.amount / MICRO_USD})
    match hold.name:
        case "rpm":
            message = f"{whose} is limited to {hold.limit} requests per minute"
        case "tpm" if room_ms < 0:
            message = (f"{whose} is limited to {hold.limit} tokens per minute, and this "
                       f"request alone may use {hold.amount} (its prompt and max_tokens)")
            details["requested"] = hold.amount
        case "tpm":
            message = (f"{whose} is limited to {hold.limit} tokens per minute (this request "
                       f"may use {hold.amount})")
            details["requested"] = hold.amount
        case _:
            message = f"{whose} is limited to {hold.limit} requests in flight at once"
    if hold.name == "max_concurrent":
        retry_after = 1
    elif room_ms < 0:
        retry_after = 60  # it never fits; a client that retries anyway waits a window
    else:
        retry_after = max(math.ceil(room_ms / 1000), 1)
    return GatewayError(429, "rate_limit_exceeded", message, retry_after=retry_after,
                        details=details)


def admission_refusal(verdict: Verdict, job: Job, max_queue_bytes: int) -> GatewayError:
    """The 429 for a request admission refused: the limit that had no room, or a full queue."""
    provider = job.route.provider
    if verdict.code == QUEUE_BYTES_FULL:
        return GatewayError(429, "queue_full",
                            f"provider {provider!r} holds its budget of queued bytes "
                            f"(providers.{provider}.max_queue_bytes = {max_queue_bytes})",
                            retry_after=1, details={"limit": "max_queue_bytes",
                                                    "max": max_queue_bytes})
    match verdict.refused:
        case None:
            return GatewayError(429, "queue_full",
                                f"provider {provider!r} has too many queued requests",
                                retry_after=1)
        case Hold(code="subscription_limit"):
            return GatewayError(429, "subscription_limit",
                                f"organization {job.org!r} has used its plan's monthly tokens "
                                "(counting those reserved by its requests in flight)",
                                retry_after=seconds_to_next_month())
        case Hold(scope=scope) as hold if scope:
            return limit_refusal(hold, verdict.room_ms)
        case Hold(code="queue_full", limit=limit):
            return GatewayError(429, "queue_full",
                                f"organization {job.org!r} has its share of provider {provider!r}'s "
                                f"queue in flight ({limit} requests)",
                                retry_after=1, details={"provider": provider, "org": job.org})
        case Hold(code=code):
            return GatewayError(429, code, f"a limit of organization {job.org!r} has no room left",
                                retry_after=1)
    raise AssertionError("unreachable")
