"""`serve --processes N` and `worker --processes N`: N children on one port, restarted when
they die, drained together on SIGTERM (ingress/processes.py)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import pytest
import trio

from ingress import cli
from ingress.keys import KeyStore
from tests.fleet import Fleet
from workers.connection import connect

CONFIG = """
[providers.mock]
kind = "mock"
latency_ms = 20

[providers.slow]
kind = "mock"
latency_ms = 1500

[[models]]
slug = "echo"
routes = [{ provider = "mock", model = "echo" }]

[[models]]
slug = "slow"
routes = [{ provider = "slow", model = "echo" }]
"""
HI = [{"role": "user", "content": "hi"}]


def listeners(port: int) -> set[int]:
    """The pids of the processes with a socket listening on 127.0.0.1:port."""
    out = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True,
                         check=True).stdout
    return {int(pid) for pid in re.findall(r"pid=(\d+)", out)}


def children(pid: int) -> set[int]:
    """The direct children of a process."""
    found = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found.update(int(word) for word in text)
    return found


async def wait_for(check: Callable[[], bool]) -> None:
    with trio.fail_after(20):
        while not check():
            await trio.sleep(0.05)


async def fresh_connection_chats(base: str, secret: str, count: int) -> list[int]:
    """`count` chat completions, each on a new connection (so the kernel picks a process)."""
    statuses = []
    for _ in range(count):
        async with httpx.AsyncClient(base_url=base, trust_env=False) as http:
            response = await http.post("/v1/chat/completions", json={"model": "echo", "messages": HI},
                                       headers={"authorization": f"Bearer {secret}"})
            statuses.append(response.status_code)
    return statuses


async def test_n_ingresses_share_a_port_survive_a_kill_and_drain_on_sigterm(
        redis_url: str, tmp_path: Path) -> None:
    async with connect(redis_url) as redis:
        _, secret = await KeyStore(redis).create("acme", "proj", "", "procs")
    fleet = Fleet(tmp_path, CONFIG, redis_url)
    try:
        base = await fleet.serve("web", "--processes", "2")
        await fleet.worker("work", "--processes", "2", ready=2)
        port = int(base.rsplit(":", 1)[1])
        parent = fleet.processes["web"].pid
        await wait_for(lambda: len(listeners(port)) == 2)
        first = listeners(port)
        assert first == children(parent), "the children listen, the parent does not"
        assert len(children(fleet.processes["work"].pid)) == 2

        assert await fresh_connection_chats(base, secret, 30) == [200] * 30

        # A child killed outright is replaced; the port keeps answering meanwhile.
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        assert await fresh_connection_chats(base, secret, 10) == [200] * 10
        await wait_for(lambda: len(listeners(port)) == 2 and victim not in listeners(port))
        assert b'"event":"process_exited"' in fleet.logs[0].read_bytes()
        assert await fresh_connection_chats(base, secret, 10) == [200] * 10

        # SIGTERM to the parents drains: a request in flight gets its answer.
        client = openai.AsyncOpenAI(base_url=base + "/v1", api_key=secret, max_retries=0)
        answers: list[str] = []

        async def slow_call() -> None:
            answer = await client.chat.completions.create(model="slow", messages=HI)  # type: ignore[arg-type]
            answers.append(answer.choices[0].message.content or "")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(slow_call)
            await trio.sleep(0.5)  # the request is queued or running upstream
            fleet.processes["web"].send_signal(signal.SIGTERM)
            fleet.processes["work"].send_signal(signal.SIGTERM)
        assert answers == ["hi"]
        statuses = {name: await trio.to_thread.run_sync(process.wait, 20)
                    for name, process in fleet.processes.items()}
        assert statuses == {"web": 0, "work": 0}, fleet.log_text()
        assert not listeners(port)
    finally:
        fleet.stop_all()


async def test_a_taken_port_is_one_line_and_status_1(redis_url: str, tmp_path: Path) -> None:
    fleet = Fleet(tmp_path, CONFIG, redis_url)
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        process = fleet._start("web", ["serve", "--host", "127.0.0.1", "--port", str(port),
                                       "--processes", "3"])
        status = await trio.to_thread.run_sync(process.wait, 20)
    assert status == 1
    assert f"cannot listen on 127.0.0.1:{port}" in fleet.log_text()


async def test_processes_must_be_at_least_one(tmp_path: Path, redis_url: str) -> None:
    fleet = Fleet(tmp_path, CONFIG, redis_url)
    process = fleet._start("web", ["serve", "--processes", "0"])
    assert await trio.to_thread.run_sync(process.wait, 20) == 2
    assert "must be 1 or more" in fleet.log_text()


def test_the_default_is_one_process_per_usable_core(monkeypatch: pytest.MonkeyPatch) -> None:
    # The machine's cores are what the OS lets this process run on (taskset, cgroups' cpusets).
    parser = cli._parser()
    for cores, expected in ((range(1), 1), (range(2), 2), (range(4), 4), (range(9), 9)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda _pid, c=cores: set(c))
        for verb in ("serve", "worker"):
            assert parser.parse_args([verb]).processes == expected
            assert parser.parse_args([verb, "--processes", "auto"]).processes == expected
            assert parser.parse_args([verb, "--processes", "3"]).processes == 3
