"""The gateway on a Redis Cluster, unchanged: the end-to-end suite's core cases through the
official `openai` SDK on a private three-master cluster (tests/redis_cluster.py).

Every gateway here is given the URL of a node that does not own the slot of its names
(`{sb}`-tagged, schemas/names.py): a plain client would be answered MOVED there, so
these pass only through a real cluster client; the first test also shows where the
names and the reply channels live.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import coredis
import httpx
import openai
import pytest
import trio

from ingress.admission import Admission
from ingress.keys import KeyStore
from ingress.server import run_ingress
from schemas import names
from tests.conftest import TLS, UPSTREAM_SECRET, Gateway, make_config, start_gateway
from tests.fakes.openai_upstream import Behavior, FakeOpenAI
from tests.fleet import Fleet
from tests.redis_cluster import Cluster
from tests.test_limits import set_limits
from tests.test_redis_client import assert_slots_come_back
from workers.connection import SUBSCRIBED, connect, listeners, subscription

HI = [{"role": "user", "content": "hi there"}]


async def cluster_gateway(nursery: trio.Nursery, url: str, fake: FakeOpenAI,
                          monkeypatch: pytest.MonkeyPatch, **limits: Any) -> Gateway:
    """Ingress + one worker on the cluster: model `gpt-test` on the fake OpenAI upstream."""
    monkeypatch.setenv("FAKE_UP_KEY", UPSTREAM_SECRET)
    config = make_config(
        url, {"up": {"kind": "openai", "base_url": fake.base_url, "api_key_env": "FAKE_UP_KEY",
                     "timeout_s": 10, "max_retries": 0}},
        [{"slug": "gpt-test", "routes": [{"provider": "up", "model": "upstream-model-1"}]}],
        limits=limits)
    return await start_gateway(nursery, config)


async def test_a_chat_on_the_cluster_goes_through_a_cluster_client_to_one_shard(
        nursery: trio.Nursery, cluster_url: str, redis_cluster: Cluster,
        fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> None:
    gateway = await cluster_gateway(nursery, cluster_url, fake_openai, monkeypatch)
    answer = await gateway.client().chat.completions.create(model="gpt-test", messages=HI)  # type: ignore[arg-type]
    assert answer.choices[0].message.content == "hi there"
    assert answer.model == "gpt-test"
    assert isinstance(gateway.redis, coredis.RedisCluster)
    assert len(list(gateway.redis.primaries)) == 3
    assert all(node.cluster_info()["cluster_size"] == "3" for node in redis_cluster.nodes)
    # Every name of the gateway is in the slot of `{sb}`, on the one master that serves it;
    # the URL named another master.
    slot = redis_cluster.slot("{sb}")
    owner = redis_cluster.owner(slot)
    assert f":{owner.port}/" not in cluster_url
    for name in (names.queue("up"), names.usage("acme", names.month()), names.KEY_IDS,
                 names.CANCEL_CHANNEL, names.KEYS_CHANGED, names.reply("any")):
        assert redis_cluster.slot(name) == slot, name
    assert int(owner.command("EXISTS", names.queue("up"), names.KEY_IDS)) == 2
    assert int(owner.command("DBSIZE")) > 0
    others = [node for node in redis_cluster.nodes if node is not owner]
    assert [int(node.command("DBSIZE")) for node in others] == [0, 0]
    # The reply channel, the key changes and the workers' cancel channel are shard channels,
    # subscribed on the owning master only (SSUBSCRIBE, answered by SPUBLISH there).
    shard_channels = set(owner.command("PUBSUB", "SHARDCHANNELS").split())
    assert {names.CANCEL_CHANNEL, names.KEYS_CHANGED} <= shard_channels
    assert [c for c in shard_channels if c.startswith(names.reply(""))], shard_channels
    for node in others:
        assert node.command("PUBSUB", "SHARDCHANNELS").split() == []
    usage = await Admission(gateway.redis).usage("acme")
    assert usage["requests"] == 1


async def test_a_stream_on_the_cluster_comes_whole_in_order_and_ends_with_done(
        nursery: trio.Nursery, cluster_url: str, fake_openai: FakeOpenAI,
        monkeypatch: pytest.MonkeyPatch) -> None:
    gateway = await cluster_gateway(nursery, cluster_url, fake_openai, monkeypatch)
    pieces = [f"p{i} " for i in range(20)]
    fake_openai.then(Behavior(chunks=pieces, chunk_delay_s=0.01))
    async with gateway.client().chat.completions.with_streaming_response.create(
            model="gpt-test", messages=HI, stream=True) as response:  # type: ignore[arg-type]
        events = [line.removeprefix("data: ") async for line in response.iter_lines() if line]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    contents = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
    assert [c for c in contents if c] == pieces  # every chunk once, in order
    assert {c["model"] for c in chunks} == {"gpt-test"}


async def test_a_rate_limit_on_the_cluster_holds_under_concurrency(
        nursery: trio.Nursery, cluster_url: str, fake_openai: FakeOpenAI,
        monkeypatch: pytest.MonkeyPatch) -> None:
    gateway = await cluster_gateway(nursery, cluster_url, fake_openai, monkeypatch)
    await set_limits(gateway.redis, "key", gateway.key_id, {"rpm": 3})
    codes: list[int] = []

    async def ask() -> None:
        try:
            await gateway.client().chat.completions.create(model="gpt-test", messages=HI)  # type: ignore[arg-type]
            codes.append(200)
        except openai.RateLimitError as exc:
            assert exc.code == "rate_limit_exceeded"
            assert exc.response.headers["x-ratelimit-remaining-requests"] == "0"
            codes.append(429)

    async with trio.open_nursery() as asking:
        for _ in range(8):
            asking.start_soon(ask)
    assert sorted(codes) == [200] * 3 + [429] * 5
    assert len(fake_openai.requests) == 3  # the refused ones never went upstream


async def test_a_revoke_reaches_every_ingress_on_the_cluster(
        nursery: trio.Nursery, cluster_url: str, fake_openai: FakeOpenAI,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Keys are cached for a minute: only the `keys:changed` broadcast explains a 401 sooner.
    gateway = await cluster_gateway(nursery, cluster_url, fake_openai, monkeypatch,
                                    key_cache_s=60.0, key_miss_cache_s=0.0)
    second = await nursery.start(run_ingress, gateway.config, "127.0.0.1", 0)
    clients = [gateway.client(), openai.AsyncOpenAI(base_url=second[0] + "/v1",
                                                    api_key=gateway.secret, max_retries=0)]
    for client in clients:  # each ingress has the key cached now
        await client.chat.completions.create(model="gpt-test", messages=HI)  # type: ignore[arg-type]
    assert await KeyStore(gateway.redis).revoke(gateway.key_id) is not None
    revoked = time.monotonic()
    for client in clients:
        with trio.fail_after(5):
            while True:
                try:
                    await client.chat.completions.create(model="gpt-test", messages=HI)  # type: ignore[arg-type]
                except openai.AuthenticationError:
                    break
                await trio.sleep(0.02)
    assert time.monotonic() - revoked < 1.0


async def test_a_client_leaving_mid_stream_cancels_upstream_on_the_cluster(
        nursery: trio.Nursery, cluster_url: str, fake_openai: FakeOpenAI,
        monkeypatch: pytest.MonkeyPatch) -> None:
    gateway = await cluster_gateway(nursery, cluster_url, fake_openai, monkeypatch)
    await gateway.start_worker()  # two workers: the cancel must reach whichever runs the job
    fake_openai.then(Behavior(chunks=[f"c{i}" for i in range(100)], chunk_delay_s=0.1))
    client = gateway.client()
    stream = await client.chat.completions.create(model="gpt-test", messages=HI, stream=True)  # type: ignore[arg-type]
    async for _ in stream:
        break
    await stream.close()
    await client.close()
    left = time.monotonic()
    with trio.fail_after(5):
        while not fake_openai.disconnects:
            await trio.sleep(0.02)
    assert fake_openai.disconnects[0] - left < 1.0


FLEET_CONFIG = """
[limits]
heartbeat_s = 0.2
reclaim_after_s = 1.0

[providers.mock]
kind = "mock"
latency_ms = 2000

[[models]]
slug = "echo"
routes = [{ provider = "mock", model = "echo" }]
"""


async def test_a_worker_killed_mid_job_on_the_cluster_is_replaced_and_answered_once(
        cluster_url: str, tmp_path: Path) -> None:
    async with connect(cluster_url) as redis:
        assert isinstance(redis, coredis.RedisCluster)
        _, secret = await KeyStore(redis).create("acme", "proj", "", "fleet")
        fleet = Fleet(tmp_path, FLEET_CONFIG, cluster_url)
        try:
            base = await fleet.serve("in1")
            await fleet.worker("w1")
            client = openai.AsyncOpenAI(base_url=base + "/v1", api_key=secret, max_retries=0,
                                        timeout=30)
            text = "a job that outlives its worker"
            answers: list[str | None] = []

            async def ask() -> None:
                answer = await client.chat.completions.create(
                    model="echo", messages=[{"role": "user", "content": text}])
                answers.append(answer.choices[0].message.content)

            async with trio.open_nursery() as asking:
                asking.start_soon(ask)
                with trio.fail_after(10):  # w1 took the job and runs it
                    while not (await redis.xpending(names.queue("mock"), names.GROUP)).pending:
                        await trio.sleep(0.02)
                fleet.kill("w1", signal.SIGKILL)
                await fleet.worker("w2")
            await client.close()
            assert answers == [text]
            assert await redis.xlen(names.queue("mock")) == 0  # acknowledged and removed
            usage = await Admission(redis).usage("acme")
            assert usage["requests"] == 1  # answered and metered once
        finally:
            fleet.stop_all()
    reruns = [json.loads(line) for line in fleet.log_text().splitlines()
              if '"event":"job"' in line]
    assert [job["attempt"] for job in reruns] == [1], reruns  # w1 never finished it; w2 did


async def test_the_cluster_client_gives_back_the_slots_of_cancelled_commands(
        cluster_url: str) -> None:
    await assert_slots_come_back(cluster_url)


async def test_a_channel_s_listeners_are_asked_of_its_own_shard_only(
        cluster_url: str, redis_cluster: Cluster) -> None:
    # coredis sends PUBSUB SHARDNUMSUB to every master and cannot add up a node's error
    # (TypeError, which once took down an ingress's reply channel); the count is the
    # owning shard's alone, so that shard is the only one asked: a master that does not
    # answer (here stopped, for less than the cluster's node timeout) changes nothing.
    channel = names.reply("listeners")
    owner = redis_cluster.owner(redis_cluster.slot(channel))
    others = [node for node in redis_cluster.nodes if node is not owner]
    async with connect(cluster_url) as redis, connect(cluster_url) as subscriber:
        assert await listeners(redis, channel) == 0
        async with subscription(subscriber, channel) as pubsub:
            async for message in pubsub:
                assert message["type"] == SUBSCRIBED
                break
            for node in others:
                node.process.send_signal(signal.SIGSTOP)
            try:
                with trio.fail_after(2):
                    assert await listeners(redis, channel) == 1
            finally:
                for node in others:
                    node.process.send_signal(signal.SIGCONT)


async def test_readiness_asks_the_shard_that_holds_the_gateway_s_names(
        nursery: trio.Nursery, cluster_url: str, redis_cluster: Cluster,
        fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> None:
    # PING goes to every master; a stopped master that holds none of the gateway's names
    # must not make the gateway unready (nor a request wait for it).
    gateway = await cluster_gateway(nursery, cluster_url, fake_openai, monkeypatch)
    owner = redis_cluster.owner(redis_cluster.slot("{sb}"))
    others = [node for node in redis_cluster.nodes if node is not owner]
    async with httpx.AsyncClient(base_url=gateway.base_url, verify=TLS) as http:
        assert (await http.get("/readyz")).status_code == 200
        for node in others:
            node.process.send_signal(signal.SIGSTOP)
        try:
            with trio.fail_after(2):
                assert (await http.get("/readyz")).status_code == 200
        finally:
            for node in others:
                node.process.send_signal(signal.SIGCONT)
