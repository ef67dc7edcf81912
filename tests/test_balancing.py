"""Protecting the providers: weighted routes, cool-downs with one probe, and the headers
that say which provider answered after how many attempts.

The end-to-end tests run a real ingress and worker on the session's Redis with two fake
OpenAI upstreams `a` and `b`, and count what each fake received.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import msgspec
import pytest
import trio

from ingress.balance import ProviderState, Wheel, order_routes
from ingress.server import run_ingress
from schemas import names
from schemas.config import Route
from tests.conftest import TLS, FakeUpstreams, Gateway, make_config, start_gateway
from tests.fakes.openai_upstream import Behavior, FakeOpenAI

HI = [{"role": "user", "content": "hi"}]
PROVIDER, ATTEMPTS = "x-switchboard-provider", "x-switchboard-attempts"


# --- the ordering policy, as a pure function --------------------------------------------

def route(provider: str, weight: int | None = None, priority: int = 0) -> Route:
    return Route(provider, "m", weight=weight, priority=priority)


def firsts(routes: list[Route], states: dict[str, ProviderState] | None = None, n: int = 12,
           skew: int = 4) -> list[str]:
    wheel = Wheel()
    return [order_routes(routes, states or {}, wheel=wheel, key="s", backlog_skew=skew)[0].provider
            for _ in range(n)]


def test_unweighted_routes_keep_their_order() -> None:
    routes = [route("a"), route("b"), route("c")]
    assert set(firsts(routes)) == {"a"}
    ordered = order_routes(routes, {}, wheel=Wheel(), key="s", backlog_skew=4)
    assert [r.provider for r in ordered] == ["a", "b", "c"]


def test_weights_split_the_first_choice_exactly_and_failover_keeps_the_rest() -> None:
    routes = [route("a", 3), route("b", 1), route("c")]  # c: failover only
    chosen = firsts(routes, n=400)
    assert chosen.count("a") == 300 and chosen.count("b") == 100
    wheel = Wheel()
    for _ in range(8):
        ordered = [r.provider for r in order_routes(routes, {}, wheel=wheel, key="s",
                                                    backlog_skew=4)]
        assert sorted(ordered) == ["a", "b", "c"] and ordered[-1] == "c"


def test_priority_tiers_come_first_whatever_the_position() -> None:
    routes = [route("low", 5, priority=2), route("a", 1, priority=1), route("b", 1, priority=1)]
    chosen = firsts(routes, n=10)
    assert chosen.count("a") == 5 and chosen.count("b") == 5
    ordered = order_routes(routes, {}, wheel=Wheel(), key="s", backlog_skew=4)
    assert ordered[-1].provider == "low"


def test_cooled_down_routes_are_skipped_unless_nothing_else_is_left() -> None:
    routes = [route("a", 1), route("b", 1), route("c")]
    states = {"a": ProviderState(tripped=True, cooling=True)}
    ordered = order_routes(routes, states, wheel=Wheel(), key="s", backlog_skew=4)
    assert [r.provider for r in ordered] == ["b", "c"]
    # probation (cool-down over) without the probe: still skipped
    states = {"a": ProviderState(tripped=True)}
    assert [r.provider for r in order_routes(routes, states, wheel=Wheel(), key="s",
                                             backlog_skew=4)] == ["b", "c"]
    # the request holding the probe token tries it first
    probed = order_routes(routes, states, wheel=Wheel(), key="s", backlog_skew=4, probe="a")
    assert [r.provider for r in probed] == ["a", "b", "c"]
    # every route cooling: they are all tried, in order, rather than none
    alone = [route("a"), route("b")]
    all_cool = {p: ProviderState(tripped=True, cooling=True) for p in "ab"}
    assert [r.provider for r in order_routes(alone, all_cool, wheel=Wheel(), key="s",
                                             backlog_skew=4)] == ["a", "b"]


def test_a_much_deeper_queue_loses_the_first_choice_but_stays_a_failover() -> None:
    routes = [route("a", 1), route("b", 1)]
    deep = {"a": ProviderState(waiting=30), "b": ProviderState(waiting=2)}
    assert set(firsts(routes, deep)) == {"b"}
    ordered = order_routes(routes, deep, wheel=Wheel(), key="s", backlog_skew=4)
    assert [r.provider for r in ordered] == ["b", "a"]
    # a little deeper (within the skew, or less than twice as deep) is not "much deeper"
    near = {"a": ProviderState(waiting=5), "b": ProviderState(waiting=2)}
    assert firsts(routes, near, n=10).count("a") == 5
    both = {"a": ProviderState(waiting=150), "b": ProviderState(waiting=100)}
    assert firsts(routes, both, n=10).count("a") == 5


def test_weights_and_priorities_are_checked_in_the_config(redis_url: str) -> None:
    from schemas.config import ConfigError

    for bad in ({"weight": -1}, {"weight": "x"}, {"priority": 1.5}):
        with pytest.raises(ConfigError) as caught:
            make_config(redis_url, {"a": {"kind": "mock"}},
                        [{"slug": "s", "routes": [{"provider": "a", "model": "m", **bad}]}])
        assert "$.models[0].routes[0]" in str(caught.value)
    with pytest.raises(ConfigError):
        make_config(redis_url, {"a": {"kind": "mock", "cooldown_failures": -1}}, [])


def test_what_counts_as_a_provider_failure() -> None:
    from schemas.errors import GatewayError
    from workers.health import verdict
    from workers.providers._base import UpstreamFailure, status_failure, transport_failure

    assert verdict(None) == "ok"
    assert verdict(status_failure("p", 500)) == verdict(status_failure("p", 529)) == "fail"
    assert verdict(status_failure("p", 408)) == "fail"
    assert verdict(transport_failure("p", httpx.ConnectError("refused"))) == "fail"
    assert verdict(transport_failure("p", httpx.ReadTimeout("slow"))) == "fail"
    assert verdict(UpstreamFailure(504, "upstream_timeout", "timed out", provider="p")) == "fail"
    assert verdict(status_failure("p", 400, "context too long")) == "ok"  # it answered
    for neutral in (status_failure("p", 429), status_failure("p", 401),
                    UpstreamFailure(502, "no_provider", "not served", provider="p"),
                    GatewayError(504, "upstream_timeout", "deadline passed before it ran"),
                    ValueError("a bug"), KeyboardInterrupt()):
        assert verdict(neutral) is None, neutral


class OldRoute(msgspec.Struct, forbid_unknown_fields=True):
    """Route as workers of the version before weights decode it."""

    provider: str
    model: str


class OldJob(msgspec.Struct):
    routes: list[OldRoute]


async def test_a_job_carries_bare_routes_an_older_worker_can_decode(redis_url: str) -> None:
    from ingress.health import RouteHealth
    from schemas.envelopes import Job, job_encoder
    from workers.connection import connect

    config = make_config(redis_url, {"a": {"kind": "mock"}, "b": {"kind": "mock"}}, [])
    routes = [route("a", 3, priority=1), route("b", 1, priority=1)]
    async with connect(redis_url) as redis:
        ordered = await RouteHealth(redis, config).order("s", routes)
    job = Job(request_id="r", org="o", project="p", key_id="k", model="s", routes=ordered,
              body=b"{}", stream=False, reply_to="c", deadline=0.0)
    old = msgspec.msgpack.decode(job_encoder.encode(job), type=OldJob)
    assert [r.provider for r in old.routes] == ["a", "b"]


# --- end to end ----------------------------------------------------------------------------

def provider(fake: FakeOpenAI, **options: Any) -> dict[str, Any]:
    return {"kind": "openai", "base_url": fake.base_url, "timeout_s": 5, "max_retries": 0,
            "cooldown_failures": 3, "cooldown_s": 2, **options}


async def two_providers(nursery: trio.Nursery, redis_url: str, fake_upstream: FakeUpstreams,
                        routes: list[dict[str, Any]], *, a: dict[str, Any] | None = None,
                        limits: dict[str, Any] | None = None,
                        ) -> tuple[Gateway, FakeOpenAI, FakeOpenAI]:
    fake_a: FakeOpenAI = await fake_upstream("openai")
    fake_b: FakeOpenAI = await fake_upstream("openai")
    config = make_config(
        redis_url, {"a": provider(fake_a, **(a or {})), "b": provider(fake_b)},
        [{"slug": "s", "routes": routes}],
        limits={"route_refresh_s": 0.1, **(limits or {})})
    return await start_gateway(nursery, config), fake_a, fake_b


def http(gateway: Gateway) -> httpx.AsyncClient:
    return httpx.AsyncClient(verify=TLS, base_url=gateway.base_url, timeout=30,
                             headers={"authorization": f"Bearer {gateway.secret}"})


async def ask(client: httpx.AsyncClient, slug: str = "s", **body: Any) -> httpx.Response:
    return await client.post("/v1/chat/completions", json={"model": slug, "messages": HI, **body})


def events(gateway_logs: pytest.LogCaptureFixture, name: str) -> list[dict[str, Any]]:
    lines = [json.loads(r.getMessage()) for r in gateway_logs.records
             if r.getMessage().startswith("{")]
    return [line for line in lines if line.get("event") == name]


async def test_traffic_splits_by_weight(nursery: trio.Nursery, redis_url: str,
                                       fake_upstream: FakeUpstreams) -> None:
    gateway, a, b = await two_providers(nursery, redis_url, fake_upstream, [
        {"provider": "a", "model": "m", "weight": 3}, {"provider": "b", "model": "m", "weight": 1}])
    client = gateway.client()
    served: list[str] = []

    async def sender(count: int) -> None:
        for _ in range(count):
            raw = await client.chat.completions.with_raw_response.create(model="s", messages=HI)  # type: ignore[arg-type]
            served.append(raw.headers[PROVIDER])

    async with trio.open_nursery() as senders:
        for _ in range(8):
            senders.start_soon(sender, 50)
    assert len(a.requests) + len(b.requests) == 400
    assert abs(len(a.requests) / 400 - 0.75) <= 0.03, (len(a.requests), len(b.requests))
    assert served.count("a") == len(a.requests)  # the header names who really answered


async def test_headers_name_the_provider_and_the_attempts(
        nursery: trio.Nursery, redis_url: str, fake_upstream: FakeUpstreams) -> None:
    gateway, a, b = await two_providers(nursery, redis_url, fake_upstream, [
        {"provider": "a", "model": "m"}, {"provider": "b", "model": "m"}],
        a={"cooldown_failures": 10})  # a fails three times here: no cool-down in between
    async with http(gateway) as client:
        plain = await ask(client)
        assert (plain.status_code, plain.headers[PROVIDER], plain.headers[ATTEMPTS]) == (200, "a", "1")

        a.then(Behavior(status=500))  # a fails once: b answers on the second attempt
        failed_over = await ask(client)
        assert failed_over.status_code == 200
        assert (failed_over.headers[PROVIDER], failed_over.headers[ATTEMPTS]) == ("b", "2")

        a.then(Behavior(status=503))
        async with client.stream("POST", "/v1/chat/completions",
                                 json={"model": "s", "messages": HI, "stream": True}) as streamed:
            assert streamed.status_code == 200
            assert (streamed.headers[PROVIDER], streamed.headers[ATTEMPTS]) == ("b", "2")
            assert (await streamed.aread()).endswith(b"data: [DONE]\n\n")

        a.then(Behavior(status=500))
        b.then(Behavior(status=502))
        both = await ask(client)
        assert both.status_code == 502 and both.json()["error"]["code"] == "upstream_error"
        assert (both.headers[PROVIDER], both.headers[ATTEMPTS]) == ("b", "2")

        refused = await ask(client, slug="nope")  # no provider was tried: no such headers
        assert refused.status_code == 400 and PROVIDER not in refused.headers
        assert ATTEMPTS not in refused.headers


async def cool_down_a(client: httpx.AsyncClient, gateway: Gateway, a: FakeOpenAI,
                      b: FakeOpenAI) -> None:
    """Make `a` fail three times in a row (each request still answered by `b`)."""
    a.then(*[Behavior(status=500)] * 3)
    while len(a.requests) < 3:
        reply = await ask(client)
        assert reply.status_code == 200
    assert await gateway.redis.exists([names.cooldown("a")]) == 1


async def wait_cool_down_over(gateway: Gateway, within_s: float = 5) -> None:
    with trio.fail_after(within_s):
        while await gateway.redis.exists([names.cooldown("a")]):
            await trio.sleep(0.05)
    await trio.sleep(0.3)  # the ingress's view catches up (route_refresh_s = 0.1)


async def test_cool_down_skips_the_route_and_one_probe_restores_it(
        nursery: trio.Nursery, redis_url: str, fake_upstream: FakeUpstreams,
        switchboard_logs: pytest.LogCaptureFixture) -> None:
    gateway, a, b = await two_providers(nursery, redis_url, fake_upstream, [
        {"provider": "a", "model": "m", "weight": 1}, {"provider": "b", "model": "m", "weight": 1}])
    async with http(gateway) as client:
        await cool_down_a(client, gateway, a, b)
        [start] = events(switchboard_logs, "provider_cooldown")
        assert (start["provider"], start["phase"], start["failures"]) == ("a", "start", 3)
        await trio.sleep(0.3)  # the ingress's view catches up
        for _ in range(12):
            reply = await ask(client)
            assert reply.status_code == 200 and reply.headers[PROVIDER] == "b"
        assert len(a.requests) == 3  # skipped while cooling down
        pinned = await client.post("/v1/chat/completions", headers={"vendor": "a"},
                                   json={"model": "s", "messages": HI})
        assert pinned.headers[PROVIDER] == "a"  # a success during the cool-down...
        assert await gateway.redis.exists([names.cooldown("a")]) == 1  # ...does not end it
        await trio.sleep(0.3)
        assert (await ask(client)).headers[PROVIDER] == "b"

        await wait_cool_down_over(gateway)
        a.then(Behavior(delay_s=2.0))  # the probe: slow, then fine
        replies: list[httpx.Response] = []

        async def one() -> None:
            replies.append(await ask(client))

        async with trio.open_nursery() as burst:
            for _ in range(10):
                burst.start_soon(one)
                await trio.sleep(0.02)
        assert len(a.requests) == 5  # exactly one probe went to a; the others to b
        assert sorted(r.headers[PROVIDER] for r in replies) == ["a"] + ["b"] * 9
        end = events(switchboard_logs, "provider_cooldown")[-1]
        assert (end["provider"], end["phase"]) == ("a", "end")
        assert await gateway.redis.exists([names.health("a"), names.cooldown("a"),
                                           names.probe("a")]) == 0
        await trio.sleep(0.3)
        served = [(await ask(client)).headers[PROVIDER] for _ in range(20)]
        assert served.count("a") == 10  # back in the rotation at its weight


async def test_a_failed_probe_starts_another_cool_down(
        nursery: trio.Nursery, redis_url: str, fake_upstream: FakeUpstreams,
        switchboard_logs: pytest.LogCaptureFixture) -> None:
    gateway, a, b = await two_providers(nursery, redis_url, fake_upstream, [
        {"provider": "a", "model": "m"}, {"provider": "b", "model": "m"}])  # a primary, b failover
    async with http(gateway) as client:
        await cool_down_a(client, gateway, a, b)
        await trio.sleep(0.3)
        assert (await ask(client)).headers[PROVIDER] == "b"  # the primary is skipped
        await wait_cool_down_over(gateway)
        a.then(Behavior(status=500))
        probe = await ask(client)
        assert (probe.status_code, probe.headers[PROVIDER], probe.headers[ATTEMPTS]) == (200, "b", "2")
        assert len(a.requests) == 4
        phases = [e["phase"] for e in events(switchboard_logs, "provider_cooldown")]
        assert phases == ["start", "start"]
        await trio.sleep(0.3)
        for _ in range(5):
            assert (await ask(client)).headers[PROVIDER] == "b"
        assert len(a.requests) == 4


async def test_traffic_shifts_away_from_a_stalled_provider(
        nursery: trio.Nursery, redis_url: str, fake_upstream: FakeUpstreams) -> None:
    gateway, a, b = await two_providers(
        nursery, redis_url, fake_upstream,
        [{"provider": "a", "model": "m", "weight": 1}, {"provider": "b", "model": "m", "weight": 1}],
        a={"max_concurrency": 1, "timeout_s": 30}, limits={"backlog_skew": 3})
    a.then(*[Behavior(delay_s=25)] * 40)  # a stalls: its one slot hangs, its queue fills
    async with http(gateway) as client, trio.open_nursery() as stalled:
        for _ in range(16):
            stalled.start_soon(ask, client)
        # About half go to a (fewer if the view already saw its queue grow): one runs,
        # the rest wait in its queue.
        with trio.fail_after(10):
            while len(b.requests) + await gateway.redis.xlen(names.queue("a")) < 16:
                await trio.sleep(0.05)
        before = await gateway.redis.xlen(names.queue("a"))
        assert before >= 5  # 1 running + more than backlog_skew waiting
        await trio.sleep(0.3)  # the ingress's view catches up
        for _ in range(20):
            reply = await ask(client)
            assert reply.status_code == 200 and reply.headers[PROVIDER] == "b"
        assert await gateway.redis.xlen(names.queue("a")) == before  # nothing more queued on a
        assert len(a.requests) == 1
        stalled.cancel_scope.cancel()


async def test_the_cool_down_and_its_probe_are_shared_by_every_ingress(
        nursery: trio.Nursery, redis_url: str, fake_upstream: FakeUpstreams) -> None:
    gateway, a, b = await two_providers(nursery, redis_url, fake_upstream, [
        {"provider": "a", "model": "m", "weight": 1}, {"provider": "b", "model": "m", "weight": 1}])
    binds = await nursery.start(run_ingress, gateway.config, "127.0.0.1", 0)
    other = Gateway(**{**vars(gateway), "base_url": binds[0]})
    async with http(gateway) as first, http(other) as second:
        await cool_down_a(first, gateway, a, b)  # seen through the first ingress only
        await trio.sleep(0.3)
        for _ in range(10):
            assert (await ask(second)).headers[PROVIDER] == "b"
        assert len(a.requests) == 3

        await wait_cool_down_over(gateway)
        a.then(Behavior(delay_s=2.0))
        served: list[str] = []

        async def one(client: httpx.AsyncClient) -> None:
            served.append((await ask(client)).headers[PROVIDER])

        async with trio.open_nursery() as burst:
            for i in range(12):
                burst.start_soon(one, first if i % 2 else second)
                await trio.sleep(0.02)
        assert sorted(served) == ["a"] + ["b"] * 11  # one probe between both ingresses
        assert len(a.requests) == 4


async def test_a_success_clears_a_streak_in_the_step_that_answers_the_job(
        nursery: trio.Nursery, redis_url: str, fake_upstream: FakeUpstreams) -> None:
    # The provider's success is recorded by the worker's finish script (its first key the
    # job stream), not by a script call of its own on the provider's health keys: Redis's
    # slow log, told to log every command, shows which scripts ran on which keys.
    gateway, a, _ = await two_providers(nursery, redis_url, fake_upstream,
                                        [{"provider": "a", "model": "m"}])
    redis = gateway.redis
    async with http(gateway) as client:
        a.then(Behavior(status=500), Behavior(status=500))
        assert [(await ask(client)).status_code for _ in range(2)] == [502, 502]
        assert await redis.hget(names.health("a"), "fails") == b"2"
        await redis.config_set({"slowlog-log-slower-than": 0, "slowlog-max-len": 100_000})
        try:
            await redis.slowlog_reset()
            answers = [await ask(client) for _ in range(10)]
            logged = await redis.slowlog_get(100_000)
        finally:
            await redis.config_set({"slowlog-log-slower-than": 10_000, "slowlog-max-len": 128})
            await redis.slowlog_reset()
    assert [answer.status_code for answer in answers] == [200] * 10
    assert await redis.exists([names.health("a")]) == 0  # the streak is over
    scripts = [[bytes(word) for word in entry.command] for entry in logged
               if entry.command[0].lower() in (b"evalsha", b"eval")]
    keys = [[word.decode() for word in command[3:3 + int(command[2])]] for command in scripts]
    finishes = [k for k in keys if k[0] == names.queue("a") and names.health("a") in k]
    assert len(finishes) == 10  # each answer's finish step, with the provider's health keys
    records = [k for k in keys if k == [names.health("a"), names.cooldown("a"), names.probe("a")]]
    assert records == []  # and no health record of its own
