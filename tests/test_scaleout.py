"""Scale-out under faults: two ingress and two worker processes (as the Procfile runs them)
share one Redis while a worker is SIGKILLed and restarted under load.

Every answer must be complete and correct (each request's text is unique and the mock
echoes it, so a mixed-up answer shows), none doubled (metering counts each job once), and
the only failures are streams that had begun on the killed worker, ended explicitly.
"""

from __future__ import annotations

import json
from pathlib import Path

import openai
import trio

from ingress.admission import Admission
from ingress.keys import KeyStore
from tests.fleet import Fleet
from workers.connection import connect

REQUESTS = 240
CONCURRENCY = 24
KILL_AFTER = 80  # answers received before the worker is killed
CONFIG = """
[providers.mock]
kind = "mock"
latency_ms = 150
chunks = 6
chunk_delay_ms = 60
max_concurrency = 16

[[models]]
slug = "echo"
routes = [{ provider = "mock", model = "echo" }]
"""


def prompt(index: int) -> str:
    return f"request {index} asks for alpha beta gamma delta epsilon {index}"


async def test_two_ingresses_two_workers_survive_a_worker_killed_under_load(
        redis_url: str, tmp_path: Path) -> None:
    async with connect(redis_url) as redis:
        _, secret = await KeyStore(redis).create("acme", "proj", "", "fleet")
    fleet = Fleet(tmp_path, CONFIG, redis_url)
    completed: list[int] = []
    cut: list[int] = []  # streams that ended with an explicit error event
    try:
        bases = [await fleet.serve("in1"), await fleet.serve("in2")]
        await fleet.worker("w1")
        await fleet.worker("w2")
        clients = [openai.AsyncOpenAI(base_url=base + "/v1", api_key=secret, max_retries=0,
                                      timeout=60) for base in bases]
        killed = trio.Event()
        queue_send, queue_receive = trio.open_memory_channel[int](REQUESTS)
        for index in range(REQUESTS):
            queue_send.send_nowait(index)
        queue_send.close()

        async def call(index: int) -> None:
            client = clients[index % 2]
            text = prompt(index)
            messages = [{"role": "user", "content": text}]
            if index % 2:  # streamed
                stream = await client.chat.completions.create(
                    model="echo", messages=messages, stream=True)  # type: ignore[arg-type]
                pieces: list[str] = []
                try:
                    async for chunk in stream:
                        pieces.extend(c.delta.content or "" for c in chunk.choices)
                except openai.APIError:
                    assert text.startswith("".join(pieces)), (index, pieces)  # not mixed up
                    cut.append(index)
                    return
                assert "".join(pieces) == text, (index, pieces)
            else:
                answer = await client.chat.completions.create(
                    model="echo", messages=messages)  # type: ignore[arg-type]
                assert answer.choices[0].message.content == text, index
            completed.append(index)

        async def caller() -> None:
            async for index in queue_receive:
                await call(index)

        async def killer() -> None:
            while len(completed) + len(cut) < KILL_AFTER:
                await trio.sleep(0.01)
            fleet.kill("w1")
            killed.set()
            await trio.sleep(0.5)
            await fleet.worker("w1")  # a new process, as a supervisor would restart it

        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(killer)
                async with trio.open_nursery() as callers:
                    for _ in range(CONCURRENCY):
                        callers.start_soon(caller)
        for client in clients:
            await client.close()
        assert killed.is_set()
        assert sorted(completed + cut) == list(range(REQUESTS))  # nothing lost
        assert all(index % 2 for index in cut), cut  # only streams may end cut
        assert len(cut) <= CONCURRENCY, cut  # only those the kill explains
        async with connect(redis_url) as redis:
            usage = await Admission(redis).usage("acme")
        # Each job is metered once: a doubled run would push this past what was answered.
        assert len(completed) <= usage["requests"] <= len(completed) + len(cut), usage
    finally:
        statuses = fleet.stop_all()
    logs = fleet.log_text()
    reruns = [json.loads(line) for line in logs.splitlines()
              if '"event":"job"' in line and '"attempt":0' not in line]
    assert reruns or cut, "the kill hit no job: the test proved nothing"
    # The SIGKILLed w1 is not in `statuses`: its successor replaced it, and drains cleanly.
    assert all(status == 0 for status in statuses.values()), statuses
