"""The gateway while the slot of its names moves to another master (what `redis-cli
--cluster reshard` does to each slot it moves): requests keep being answered or refused
clearly while the keys migrate, the same processes serve from the new master afterwards,
and nothing runs or is metered twice.

A cluster of its own, since the test moves the slot the other tests' gateways use.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import trio

from ingress.admission import Admission
from ingress.keys import KeyStore
from schemas import names
from tests.fakes.server import serve_asgi
from tests.fleet import Fleet
from tests.redis_cluster import Cluster, move_slot, start_cluster
from tests.test_cluster import cluster_gateway
from tests.test_cluster_failover import FLEET_CONFIG, runs_and_answers
from tests.test_liveness import GatedOpenAI
from workers.connection import connect


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[Cluster]:
    cluster = start_cluster(tmp_path / "cluster")
    try:
        yield cluster
    finally:
        cluster.stop()


async def test_the_gateway_follows_its_slot_to_another_master(
        own_cluster: Cluster, tmp_path: Path) -> None:
    cluster = own_cluster
    slot = cluster.slot("{sb}")
    source = cluster.owner(slot)
    target = next(node for node in cluster.nodes if node is not source)
    url = f"redis://127.0.0.1:{target.port}/0"  # a master that survives the move, as it happens
    async with connect(url) as redis:
        _, secret = await KeyStore(redis).create("acme", "proj", "", "reshard")
    fleet = Fleet(tmp_path, FLEET_CONFIG, url)
    statuses: list[int] = []
    try:
        base = await fleet.serve("in1")
        await fleet.worker("w1")
        client = openai.AsyncOpenAI(base_url=base + "/v1", api_key=secret, max_retries=0,
                                    timeout=15)

        async def ask(text: str) -> None:
            try:
                answer = await client.chat.completions.create(
                    model="echo", messages=[{"role": "user", "content": text}])
                assert answer.choices[0].message.content == text
                statuses.append(200)
            except openai.APIStatusError as exc:
                assert exc.code, exc  # the documented error shape
                statuses.append(exc.status_code)

        for index in range(3):
            await ask(f"before {index}")
        assert statuses == [200] * 3
        moving = trio.Event()

        async def traffic() -> None:  # one request at a time, through the whole move
            index = 0
            while not moving.is_set():
                await ask(f"during {index}")
                index += 1

        async with trio.open_nursery() as nursery:
            nursery.start_soon(traffic)
            await trio.sleep(0.3)
            moved = await trio.to_thread.run_sync(move_slot, cluster, slot, target)
            await trio.sleep(0.5)
            moving.set()
        assert cluster.owner(slot) is target and moved > 0
        during = statuses[3:]
        assert set(during) <= {200, 429, 503}, during
        assert int(source.command("DBSIZE")) == 0  # every name went along

        # The same processes, from the new master: plain and streamed.
        with trio.fail_after(30):
            while True:
                before = len(statuses)
                await ask("after")
                if statuses[before] == 200:
                    break
                await trio.sleep(0.2)
        for index in range(5):
            await ask(f"after {index}")
        assert statuses[-5:] == [200] * 5
        stream = await client.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": "a stream after"}], stream=True)
        pieces = [chunk.choices[0].delta.content async for chunk in stream
                  if chunk.choices and chunk.choices[0].delta.content]
        assert "".join(pieces) == "a stream after"
        await client.close()
        async with connect(url) as redis:
            usage = await Admission(redis).usage("acme")
            assert await redis.xlen(names.queue("mock")) == 0
    finally:
        exits = fleet.stop_all()
    assert exits == {"in1": 0, "w1": 0}, fleet.log_text()
    ran, answered = runs_and_answers(fleet)  # (each ran once)
    assert len(answered) == statuses.count(200) + 1 and answered <= ran  # (+ the stream)
    assert usage["requests"] == len(ran), usage  # each metered once
    # Redis ends the reply subscription on the old master (SUNSUBSCRIBE) mid-move; the
    # request waiting then still gets its answer (the test below), so every request that
    # ran was answered: none was told 503 while its job ran on.
    assert ran == answered, ran - answered


async def test_a_request_waiting_while_its_slot_moves_gets_its_answer(
        nursery: trio.Nursery, own_cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    # The move ends the ingress's reply subscription on the old master (SUNSUBSCRIBE) while
    # a plain request waits for its upstream; the answer comes after the move, published
    # to the new master (live, or kept and read back if the hub is not subscribed there
    # yet). The reply hub once failed every waiter with 503 the moment the subscription
    # ended, while their jobs ran on and were metered.
    cluster = own_cluster
    slot = cluster.slot("{sb}")
    target = next(node for node in cluster.nodes if node is not cluster.owner(slot))
    fake = GatedOpenAI()
    fake.base_url = await nursery.start(serve_asgi, fake) + fake.base_path
    gateway = await cluster_gateway(nursery, f"redis://127.0.0.1:{target.port}/0", fake,
                                    monkeypatch)
    answers: list[str | None] = []

    async def ask() -> None:
        answer = await gateway.client(timeout=30).chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": "hi there"}])
        answers.append(answer.choices[0].message.content)

    async with trio.open_nursery() as asking:
        asking.start_soon(ask)
        with trio.fail_after(5):  # the job runs: its upstream call waits at the gate
            while not fake.requests:
                await trio.sleep(0.01)
        await trio.to_thread.run_sync(move_slot, cluster, slot, target)
        fake.gate.set()
    assert answers == ["hi there"]
    async with connect(f"redis://127.0.0.1:{target.port}/0") as redis:
        assert (await Admission(redis).usage("acme"))["requests"] == 1
