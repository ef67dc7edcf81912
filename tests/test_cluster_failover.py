"""The gateway through a failover of the cluster master that holds its names: the master
is killed, its replica is promoted, and the same ingress and worker processes answer again
without a restart; while the slot has no master a request ends with a clear error (never
hangs), and nothing is answered or metered twice.

A cluster of its own per test (three masters, a replica of the one that owns `{sb}`, a
short node timeout so the failover takes seconds), since the test kills one of its nodes.
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import trio

from ingress.admission import Admission
from ingress.keys import KeyStore
from schemas import names
from tests.fleet import Fleet
from tests.redis_cluster import Cluster, Node, start_cluster
from workers.connection import connect

NODE_TIMEOUT_MS = 1000  # the other masters fail a silent one after this; a replica then takes over
RECOVER_S = 30.0  # promotion (about 2 node timeouts) plus the gateway re-finding the slot

FLEET_CONFIG = """
[limits]
heartbeat_s = 0.2
reclaim_after_s = 1.0
redis_timeout_s = 1.0
request_timeout_s = 10

[providers.mock]
kind = "mock"

[providers.slow]
kind = "mock"
chunks = 40
chunk_delay_ms = 100

[[models]]
slug = "echo"
routes = [{ provider = "mock", model = "echo" }]

[[models]]
slug = "slow-echo"
routes = [{ provider = "slow", model = "echo" }]
"""


@pytest.fixture
def failing_cluster(tmp_path: Path) -> Iterator[tuple[Cluster, Node, Node]]:
    """A private cluster, the master that owns the gateway's slot, and its synced replica."""
    cluster = start_cluster(tmp_path / "cluster", node_timeout_ms=NODE_TIMEOUT_MS)
    try:
        owner = cluster.owner(cluster.slot("{sb}"))
        replica = cluster.add_replica(owner)
        yield cluster, owner, replica
    finally:
        cluster.stop()


def runs_and_answers(fleet: Fleet) -> tuple[set[str], set[str]]:
    """From the fleet's logs: the requests whose job ran to an answer and finished it
    (each once: asserted), and those whose client got a 200."""
    events = [json.loads(line) for line in fleet.log_text().splitlines() if line.startswith("{")]
    ran = [e["request_id"] for e in events if e["event"] == "job" and e["outcome"] == "done"]
    assert len(ran) == len(set(ran)), ran  # no request ran upstream twice
    # A run whose finish found the job no longer its own published and metered nothing.
    unfinished = {e["request_id"] for e in events if e["event"] == "job_not_owned"}
    return set(ran) - unfinished, {e["request_id"] for e in events
                                   if e["event"] == "request" and e["status"] == 200}


async def steadily_ready(base: str, steady_s: float = 1.5) -> None:
    """Return once the ingress's /readyz has answered 200 for `steady_s` without a break."""
    async with httpx.AsyncClient(base_url=base, trust_env=False, timeout=5) as http:
        with trio.fail_after(RECOVER_S):
            since = time.monotonic()
            while time.monotonic() - since < steady_s:
                if (await http.get("/readyz")).status_code != 200:
                    since = time.monotonic()
                await trio.sleep(0.05)


def promoted(replica: Node) -> bool:
    try:
        return "role:master" in replica.command("INFO", "replication") \
            and replica.cluster_info().get("cluster_state") == "ok"
    except Exception:  # (redis-cli failing while the node is busy)
        return False


async def test_the_same_processes_answer_again_after_their_master_fails_over(
        failing_cluster: tuple[Cluster, Node, Node], tmp_path: Path) -> None:
    cluster, owner, replica = failing_cluster
    url = cluster.url  # a master that is not the owner: it survives the failover
    async with connect(url) as redis:
        _, secret = await KeyStore(redis).create("acme", "proj", "", "failover")
        fleet = Fleet(tmp_path, FLEET_CONFIG, url)
        try:
            base = await fleet.serve("in1")
            await fleet.worker("w1")
            client = openai.AsyncOpenAI(base_url=base + "/v1", api_key=secret, max_retries=0,
                                        timeout=15)

            async def ask(text: str) -> str | None:
                answer = await client.chat.completions.create(
                    model="echo", messages=[{"role": "user", "content": text}])
                return answer.choices[0].message.content

            for index in range(3):
                assert await ask(f"before {index}") == f"before {index}"
            # Every write so far is on the replica before its master dies (WAIT counts the
            # replicas that acknowledged them), so the promoted replica has all of it.
            assert owner.command("WAIT", "1", "5000").strip() == "1"
            owner.process.send_signal(signal.SIGKILL)
            owner.process.wait(timeout=10)

            # Until the gateway finds the new master, each request ends within its bound
            # with the documented error shape: 503 (Redis unreachable) or 429 (busy).
            refused: list[tuple[int, str | None]] = []
            with trio.fail_after(RECOVER_S):
                while True:
                    started = time.monotonic()
                    try:
                        text = f"during {len(refused)}"
                        assert await ask(text) == text
                        break
                    except openai.APIStatusError as exc:
                        refused.append((exc.status_code, exc.code))
                    assert time.monotonic() - started < 12.0  # never held past its bound
                    await trio.sleep(0.2)
            assert promoted(replica), "the gateway answered before the replica took over?"
            assert {status for status, _ in refused} <= {429, 503}, refused
            assert all(code for _, code in refused), refused

            # coredis's subscriber may still end once more soon after the promotion (the
            # known gap below), which refuses requests for a moment while the hub
            # re-subscribes; once /readyz has said ready for a while, it has settled.
            await steadily_ready(base)
            # The same processes go on: plain and streamed answers, metered once each.
            after = [await ask(f"after {index}") for index in range(5)]
            assert after == [f"after {index}" for index in range(5)]
            stream = await client.chat.completions.create(
                model="echo", messages=[{"role": "user", "content": "a stream after"}],
                stream=True)
            pieces = [chunk.choices[0].delta.content async for chunk in stream
                      if chunk.choices and chunk.choices[0].delta.content]
            assert "".join(pieces) == "a stream after"
            await client.close()
            assert all(process.poll() is None for process in fleet.processes.values())
            # (A client of the test's own: the one above has not been told of the new master.)
            async with connect(url) as after_failover:
                usage = await Admission(after_failover).usage("acme")
                assert await after_failover.xlen(names.queue("mock")) == 0  # all acknowledged
        finally:
            statuses = fleet.stop_all()
    assert statuses == {"in1": 0, "w1": 0}, fleet.log_text()
    ran, answered = runs_and_answers(fleet)
    assert len(answered) == 3 + 1 + 5 + 1 and answered <= ran
    assert usage["requests"] == len(ran), usage  # each run metered once
    # Known gap (docs/operations.md, "Redis Cluster"): coredis's sharded subscriber can
    # end just after re-subscribing on the promoted master, dropping a frame it had
    # taken; that request ran and was metered, and its client was told 503 when no frame
    # came within the reply hub's GAP_WAIT_S. One request at most here: this client asks
    # one at a time.
    assert len(ran - answered) <= 1, ran - answered


async def test_a_stream_cut_by_the_failover_ends_in_its_bound_and_is_not_run_twice(
        failing_cluster: tuple[Cluster, Node, Node], tmp_path: Path) -> None:
    # 40 chunks 0.1 s apart: the master dies about a second into the stream. Its frames
    # published meanwhile are lost with the master (pub/sub is not replicated): the client
    # may not get the whole answer, but its stream must end, with an error event or with
    # the whole text, never hang, and the job must not be run again once output began.
    cluster, owner, replica = failing_cluster
    url = cluster.url
    async with connect(url) as redis:
        _, secret = await KeyStore(redis).create("acme", "proj", "", "failover")
    fleet = Fleet(tmp_path, FLEET_CONFIG, url)
    text = " ".join(f"w{i}" for i in range(40))
    try:
        base = await fleet.serve("in1")
        await fleet.worker("w1")
        client = openai.AsyncOpenAI(base_url=base + "/v1", api_key=secret, max_retries=0,
                                    timeout=30)
        pieces: list[str] = []
        ended: list[str] = []

        async def listen() -> None:
            stream = await client.chat.completions.create(
                model="slow-echo", messages=[{"role": "user", "content": text}], stream=True)
            try:
                async for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        pieces.append(chunk.choices[0].delta.content)
                ended.append("done")
            except openai.APIError as exc:  # the error event the gateway sends mid-stream
                ended.append(f"error {exc.code}")

        with trio.fail_after(25):  # the request's 10 s bound, the failover, and slack
            async with trio.open_nursery() as nursery:
                nursery.start_soon(listen)
                with trio.fail_after(5):
                    while len(pieces) < 5:
                        await trio.sleep(0.02)
                owner.command("WAIT", "1", "5000")
                owner.process.send_signal(signal.SIGKILL)
                owner.process.wait(timeout=10)
        await client.close()
        assert len(ended) == 1, ended
        whole = "".join(pieces)
        assert text.startswith(whole)  # what arrived is a prefix, in order, nothing twice
        if ended == ["done"]:
            assert whole == text
        assert all(process.poll() is None for process in fleet.processes.values())
        # Its worker could not finish the job on the dead master: the promoted replica
        # holds it pending, and it is taken back and ended without another upstream call.
        with trio.fail_after(RECOVER_S):
            while True:
                with contextlib.suppress(Exception):  # (the cluster re-electing)
                    async with connect(url) as redis:
                        if await redis.xlen(names.queue("slow")) == 0:
                            break
                await trio.sleep(0.2)
        assert promoted(replica)
    finally:
        statuses = fleet.stop_all()
    assert statuses == {"in1": 0, "w1": 0}, fleet.log_text()
    runs = [json.loads(line) for line in fleet.log_text().splitlines()
            if '"event":"job"' in line]
    # The first run, cut off; any later run of the reclaimed copy answers worker_lost at
    # once (DESIGN.md: one attempt once output began), so upstream was called once.
    assert runs[0]["attempt"] == 0, runs
    assert all(run.get("code") == "worker_lost" for run in runs[1:]), runs
