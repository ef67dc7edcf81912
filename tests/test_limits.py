"""Rate limits and budgets of orgs, projects and keys on one ingress: rpm, tpm (rolling
windows), max_concurrent and monthly budgets as Holds at admission, the tightest applying;
their 429s (scope, limit, Retry-After) and OpenAI's x-ratelimit headers, read through the
official SDK. Several ingress processes: tests/test_limits_replicas.py.
"""

from __future__ import annotations

import calendar
import json
import re
import time
from typing import Any

import httpx
import openai
import pytest
import trio

from ingress.keys import KeyStore
from ingress.limits import duration, seconds_to_next_month
from schemas import names
from schemas.envelopes import Error
from schemas.errors import GatewayError
from schemas.keys import KeyChange
from schemas.windows import WINDOW_LUA
from tests.conftest import Gateway, make_config, start_gateway
from tests.fakes.openai_upstream import Behavior, FakeOpenAI
from workers.connection import connect
from workers.queue import Queue

HI = [{"role": "user", "content": "hi"}]
IN, OUT = 2.0, 8.0  # USD per million tokens: micro-dollars per token
RESET = re.compile(r"^(\d+h)?(\d+m)?\d+(\.\d+)?s$|^\d+ms$")  # OpenAI's (Go's) durations


async def set_limits(redis: Any, scope: str, owner: str, limits: dict[str, Any]) -> None:
    """Give a scope limits the way the admin API stores them (the `limits` JSON field of
    its hash), then drop the cached keys that carry the old ones."""
    match scope:
        case "org":
            where, change = names.org(owner), KeyChange(orgs=[owner])
        case "project":
            org, project = owner.split("/")
            where, change = names.project(org, project), KeyChange(orgs=[org])
        case _:
            secret_hash = (await redis.get(names.key_by_id(owner))).decode()
            where, change = names.key_by_hash(secret_hash), KeyChange(secret_hashes=[secret_hash])
    await redis.hset(where, {"limits": json.dumps(limits)})
    await KeyStore(redis).invalidate(change)


def owner_of(gateway: Gateway, scope: str) -> str:
    """The id a scope's limits are known by: the org, `org/project`, or the key id."""
    return {"org": "acme", "project": "acme/proj", "key": gateway.key_id}[scope]


async def limited(nursery: trio.Nursery, redis_url: str, fake: FakeOpenAI,
                  workers: bool = True) -> Gateway:
    config = make_config(
        redis_url, {"up": {"kind": "openai", "base_url": fake.base_url, "max_retries": 0}},
        [{"slug": "paid", "routes": [{"provider": "up", "model": "u", "input_per_mtok": IN,
                                      "output_per_mtok": OUT}]},
         {"slug": "free", "routes": [{"provider": "up", "model": "u"}]}])
    return await start_gateway(nursery, config, workers=workers)


async def ask(gateway: Gateway, model: str = "free", **kwargs: Any) -> Any:
    """One chat completion through the SDK; the raw response (headers and status)."""
    return await gateway.client().chat.completions.with_raw_response.create(
        model=model, messages=HI, **kwargs)


async def refused(gateway: Gateway, model: str = "free", **kwargs: Any) -> openai.RateLimitError:
    with pytest.raises(openai.RateLimitError) as caught:
        await ask(gateway, model, **kwargs)
    return caught.value


def error_of(exc: openai.APIStatusError) -> dict[str, Any]:
    body: dict[str, Any] = exc.body  # type: ignore[assignment]
    return body


async def wait_for(predicate: Any) -> None:
    with trio.fail_after(10.0):
        while not await predicate():
            await trio.sleep(0.02)


async def held_keys(redis: Any) -> list[bytes]:
    return sorted([*await redis.keys("{sb}:held*"), *await redis.keys("{sb}:resv*")])


SCOPES = ["org", "project", "key"]


@pytest.mark.parametrize("scope", SCOPES)
async def test_rpm_admits_that_many_then_429_naming_scope_and_limit(
        nursery: trio.Nursery, redis_url: str, fake_openai: FakeOpenAI, scope: str) -> None:
    gateway = await limited(nursery, redis_url, fake_openai)
    await set_limits(gateway.redis, scope, owner_of(gateway, scope), {"rpm": 3})
    for _ in range(3):
        assert (await ask(gateway)).status_code == 200
    error = await refused(gateway)
    assert error_of(error)["code"] == "rate_limit_exceeded"
    assert error_of(error)["details"] == {"scope": scope, "id": owner_of(gateway, scope),
                                          "limit": "rpm", "max": 3}
    assert "3 requests per minute" in error_of(error)["message"]
    # Room comes back when the first request leaves the window: within 60 to 61 s.
    assert 55 <= int(error.response.headers["retry-after"]) <= 61
    assert error.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert len(fake_openai.requests) == 3  # the refused one never went upstream


@pytest.mark.parametrize("scope", SCOPES)
async def test_tpm_refuses_what_would_pass_it_and_settles_to_real_usage(
        nursery: trio.Nursery, redis_url: str, fake_openai: FakeOpenAI, scope: str) -> None:
    gateway = await limited(nursery, redis_url, fake_openai)
    await set_limits(gateway.redis, scope, owner_of(gateway, scope), {"tpm": 400})
    # Estimated at the body's quarter plus max_tokens (about 300); it really uses ~10.
    fake_openai.then(Behavior(delay_s=1.0))
    async with trio.open_nursery() as running:
        running.start_soon(lambda: ask(gateway, max_tokens=300))
        await wait_for(lambda: _has(fake_openai, 1))
        # While it runs its estimate is held: a second one like it does not fit...
        error = await refused(gateway, max_tokens=300)
        assert error_of(error)["details"]["limit"] == "tpm"
        assert error_of(error)["details"]["scope"] == scope
        assert error_of(error)["details"]["requested"] > 300
        assert int(error.response.headers["retry-after"]) >= 1
        requested = error_of(error)["details"]["requested"]  # the same body: the same estimate
    # ...but once it finished its real tokens replaced the estimate: the next is admitted,
    # and the window holds the first one's real tokens plus the new estimate.
    first_real = (await gateway.usage())["tokens"]
    assert 0 < first_real < 50
    answer = await ask(gateway, max_tokens=300)
    assert answer.status_code == 200
    left = int(answer.headers["x-ratelimit-remaining-tokens"])
    assert left == 400 - first_real - requested


async def _has(fake: FakeOpenAI, n: int) -> bool:
    return len(fake.requests) >= n


async def test_a_request_estimated_beyond_the_tpm_is_refused_outright(
        nursery: trio.Nursery, redis_url: str, fake_openai: FakeOpenAI) -> None:
    gateway = await limited(nursery, redis_url, fake_openai)
    await set_limits(gateway.redis, "key", gateway.key_id, {"tpm": 100})
    error = await refused(gateway, max_tokens=500)
    assert "alone" in error_of(error)["message"]
    assert error.response.headers["retry-after"] == "60"
    assert (await ask(gateway, max_tokens=20)).status_code == 200  # a small one fits


@pytest.mark.parametrize("scope", SCOPES)
async def test_max_concurrent_is_released_on_finish(
        nursery: trio.Nursery, redis_url: str, fake_openai: FakeOpenAI, scope: str) -> None:
    gateway = await limited(nursery, redis_url, fake_openai)
    await set_limits(gateway.redis, scope, owner_of(gateway, scope), {"max_concurrent": 1})
    fake_openai.then(Behavior(delay_s=1.0))
    async with trio.open_nursery() as running:
        running.start_soon(lambda: ask(gateway))
        await wait_for(lambda: _has(fake_openai, 1))
        error = await refused(gateway)
        assert error_of(error)["details"] == {"scope": scope, "id": owner_of(gateway, scope),
                                              "limit": "max_concurrent", "max": 1}
        assert error.response.headers["retry-after"] == "1"
    assert (await ask(gateway)).status_code == 200  # the first one ended: room again
    assert await held_keys(gateway.redis) == []


async def test_max_concurrent_is_released_when_the_client_leaves(
        nursery: trio.Nursery, redis_url: str, fake_openai: FakeOpenAI) -> None:
    gateway = await limited(nursery, redis_url, fake_openai)
    await set_limits(gateway.redis, "key", gateway.key_id, {"max_concurrent": 1})
    fake_openai.then(Behavior(delay_s=30.0))
    with trio.move_on_after(1.0):  # the client gives up while the upstream call runs
        await ask(gateway)
    await wait_for(lambda: _no_held(gateway))
    assert (await ask(gateway)).status_code == 200


async def _no_held(gateway: Gateway) -> bool:
    return await held_keys(gateway.redis) == []


async def test_max_concurrent_is_released_when_the_job_fails(
        nursery: trio.Nursery, redis_url: str, fake_openai: FakeOpenAI) -> None:
    gateway = await limited(nursery, redis_url, fake_openai)
    await set_limits(gateway.redis, "key", gateway.key_id, {"max_concurrent": 1})
    fake_openai.then(Behavior(status=500))
    with pytest.raises(openai.APIStatusError) as caught:
        await ask(gateway)
    assert caught.value.status_code == 502
    assert (await ask(gateway)).status_code == 200


async def test_an_org_budget_is_refused_once_its_cost_is_used(
        nursery: trio.Nursery, redis_url: str, fake_openai: FakeOpenAI) -> None:
    gateway = await limited(nursery, redis_url, fake_openai)
    budget = 0.002  # 2000 micro-dollars; each request is estimated at ~ 200 (max_tokens 10)
    await set_limits(gateway.redis, "org", "acme", {"monthly_budget_usd": budget})
    admitted = 0
    with trio.fail_after(30):
        while True:
            try:
                await ask(gateway, "paid", max_tokens=10)
                admitted += 1
            except openai.RateLimitError as exc:
                error = exc
                break
    assert admitted >= 2
    assert error_of(error)["code"] == "budget_exceeded"
    details = error_of(error)["details"]
    requested = details.pop("requested")  # what this request may cost, in dollars
    assert details == {"scope": "org", "id": "acme", "limit": "monthly_budget_usd",
                       "max": budget}
    cost = (await gateway.usage())["cost_micro_usd"]
    assert cost <= budget * 1e6  # never overshot: each admission fit its estimate
    # Refused only because the next estimate did not fit.
    assert 10 * OUT < requested * 1e6 < 300
    assert cost + requested * 1e6 > budget * 1e6, (cost, admitted)
    assert abs(int(error.response.headers["retry-after"]) - seconds_to_next_month()) <= 5
    assert await held_keys(gateway.redis) == []
    # An unpriced route costs nothing: admitted while the budget has any room...
    assert (await ask(gateway, "free")).status_code == 200
    # ...but a budget used up refuses everything.
    await gateway.redis.hset(names.usage("acme", names.month()),
                             {"cost_micro_usd": str(int(budget * 1e6))})
    assert error_of(await refused(gateway, "free"))["code"] == "budget_exceeded"


@pytest.mark.parametrize("scope", ["project", "key"])
async def test_project_and_key_budgets_count_their_own_usage_hash(
        nursery: trio.Nursery, redis_url: str, fake_openai: FakeOpenAI, scope: str) -> None:
    gateway = await limited(nursery, redis_url, fake_openai)
    await set_limits(gateway.redis, scope, owner_of(gateway, scope), {"monthly_budget_usd": 1})
    assert (await ask(gateway, "paid")).status_code == 200
    usage = (names.usage_project("acme", "proj", names.month()) if scope == "project"
             else names.usage_key(gateway.key_id, names.month()))
    await gateway.redis.hset(usage, {"cost_micro_usd": "999999"})  # what metering wrote
    error = await refused(gateway, "paid")  # the estimate no longer fits under $1
    assert error_of(error)["details"]["scope"] == scope
    assert error_of(error)["code"] == "budget_exceeded"


async def test_a_limit_of_zero_refuses_everything(
        nursery: trio.Nursery, redis_url: str, fake_openai: FakeOpenAI) -> None:
    gateway = await limited(nursery, redis_url, fake_openai)
    for limits, code in (({"rpm": 0}, "rate_limit_exceeded"),
                         ({"tpm": 0}, "rate_limit_exceeded"),
                         ({"max_concurrent": 0}, "rate_limit_exceeded"),
                         ({"monthly_budget_usd": 0}, "budget_exceeded")):
        await set_limits(gateway.redis, "key", gateway.key_id, limits)
        assert error_of(await refused(gateway, "free"))["code"] == code, limits
    assert fake_openai.requests == []


async def test_the_tightest_scope_applies(
        nursery: trio.Nursery, redis_url: str, fake_openai: FakeOpenAI) -> None:
    gateway = await limited(nursery, redis_url, fake_openai)
    await set_limits(gateway.redis, "org", "acme", {"rpm": 10})
    await set_limits(gateway.redis, "project", "acme/proj", {"rpm": 2})
    await set_limits(gateway.redis, "key", gateway.key_id, {"rpm": 5})
    answers = [await ask(gateway), await ask(gateway)]
    # The headers report the tightest window: the project's.
    assert [a.headers["x-ratelimit-limit-requests"] for a in answers] == ["2", "2"]
    assert [a.headers["x-ratelimit-remaining-requests"] for a in answers] == ["1", "0"]
    error = await refused(gateway)
    assert error_of(error)["details"]["scope"] == "project"
    # Another key of the same org and project shares the org's and the project's windows.
    _, other = await KeyStore(gateway.redis).create("acme", "proj", "", "other")
    with pytest.raises(openai.RateLimitError) as caught:
        await gateway.client(api_key=other).chat.completions.create(
            model="free", messages=HI)  # type: ignore[arg-type]
    assert error_of(caught.value)["details"]["scope"] == "project"


async def test_openai_headers_on_answers_streams_errors_and_the_429(
        nursery: trio.Nursery, redis_url: str, fake_openai: FakeOpenAI) -> None:
    gateway = await limited(nursery, redis_url, fake_openai)
    await set_limits(gateway.redis, "org", "acme", {"rpm": 100, "tpm": 100_000})
    await set_limits(gateway.redis, "key", gateway.key_id, {"rpm": 4, "tpm": 50_000})
    plain = await ask(gateway, max_tokens=100)
    headers = plain.headers
    assert headers["x-ratelimit-limit-requests"] == "4"
    assert headers["x-ratelimit-remaining-requests"] == "3"
    assert headers["x-ratelimit-limit-tokens"] == "50000"
    estimate = 50_000 - int(headers["x-ratelimit-remaining-tokens"])
    assert 100 < estimate < 200  # max_tokens plus a quarter of the body's bytes
    for name in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"):
        assert RESET.match(headers[name]), headers[name]
    # A stream carries them...
    async with gateway.client().chat.completions.with_streaming_response.create(
            model="free", messages=HI, stream=True) as stream:  # type: ignore[arg-type]
        assert stream.headers["x-ratelimit-remaining-requests"] == "2"
        async for _ in stream.iter_lines():
            pass
    # ...an upstream failure does...
    fake_openai.then(Behavior(status=500))
    with pytest.raises(openai.APIStatusError) as caught:
        await ask(gateway)
    assert caught.value.response.headers["x-ratelimit-remaining-requests"] == "1"
    assert await ask(gateway)  # the 4th
    # ...and so does the 429, with nothing remaining.
    error = await refused(gateway)
    assert error.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert error.response.headers["x-ratelimit-limit-requests"] == "4"
    assert "x-ratelimit-remaining-tokens" in error.response.headers
    # An unlimited key's answers have none.
    _, free = await KeyStore(gateway.redis).create("other-org", "", "", "free")
    answer = await gateway.client(api_key=free).chat.completions.with_raw_response.create(
        model="free", messages=HI)  # type: ignore[arg-type]
    assert "x-ratelimit-limit-requests" not in answer.headers


async def test_the_sdk_retry_honours_retry_after(
        nursery: trio.Nursery, redis_url: str, fake_openai: FakeOpenAI) -> None:
    gateway = await limited(nursery, redis_url, fake_openai)
    await set_limits(gateway.redis, "key", gateway.key_id, {"max_concurrent": 1})
    fake_openai.then(Behavior(delay_s=1.5))
    async with trio.open_nursery() as running:
        running.start_soon(lambda: ask(gateway))
        await wait_for(lambda: _has(fake_openai, 1))
        # Refused (Retry-After: 1) while the first runs; the SDK waits and tries again.
        answer = await gateway.client(max_retries=4).chat.completions.create(
            model="free", messages=HI)  # type: ignore[arg-type]
    assert answer.choices[0].message.content
    assert len(fake_openai.requests) == 2


async def test_a_plan_refusal_says_when_the_month_rolls_over(
        nursery: trio.Nursery, redis_url: str, fake_openai: FakeOpenAI) -> None:
    config = make_config(
        redis_url, {"up": {"kind": "openai", "base_url": fake_openai.base_url}},
        [{"slug": "free", "routes": [{"provider": "up", "model": "u"}]}],
        plans={"none": {"monthly_tokens": 0}})
    gateway = await start_gateway(nursery, config, plan="none")
    error = await refused(gateway)
    assert error_of(error)["code"] == "subscription_limit"
    assert abs(int(error.response.headers["retry-after"]) - seconds_to_next_month()) <= 5


async def test_embeddings_are_limited_too(
        nursery: trio.Nursery, redis_url: str, fake_openai: FakeOpenAI) -> None:
    gateway = await limited(nursery, redis_url, fake_openai)
    await set_limits(gateway.redis, "key", gateway.key_id, {"rpm": 1})
    assert (await ask(gateway)).status_code == 200
    async with httpx.AsyncClient(base_url=gateway.base_url) as http:
        answer = await http.post("/v1/embeddings", json={"model": "free", "input": "x"},
                                 headers={"authorization": f"Bearer {gateway.secret}"})
    assert answer.status_code == 429 and answer.headers["retry-after"]
    assert answer.json()["error"]["code"] == "rate_limit_exceeded"


def test_seconds_to_next_month_counts_to_the_first_at_midnight_utc() -> None:
    assert seconds_to_next_month(calendar.timegm((2026, 12, 31, 23, 59, 0))) == 60
    assert seconds_to_next_month(calendar.timegm((2026, 2, 25, 0, 0, 0))) == 4 * 86400


def test_reset_durations_are_written_as_openai_writes_them() -> None:
    assert [duration(ms) for ms in (0, 12, 1000, 1500, 60_000, 360_000, 60_500, 3_723_000)] == [
        "0s", "12ms", "1s", "1.5s", "1m0s", "6m0s", "1m0.5s", "1h2m3s"]


# The window primitive on explicit clocks (admission reads Redis's TIME instead): a
# request admitted at second 50 counts until second 111, across the turn of a minute.
_WINDOW_TRY = WINDOW_LUA + """
local sec, amount, limit = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local level, buckets = window_level(KEYS[1], sec)
if level + amount > limit then
  return {0, window_room_ms(buckets, level, amount, limit, sec * 1000)}
end
window_add(KEYS[1], sec, amount)
return {1, 0}
"""


async def test_the_window_rolls_it_is_not_a_fixed_minute(redis_url: str) -> None:
    async with connect(redis_url) as redis:
        await _rolls(redis)


async def _rolls(redis: Any) -> None:
    script = redis.register_script(_WINDOW_TRY)
    key = names.window("rpm", "key", "test")
    base = int(time.time()) // 60 * 60  # a minute's start: seconds 0..59 are one minute

    async def attempt(at: int, amount: int = 1) -> list[int]:
        return [int(x) for x in await script(keys=[key], args=[base + at, amount, 2])]

    assert await attempt(50) == [1, 0]
    assert await attempt(59) == [1, 0]
    # A new minute began: a fixed window would have room; a rolling one has none until
    # the request of second 50 has counted for 61 s.
    assert await attempt(61) == [0, 50_000]
    assert await attempt(110) == [0, 1_000]
    assert await attempt(111) == [1, 0]
    assert await attempt(111) == [0, 9_000]  # now second 59's waits until 120
    assert await attempt(120) == [1, 0]
    assert await attempt(200, amount=3) == [0, -1]  # more than the limit never fits


async def test_a_bad_request_of_a_limited_key_carries_the_headers_too(
        nursery: trio.Nursery, redis_url: str, fake_openai: FakeOpenAI) -> None:
    gateway = await limited(nursery, redis_url, fake_openai)
    await set_limits(gateway.redis, "key", gateway.key_id, {"rpm": 5, "tpm": 10_000})
    await ask(gateway, max_tokens=10)
    for bad in ({"model": "no-such-model"}, {"temperature": "hot"}):  # a 400 and a 422
        with pytest.raises(openai.APIStatusError) as caught:
            await gateway.client().chat.completions.create(  # type: ignore[call-overload]
                **{"model": "free", "messages": HI, **bad})
        assert caught.value.status_code in (400, 422)
        headers = caught.value.response.headers
        assert headers["x-ratelimit-remaining-requests"] == "4"  # it took nothing
        assert headers["x-ratelimit-limit-tokens"] == "10000"
        assert RESET.match(headers["x-ratelimit-reset-requests"])


async def test_a_429_relayed_in_an_error_frame_carries_retry_after(
        nursery: trio.Nursery, redis_url: str, fake_openai: FakeOpenAI) -> None:
    gateway = await limited(nursery, redis_url, fake_openai, workers=False)
    queue = Queue(gateway.redis)
    await queue.ensure_group("up")
    upstream = GatewayError(429, "rate_limit_exceeded", "the provider's own rate limit")

    async def worker() -> None:  # answers the one job with a 429 error frame
        while not (deliveries := await queue.read("up", "w", 1, 100)):
            pass
        job = deliveries[0].job
        await queue.publish(job.reply_to, Error(request_id=job.request_id, attempt=0, seq=0,
                                                status=429, body=upstream.encode(),
                                                provider="up"), 5.0)

    nursery.start_soon(worker)
    error = await refused(gateway)
    assert error_of(error)["message"] == "the provider's own rate limit"
    assert error.response.headers["retry-after"] == "1"
