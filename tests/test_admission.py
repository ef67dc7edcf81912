"""Admission under concurrency: reservations against the plan (settled, released, swept),
a plan that is not configured, each org's share of a provider's queue, and keys dropped by
every ingress at once (revocation broadcast, negative cache).
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import openai
import pytest
import trio

from ingress.admission import ADMITTED, Admission, estimate_tokens, holds_for
from ingress.keys import KeyStore
from ingress.server import run_ingress
from schemas import names
from schemas.config import Route
from schemas.envelopes import Job
from tests.conftest import TLS, Gateway, make_config, start_gateway
from tests.fakes.openai_upstream import Behavior, FakeOpenAI

HI = [{"role": "user", "content": "hi"}]
ECHO = [{"slug": "echo", "routes": [{"provider": "local", "model": "m"}]}]


async def leftovers(redis: Any) -> list[bytes]:
    """Reservation records, their due list and held counters still in Redis."""
    found: list[bytes] = []
    for pattern in ("{sb}:resv*", "{sb}:held*"):
        found += await redis.keys(pattern)
    return sorted(found)


async def wait_for(predicate: Any) -> None:
    with trio.fail_after(10.0):
        while not await predicate():
            await trio.sleep(0.02)


async def test_concurrent_requests_overshoot_only_by_in_flight_estimates(
        nursery: trio.Nursery, redis_url: str) -> None:
    limit = 5
    config = make_config(redis_url, {"local": {"kind": "mock", "latency_ms": 300}}, ECHO,
                         plans={"tiny": {"monthly_tokens": limit}})
    gateway = await start_gateway(nursery, config, plan="tiny")
    client = gateway.client()
    statuses: list[int | str] = []

    async def one(stream: bool) -> None:
        try:
            if stream:
                chunks = await client.chat.completions.create(
                    model="echo", messages=HI, max_tokens=3, stream=True)  # type: ignore[arg-type]
                assert "".join([c.choices[0].delta.content or "" async for c in chunks
                                if c.choices]) == "hi"
            else:
                await client.chat.completions.create(model="echo", messages=HI, max_tokens=3)  # type: ignore[arg-type]
            statuses.append(200)
        except openai.RateLimitError as exc:
            statuses.append(exc.body["code"])  # type: ignore[index]

    async with trio.open_nursery() as burst:
        for i in range(50):
            burst.start_soon(one, i % 2 == 1)
    assert len(statuses) == 50 and set(statuses) <= {200, "subscription_limit"}, statuses
    admitted = statuses.count(200)
    assert admitted >= 1
    # Each admission saw used + reserved below the limit, and each answer used no more
    # than its estimate: the plan is overshot by at most one request's estimate.
    # The SDK's body for these requests is under 200 bytes.
    estimate = estimate_tokens(200, 3, config.limits.reserve_output_tokens)
    usage = await gateway.usage()
    assert usage["requests"] == admitted
    assert usage["tokens"] < limit + estimate, (usage, admitted)
    assert await leftovers(gateway.redis) == []  # every reservation settled
    # Sequentially too: once the metered usage reaches the plan, nothing more is admitted.
    while (await gateway.usage())["tokens"] < limit:
        await client.chat.completions.create(model="echo", messages=HI, max_tokens=3)  # type: ignore[arg-type]
    with pytest.raises(openai.RateLimitError) as caught:
        await client.chat.completions.create(model="echo", messages=HI)  # type: ignore[arg-type]
    assert caught.value.body["code"] == "subscription_limit"  # type: ignore[index]
    assert await leftovers(gateway.redis) == []


async def test_absurd_output_limits_are_reserved_clamped_not_a_500(
        nursery: trio.Nursery, redis_url: str) -> None:
    config = make_config(redis_url, {"local": {"kind": "mock"}}, ECHO,
                         plans={"small": {"monthly_tokens": 1000}})
    gateway = await start_gateway(nursery, config, plan="small")
    answer = await gateway.client().chat.completions.create(  # n: the most the mock (as OpenAI) answers
        model="echo", messages=HI, max_tokens=2**62, n=128)  # type: ignore[arg-type]
    assert answer.choices[0].message.content == "hi"
    assert await leftovers(gateway.redis) == []
    # Its reservation was above the plan, but the plan had room when it was admitted;
    # the real usage is what counts now, so the next request is admitted too.
    await gateway.client().chat.completions.create(model="echo", messages=HI)  # type: ignore[arg-type]


async def test_reservation_is_held_while_running_and_released_on_failure(
        nursery: trio.Nursery, redis_url: str, fake_openai: FakeOpenAI,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_UP_KEY", "sk-x")
    config = make_config(
        redis_url, {"up": {"kind": "openai", "base_url": fake_openai.base_url,
                           "api_key_env": "FAKE_UP_KEY", "max_retries": 0}},
        [{"slug": "gpt", "routes": [{"provider": "up", "model": "m"}]}],
        plans={"small": {"monthly_tokens": 50}})
    gateway = await start_gateway(nursery, config, plan="small")
    fake_openai.then(Behavior(status=500, delay_s=1.0), Behavior(status=500, delay_s=1.0))
    held = names.held_tokens("acme", names.month())
    failures: list[int] = []

    async def failing() -> None:
        with pytest.raises(openai.APIStatusError) as caught:
            await gateway.client().chat.completions.create(model="gpt", messages=HI,  # type: ignore[arg-type]
                                                           max_tokens=100)
        failures.append(caught.value.status_code)

    async with trio.open_nursery() as running:
        running.start_soon(failing)
        # While the upstream call runs, its estimate is held against the plan...
        await wait_for(lambda: gateway.redis.exists([held]))
        assert int(await gateway.redis.get(held)) >= 100
        # ...so a second request, estimated beyond what is left, is refused.
        with pytest.raises(openai.RateLimitError):
            await gateway.client().chat.completions.create(model="gpt", messages=HI)  # type: ignore[arg-type]
    assert failures == [502]
    assert await leftovers(gateway.redis) == []  # the failure released it
    assert (await gateway.usage()).get("tokens", 0) == 0
    # The plan is whole again: the next request is admitted (and fails upstream again).
    await failing()
    assert await leftovers(gateway.redis) == []


async def test_withdrawn_queued_job_releases_its_reservation(
        nursery: trio.Nursery, redis_url: str) -> None:
    config = make_config(redis_url, {"local": {"kind": "mock"}}, ECHO,
                         plans={"small": {"monthly_tokens": 1000}})
    gateway = await start_gateway(nursery, config, workers=False, plan="small")  # nobody reads
    client = gateway.client(timeout=httpx.Timeout(30.0))
    with trio.CancelScope() as client_gone:
        async def leave_once_queued() -> None:
            await wait_for(lambda: gateway.redis.exists([names.held_tokens("acme", names.month())]))
            assert await gateway.redis.xlen("{sb}:q:local") == 1
            client_gone.cancel()

        async with trio.open_nursery() as inner:
            inner.start_soon(leave_once_queued)
            await client.chat.completions.create(model="echo", messages=HI)  # type: ignore[arg-type]
    assert client_gone.cancelled_caught
    # The ingress withdrew the job before any worker read it: entry and reservation gone.
    await wait_for(lambda: _empty(gateway))
    # A worker started now finds nothing to run, and nothing is metered.
    await gateway.start_worker()
    await trio.sleep(0.5)
    assert await gateway.usage() == {}
    assert await leftovers(gateway.redis) == []


async def _empty(gateway: Gateway) -> bool:
    return await gateway.redis.xlen("{sb}:q:local") == 0 and await leftovers(gateway.redis) == []


async def test_withdrawn_entry_of_a_dead_worker_leaves_nothing_behind(
        nursery: trio.Nursery, redis_url: str, fake_openai: FakeOpenAI,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_UP_KEY", "sk-x")
    config = make_config(
        redis_url, {"up": {"kind": "openai", "base_url": fake_openai.base_url,
                           "api_key_env": "FAKE_UP_KEY", "max_retries": 0}},
        [{"slug": "gpt", "routes": [{"provider": "up", "model": "m"}]}],
        plans={"small": {"monthly_tokens": 1000}})
    gateway = await start_gateway(nursery, config, workers=False, plan="small")
    worker = await gateway.start_worker()
    fake_openai.then(Behavior(delay_s=30))
    with trio.CancelScope() as client_gone:
        async def kill_worker_then_leave() -> None:
            await wait_for(lambda: _has(fake_openai))
            worker.cancel()  # the worker dies with the entry pending...
            await trio.sleep(0.2)
            # ...and its reservation stays held: nothing settled the job.
            assert await gateway.redis.exists([names.held_tokens("acme", names.month())])
            client_gone.cancel()

        async with trio.open_nursery() as inner:
            inner.start_soon(kill_worker_then_leave)
            await gateway.client().chat.completions.create(model="gpt", messages=HI)  # type: ignore[arg-type]
    # Another worker reclaims the deleted entry and acknowledges it away.
    await gateway.start_worker()
    await wait_for(lambda: _settled(gateway))
    assert await leftovers(gateway.redis) == []


async def _has(fake: FakeOpenAI) -> bool:
    return bool(fake.requests)


async def _settled(gateway: Gateway) -> bool:
    pending = await gateway.redis.xpending("{sb}:q:up", "workers")
    return int(pending.pending) == 0 and await leftovers(gateway.redis) == []


async def test_reservation_of_a_process_that_died_expires(redis_url: str, nursery: trio.Nursery) -> None:
    config = make_config(redis_url, {"local": {"kind": "mock"}}, ECHO)
    gateway = await start_gateway(nursery, config, workers=False)
    admission = Admission(gateway.redis)
    month = names.month()

    def job(request_id: str, deadline: float) -> Job:
        return Job(request_id=request_id, org="o", project="", key_id="k", model="echo",
                   routes=[Route("local", "m")], body=b"{}", stream=False, reply_to="nobody",
                   deadline=deadline)

    # Admitted by an ingress whose job then vanished (nobody will settle it), long ago.
    dead = job("req_dead", 0)
    holds = holds_for(dead, month, token_limit=100, estimate=40, org_cap=10)
    verdict = await admission.admit(dead, holds=holds, max_queue=10, expires_at=1.0)
    assert verdict.code == ADMITTED
    await gateway.redis.delete(["{sb}:q:local"])  # its job is gone without a trace
    assert await gateway.redis.get(names.held_tokens("o", month)) == b"40"
    # The next admission sweeps the expired reservation before checking its own.
    fresh = job("req_new", time.time() + 60)
    verdict = await admission.admit(fresh, holds=holds_for(fresh, month, token_limit=100,
                                                           estimate=70, org_cap=10),
                                    max_queue=10, expires_at=time.time() + 120)
    assert verdict.code == ADMITTED
    assert await gateway.redis.get(names.held_tokens("o", month)) == b"70"
    assert not await gateway.redis.exists([names.reservation("req_dead")])
    await admission.release("req_new")
    await admission.release("req_new")  # only the first release decrements
    assert await leftovers(gateway.redis) == []


async def test_plan_missing_from_config_fails_closed(nursery: trio.Nursery, redis_url: str) -> None:
    config = make_config(redis_url, {"local": {"kind": "mock"}}, ECHO,
                         plans={"free": {"monthly_tokens": 1000}})
    gateway = await start_gateway(nursery, config, plan="gold")  # named by the key, not configured
    with pytest.raises(openai.PermissionDeniedError) as caught:
        await gateway.client().chat.completions.create(model="echo", messages=HI)  # type: ignore[arg-type]
    assert caught.value.body["code"] == "plan_not_configured"  # type: ignore[index]
    assert "gold" in caught.value.body["message"]  # type: ignore[index]
    assert await gateway.redis.xlen("{sb}:q:local") == 0
    assert await gateway.usage() == {} and await leftovers(gateway.redis) == []


async def test_one_org_flooding_a_provider_leaves_room_for_another(
        nursery: trio.Nursery, redis_url: str) -> None:
    config = make_config(redis_url, {"local": {"kind": "mock", "max_queue": 4,
                                               "max_queue_per_org": 2}}, ECHO)
    flooder = await start_gateway(nursery, config, workers=False, org="a")  # nobody drains yet
    _, other_secret = await KeyStore(flooder.redis).create("b", "proj", "", "other")
    flood = flooder.client()
    other = flooder.client(api_key=other_secret)
    results: dict[str, list[int | str]] = {"a": [], "b": []}

    async def one(org: str, client: openai.AsyncOpenAI) -> None:
        try:
            await client.chat.completions.create(model="echo", messages=HI)  # type: ignore[arg-type]
            results[org].append(200)
        except openai.RateLimitError as exc:
            assert exc.response.headers.get("retry-after") == "1"
            results[org].append(exc.body["code"])  # type: ignore[index]

    async with trio.open_nursery() as clients:
        for _ in range(8):
            clients.start_soon(one, "a", flood)
        # Wait until each of a's requests is either queued or refused.
        await wait_for(lambda: _settled_count(flooder, results["a"], 8))
        clients.start_soon(one, "b", other)
        await wait_for(lambda: _settled_count(flooder, results["a"] + results["b"], 9))
        assert results["b"] == []  # b was admitted, not refused
        await flooder.start_worker()
    assert sorted(map(str, results["a"])) == ["200", "200"] + ["queue_full"] * 6
    assert results["b"] == [200]
    assert await leftovers(flooder.redis) == []


async def _settled_count(gateway: Gateway, refused: list[Any], n: int) -> bool:
    return int(await gateway.redis.xlen("{sb}:q:local")) + len(refused) == n


async def test_revocation_reaches_every_ingress_within_a_second(
        nursery: trio.Nursery, redis_url: str) -> None:
    config = make_config(redis_url, {"local": {"kind": "mock"}}, ECHO,
                         limits={"key_cache_s": 60.0})
    first = await start_gateway(nursery, config)
    second_url = (await nursery.start(run_ingress, config, "127.0.0.1", 0))[0]
    async with httpx.AsyncClient(verify=TLS) as http:
        headers = {"authorization": f"Bearer {first.secret}"}
        for base in (first.base_url, second_url):  # both caches warm
            assert (await http.get(base + "/v1/models", headers=headers)).status_code == 200
        # Both would now answer from their cache for a minute without asking Redis.
        assert await KeyStore(first.redis).revoke(first.key_id)
        revoked_at = trio.current_time()
        for base in (first.base_url, second_url):
            while True:
                sent = trio.current_time()
                answer = await http.get(base + "/v1/models", headers=headers)
                if answer.status_code == 401:
                    break
                assert answer.status_code == 200
                assert sent - revoked_at < 1.0, "a revoked key was still served after 1 s"
                await trio.sleep(0.02)
        assert answer.json()["error"]["code"] == "unauthorized"


async def test_unknown_keys_are_cached_briefly(nursery: trio.Nursery, redis_url: str) -> None:
    config = make_config(redis_url, {"local": {"kind": "mock"}}, ECHO,
                         limits={"key_cache_s": 5.0})
    gateway = await start_gateway(nursery, config, workers=False)
    await gateway.redis.config_resetstat()
    async with httpx.AsyncClient(verify=TLS, base_url=gateway.base_url) as http:
        for _ in range(20):
            answer = await http.get("/v1/models", headers={"authorization": "Bearer sb-guess"})
            assert answer.status_code == 401
    stats = await gateway.redis.info("commandstats")
    assert stats["cmdstat_hgetall"]["calls"] == 1  # one lookup, then the cached miss


async def test_negative_cache_is_bounded(redis_url: str, nursery: trio.Nursery) -> None:
    config = make_config(redis_url, {"local": {"kind": "mock"}}, ECHO)
    gateway = await start_gateway(nursery, config, workers=False)
    store = KeyStore(gateway.redis, cache_s=5.0, miss_cache_max=64)
    for i in range(200):
        with pytest.raises(Exception, match="invalid or revoked"):
            await store.authenticate(f"sb-guess-{i}")
    assert 0 < store.statistics()["misses_cached"] <= 64
