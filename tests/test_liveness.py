"""Worker liveness: dead and frozen workers noticed from their missing heartbeat, entries
finished only by their owner, outcomes nobody heard read back, the cancel listener kept
alive, dead consumers removed.

Real redis-server, real worker processes (`switchboard worker`) that are SIGKILLed and
SIGSTOPped, and the default liveness settings wherever a test is about timing.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from ingress.dev import start_private_redis
from ingress.keys import KeyStore
from schemas import names
from schemas.config import Route
from schemas.envelopes import Done, Job, job_encoder
from tests.conftest import TLS, Gateway, RedisServer, make_config, start_gateway
from tests.fakes.openai_upstream import Behavior, FakeOpenAI
from workers.connection import RedisClient, connect, listeners, subscription
from workers.queue import HEARTBEAT_ENTRIES, Delivery, Queue

HI = [{"role": "user", "content": "hi there"}]
SWITCHBOARD = str(Path(sys.executable).with_name("switchboard"))


def redis_command(port: int, *words: str) -> bytes:
    """One inline command on a fresh connection (test set-up and fault injection only)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall((" ".join(words) + "\r\n").encode())
        return sock.recv(1 << 20)


@dataclass
class WorkerProcess:
    """A `switchboard worker` subprocess and its consumer name (from its ready line)."""

    process: subprocess.Popen[bytes]
    log: Path
    consumer: str = ""

    def lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    async def wait_ready(self) -> None:
        with trio.fail_after(20):
            while True:
                ready = [e for e in self.lines() if e.get("event") == "worker_ready"]
                if ready:
                    self.consumer = ready[0]["consumer"]
                    return
                assert self.process.poll() is None, self.log.read_text()
                await trio.sleep(0.05)

    def signal(self, number: int) -> None:
        os.kill(self.process.pid, number)


@asynccontextmanager
async def worker_processes(tmp_path: Path, redis_url: str, fake: FakeOpenAI, count: int,
                           limits: str = "") -> AsyncIterator[list[WorkerProcess]]:
    """`count` worker processes serving provider `up` (the fake) with the DEFAULT liveness
    limits (plus `limits`, TOML lines of the [limits] table); all ready on entry, all
    gone on exit."""
    config = tmp_path / "workers.toml"
    config.write_text(f"""
[limits]
{limits}
[providers.up]
kind = "openai"
base_url = "{fake.base_url}"
timeout_s = 60
max_retries = 0
[[models]]
slug = "m"
routes = [{{ provider = "up", model = "u" }}]
""")
    env = {**os.environ, "REDIS_URL": redis_url}
    workers: list[WorkerProcess] = []
    try:
        for i in range(count):
            log = tmp_path / f"worker-{i}.log"
            with log.open("w") as sink:
                # Popen only starts the process: the event loop keeps running.
                process = subprocess.Popen(  # noqa: ASYNC220
                    [SWITCHBOARD, "worker", "--config", str(config), "--processes", "1"],
                    env=env, stdout=sink, stderr=sink)
            workers.append(WorkerProcess(process, log))
        for worker in workers:
            await worker.wait_ready()
        yield workers
    finally:
        for worker in workers:
            if worker.process.poll() is None:
                worker.signal(signal.SIGCONT)
                worker.process.kill()
            worker.process.wait()


async def ingress(nursery: trio.Nursery, redis_url: str, fake: FakeOpenAI) -> Gateway:
    """An in-process ingress (no workers) routing slug `m` to provider `up`."""
    config = make_config(redis_url, {"up": {"kind": "openai", "base_url": fake.base_url}},
                         [{"slug": "m", "routes": [{"provider": "up", "model": "u"}]}],
                         limits={"request_timeout_s": 120})
    return await start_gateway(nursery, config, workers=False)


async def owners(gateway: Gateway) -> list[str]:
    """The consumers that hold pending entries of provider `up`, one per entry."""
    rows = await gateway.redis.xpending("{sb}:q:up", "workers", "-", "+", 100)
    return [row.consumer.decode() for row in rows]


async def signal_the_owner(gateway: Gateway, fake: FakeOpenAI, workers: list[WorkerProcess],
                           signum: int) -> tuple[Any, float, WorkerProcess]:
    """Ask once; when the upstream has the call, send `signum` to the worker that owns the
    job. Returns the answer, how long after the signal it came, and the signalled worker."""
    answers: list[Any] = []

    async def ask() -> None:
        answers.append(await gateway.client(timeout=60).chat.completions.create(
            model="m", messages=HI))  # type: ignore[arg-type]

    async with trio.open_nursery() as inner:
        inner.start_soon(ask)
        with trio.fail_after(10):
            while not fake.requests:
                await trio.sleep(0.01)
        [owner] = await owners(gateway)
        [victim] = [w for w in workers if w.consumer == owner]
        victim.signal(signum)
        signalled = time.monotonic()
        with trio.fail_after(30):
            while not answers:
                await trio.sleep(0.05)
    return answers[0], time.monotonic() - signalled, victim


# -- item 1: a dead worker is noticed from its missing heartbeat, at the defaults --

async def test_sigkilled_workers_job_is_rerun_within_10_s_at_default_settings(
        nursery: trio.Nursery, redis_url: str, fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    gateway = await ingress(nursery, redis_url, fake_openai)
    fake_openai.then(Behavior(delay_s=120))  # the first run hangs upstream: its worker dies
    async with worker_processes(tmp_path, redis_url, fake_openai, 2) as workers:
        answer, rerun_after, _ = await signal_the_owner(gateway, fake_openai, workers,
                                                        signal.SIGKILL)
        assert answer.choices[0].message.content == "hi there"
        assert rerun_after < 10, f"re-run {rerun_after:.1f} s after the worker died"
        assert len(fake_openai.requests) == 2
        assert (await gateway.usage())["requests"] == 1


async def test_healthy_long_stream_is_never_stolen_at_default_settings(
        nursery: trio.Nursery, redis_url: str, fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    gateway = await ingress(nursery, redis_url, fake_openai)
    pieces = [f"w{i} " for i in range(20)]
    # 9.5 s: three times the liveness window, and many reclaim rounds of the idle worker
    fake_openai.then(Behavior(chunks=pieces, chunk_delay_s=0.5))
    async with worker_processes(tmp_path, redis_url, fake_openai, 2):
        async with httpx.AsyncClient(verify=TLS, base_url=gateway.base_url, timeout=60) as http:
            reply = await http.post("/v1/chat/completions",
                                    json={"model": "m", "stream": True, "messages": HI},
                                    headers={"authorization": f"Bearer {gateway.secret}"})
    events = [e.removeprefix("data: ") for e in reply.text.split("\n\n") if e]
    assert events[-1] == "[DONE]", events[-1]
    contents = [json.loads(e)["choices"][0]["delta"].get("content") for e in events[:-1]]
    assert [c for c in contents if c] == pieces  # every chunk once, in order
    assert len(fake_openai.requests) == 1


# -- item 7: only the owner heartbeats and finishes an entry --

async def test_reclaimed_job_is_not_taken_back_and_late_finish_is_void(redis_url: str) -> None:
    async with connect(redis_url) as redis:
        queue = Queue(redis)
        await queue.ensure_group("up")
        job = Job(request_id="req_1", org="acme", project="p", key_id="k", model="m",
                  routes=[Route(provider="up", model="u")],
                  body=b"{}", stream=False, reply_to="{sb}:reply:test", deadline=time.time() + 60)
        await redis.xadd("{sb}:q:up", {"j": job_encoder.encode(job)})
        [mine] = await queue.read("up", "worker-a", 1, 10)
        # worker-a is presumed dead (it froze); worker-b reclaims the entry legitimately
        await redis.xclaim("{sb}:q:up", "workers", "worker-b", 0, [mine.entry_id], justid=True)
        lost = await queue.heartbeat("up", "worker-a", [mine.entry_id])  # a resumed: its beat
        assert await owners_of(redis) == ["worker-b"]  # not taken back...
        assert lost == [mine.entry_id]  # ...but reported, so that a stops its run
        done = Done(request_id="req_1", attempt=0, seq=0, provider="up", body=b'{"a":1}')
        usage = {"tokens": 5, "prompt_tokens": 2, "completion_tokens": 3, "requests": 1}
        async with subscription(redis, "{sb}:reply:test") as pubsub:
            await wait_subscribed(redis, "{sb}:reply:test")
            await queue.finish(mine, done, usage=usage)  # a's late finish
            theirs = Delivery(mine.entry_id, mine.job, 1, "worker-b")
            await queue.finish(theirs, done, usage=usage)  # b's: the one answer
            frames = []
            with trio.move_on_after(0.5):
                async for message in pubsub:
                    if message["type"] == "message":
                        frames.append(message["data"])
        assert len(frames) == 1  # published once
        metered = await redis.hgetall(names.usage("acme", names.month()))
        assert int(metered[b"requests"]) == 1 and int(metered[b"tokens"]) == 5  # metered once
        assert await owners_of(redis) == []


async def owners_of(redis: Any) -> list[str]:
    rows = await redis.xpending("{sb}:q:up", "workers", "-", "+", 100)
    return [row.consumer.decode() for row in rows]


async def wait_subscribed(redis: Any, channel: str) -> None:
    with trio.fail_after(5):
        while await listeners(redis, channel) == 0:
            await trio.sleep(0.01)


# -- item 8: an outcome published while the ingress re-subscribes is read back --

class GatedOpenAI(FakeOpenAI):
    """Answers only once `gate` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = trio.Event()

    async def answer(self, received: Any, receive: Any, send: Any) -> None:
        await self.gate.wait()
        await super().answer(received, receive, send)


@contextmanager
def subscribe_denied(port: int) -> Iterator[None]:
    """SSUBSCRIBE is refused (SPUBLISH still works) until the block ends."""
    assert redis_command(port, "ACL", "SETUSER", "default", "-ssubscribe").startswith(b"+OK")
    try:
        yield
    finally:
        assert redis_command(port, "ACL", "SETUSER", "default", "+ssubscribe").startswith(b"+OK")


async def test_outcome_published_while_ingress_resubscribes_is_read_back(
        nursery: trio.Nursery, redis_url: str, redis_server: RedisServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from ingress.replies import ReplyHub

    async def no_watchdog(self: ReplyHub) -> None:
        await trio.sleep_forever()

    # The watchdog (whose verdicts are tested elsewhere) would fail the waiter on its own
    # during the gap; here only the read-back is under test.
    monkeypatch.setattr(ReplyHub, "_watch", no_watchdog)
    fake = GatedOpenAI()
    from tests.fakes.server import serve_asgi

    fake.base_url = await nursery.start(serve_asgi, fake) + fake.base_path
    config = make_config(redis_url, {"up": {"kind": "openai", "base_url": fake.base_url,
                                            "max_retries": 0}},
                         [{"slug": "m", "routes": [{"provider": "up", "model": "u"}]}])
    gateway = await start_gateway(nursery, config)
    answers: list[Any] = []

    async def ask() -> None:
        answers.append(await gateway.client(timeout=40).chat.completions.create(
            model="m", messages=HI))  # type: ignore[arg-type]

    async with trio.open_nursery() as inner:
        inner.start_soon(ask)
        with trio.fail_after(5):
            while not fake.requests:
                await trio.sleep(0.01)
        channels = [c for c in (await gateway.redis.pubsub_shardchannels()) if b"reply" in c]
        with subscribe_denied(redis_server.port):
            redis_command(redis_server.port, "CLIENT", "KILL", "TYPE", "pubsub")
            with trio.fail_after(5):  # nobody listens on the ingress's reply channel now
                while await listeners(gateway.redis, channels[0].decode()):
                    await trio.sleep(0.01)
            fake.gate.set()  # the worker answers and publishes to nobody
            with trio.fail_after(5):
                while await gateway.redis.xlen("{sb}:q:up"):
                    await trio.sleep(0.02)
            await trio.sleep(0.3)
        with trio.fail_after(20):  # SSUBSCRIBE works again: the ingress re-subscribes
            while not answers:
                await trio.sleep(0.05)
    assert answers[0].choices[0].message.content == "hi there"


async def test_stream_cut_while_ingress_resubscribes_ends_with_an_error_not_a_hang(
        nursery: trio.Nursery, redis_url: str, redis_server: RedisServer,
        fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> None:
    from ingress.replies import ReplyHub

    async def no_watchdog(self: ReplyHub) -> None:
        await trio.sleep_forever()

    monkeypatch.setattr(ReplyHub, "_watch", no_watchdog)  # as above: the read-back alone
    config = make_config(redis_url, {"up": {"kind": "openai", "base_url": fake_openai.base_url,
                                            "max_retries": 0}},
                         [{"slug": "m", "routes": [{"provider": "up", "model": "u"}]}])
    gateway = await start_gateway(nursery, config)
    fake_openai.then(Behavior(chunks=[f"c{i} " for i in range(100)], chunk_delay_s=0.1))
    events: list[str] = []
    async with httpx.AsyncClient(verify=TLS, base_url=gateway.base_url, timeout=30) as http, \
            http.stream("POST", "/v1/chat/completions",
                        json={"model": "m", "stream": True, "messages": HI},
                        headers={"authorization": f"Bearer {gateway.secret}"}) as reply:
        lines = reply.aiter_lines()
        async for line in lines:
            if line:
                events.append(line)
                break
        with subscribe_denied(redis_server.port):
            redis_command(redis_server.port, "CLIENT", "KILL", "TYPE", "pubsub")
            with trio.fail_after(5):  # the next chunk reaches nobody: the job ends
                while await gateway.redis.xlen("{sb}:q:up"):
                    await trio.sleep(0.02)
        with trio.fail_after(20):
            async for line in lines:
                if line:
                    events.append(line)
    last = json.loads(events[-1].removeprefix("data: "))
    assert last["error"]["code"] == "reply_channel_lost"  # explicit, never a silent hang
    assert "data: [DONE]" not in events


# -- item 13: the cancel listener survives Redis restarts --

async def stream_then_leave(gateway: Gateway, secret: str) -> float:
    """Open a stream, read its first event and leave; returns when it left."""
    async with httpx.AsyncClient(verify=TLS, base_url=gateway.base_url, timeout=10) as http, \
            http.stream("POST", "/v1/chat/completions",
                        json={"model": "m", "stream": True, "messages": HI},
                        headers={"authorization": f"Bearer {secret}"}) as reply:
        assert reply.status_code == 200
        async for line in reply.aiter_lines():
            if line:
                break
    return time.monotonic()


async def test_disconnect_cancels_upstream_after_redis_restarts(
        nursery: trio.Nursery, tmp_path: Path, fake_openai: FakeOpenAI) -> None:
    process, port = start_private_redis(tmp_path)
    config = make_config(f"redis://127.0.0.1:{port}/0", {"up": {
        "kind": "openai", "base_url": fake_openai.base_url, "max_retries": 0, "timeout_s": 30}},
        [{"slug": "m", "routes": [{"provider": "up", "model": "u"}]}])
    try:
        gateway = await start_gateway(nursery, config)
        secret = gateway.secret
        for restart in range(3):
            fake_openai.then(Behavior(chunks=[f"c{i}" for i in range(200)], chunk_delay_s=0.1))
            seen = len(fake_openai.disconnects)
            with trio.fail_after(30):  # the ingress may still be re-subscribing: ask again
                while True:
                    try:
                        left = await stream_then_leave(gateway, secret)
                        break
                    except (AssertionError, httpx.HTTPError):
                        fake_openai.then(Behavior(chunks=[f"c{i}" for i in range(200)],
                                                  chunk_delay_s=0.1))
                        await trio.sleep(0.2)
            with trio.fail_after(5):
                while len(fake_openai.disconnects) == seen:
                    await trio.sleep(0.02)
            assert fake_openai.disconnects[seen] - left < 2.0, f"after restart {restart}"
            fake_openai.behaviors.clear()
            process.terminate()
            process.wait()
            await trio.sleep(0.5)
            process, _ = start_private_redis(tmp_path, port)  # an empty Redis, same port
            secret = (await KeyStore(gateway.redis).create("acme"))[1]
            await trio.sleep(1.0)
    finally:
        process.kill()
        process.wait()


# -- item 16: the withdrawn check before a job starts is bounded --

async def test_withdrawn_check_on_a_hung_redis_gives_up_within_its_timeout(
        tmp_path: Path, fake_openai: FakeOpenAI) -> None:
    from workers.registry import build_adapter
    from workers.runner import Runner

    process, port = start_private_redis(tmp_path)
    try:
        config = make_config(f"redis://127.0.0.1:{port}/0",
                             {"up": {"kind": "openai", "base_url": fake_openai.base_url}},
                             [{"slug": "m", "routes": [{"provider": "up", "model": "u"}]}],
                             limits={"redis_timeout_s": 0.5})
        job = Job(request_id="req_2", org="acme", project="p", key_id="k", model="m",
                  routes=[Route(provider="up", model="u")],
                  body=b'{"model":"m","messages":[]}', stream=False, reply_to="{sb}:reply:x",
                  deadline=time.time() + 60)
        async with connect(config.redis_url) as redis, httpx.AsyncClient() as http:
            await redis.ping()
            runner = Runner(config, Queue(redis), {"up": build_adapter(
                "up", config.providers["up"], http)})
            reclaimed = Delivery(b"1-1", job, 1)  # a reclaimed copy: checked before it runs
            os.kill(process.pid, signal.SIGSTOP)
            try:
                with trio.fail_after(5):  # redis_timeout_s bounds each step; never a hang
                    await runner.run(reclaimed)
            finally:
                os.kill(process.pid, signal.SIGCONT)
        assert fake_openai.requests == []  # nothing was run without knowing
    finally:
        process.kill()
        process.wait()


# -- item 18: dead consumers are removed --

async def test_dead_consumers_are_removed(nursery: trio.Nursery, redis_url: str,
                                          fake_openai: FakeOpenAI) -> None:
    gateway = await ingress(nursery, redis_url, fake_openai)
    config = make_config(redis_url, {"up": {"kind": "openai", "base_url": fake_openai.base_url}},
                         [{"slug": "m", "routes": [{"provider": "up", "model": "u"}]}])
    first = await gateway.start_worker(config=config)
    await gateway.client().chat.completions.create(model="m", messages=HI)  # type: ignore[arg-type]
    first.cancel()  # that worker stops; its name stays in the group
    assert redis_command(redis_port(gateway), "XGROUP", "CREATECONSUMER", "{sb}:q:up", "workers",
                         "worker-gone").startswith(b":1")  # another one that never ran
    before = await consumer_names(gateway)
    assert "worker-gone" in before and len(before) == 2
    await gateway.start_worker(config=config)
    with trio.fail_after(15):  # both dead names go
        while set(before) & set(await consumer_names(gateway)):
            await trio.sleep(0.2)
    answer = await gateway.client().chat.completions.create(model="m", messages=HI)  # type: ignore[arg-type]
    assert answer.choices[0].message.content == "hi there"
    [live] = await consumer_names(gateway)  # the worker that answered...
    await trio.sleep(3 * config.limits.reclaim_after_s)  # ...idle through several prune rounds
    assert await consumer_names(gateway) == [live]  # ...is alive, so it stays


def redis_port(gateway: Gateway) -> int:
    return int(gateway.config.redis_url.rsplit(":", 1)[1].split("/")[0])


async def consumer_names(gateway: Gateway) -> list[str]:
    rows = await gateway.redis.xinfo_consumers("{sb}:q:up", "workers")
    return sorted(row[b"name"].decode() for row in rows)


# -- item 19: a frozen worker --

def blocked_readers(port: int) -> int:
    listing = redis_command(port, "CLIENT", "LIST").decode()
    return sum(1 for line in listing.splitlines()
               if "cmd=xreadgroup" in line and " flags=b " in line)


async def test_worker_frozen_in_its_blocking_read_picks_up_at_once_when_resumed(
        nursery: trio.Nursery, redis_url: str, redis_server: RedisServer,
        fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    gateway = await ingress(nursery, redis_url, fake_openai)
    async with worker_processes(tmp_path, redis_url, fake_openai, 1,
                                "redis_timeout_s = 2") as [worker]:
        with trio.fail_after(10):  # freeze it while its XREADGROUP waits inside Redis
            while True:
                worker.signal(signal.SIGSTOP)
                if blocked_readers(redis_server.port):
                    break
                worker.signal(signal.SIGCONT)
                await trio.sleep(0.02)
        frozen = time.monotonic()
        answers: list[Any] = []

        async def ask() -> None:
            answers.append(await gateway.client(timeout=100).chat.completions.create(
                model="m", messages=HI))  # type: ignore[arg-type]

        async with trio.open_nursery() as inner:
            inner.start_soon(ask)
            with trio.fail_after(5):  # Redis hands the job to the frozen reader
                while await owners(gateway) != [worker.consumer]:
                    await trio.sleep(0.02)
            await trio.sleep(max(0.0, frozen + 4.5 - time.monotonic()))  # past its read timeout
            worker.signal(signal.SIGCONT)
            resumed = time.monotonic()
            with trio.fail_after(30):
                while not answers:
                    await trio.sleep(0.05)
            waited = time.monotonic() - resumed
    assert answers[0].choices[0].message.content == "hi there"
    assert waited < 3, f"the resumed worker ran its job {waited:.1f} s later"


async def test_frozen_workers_job_is_rerun_and_not_answered_twice_when_it_resumes(
        nursery: trio.Nursery, redis_url: str, fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    gateway = await ingress(nursery, redis_url, fake_openai)
    fake_openai.then(Behavior(delay_s=3))  # the frozen worker's call: answered while it sleeps
    async with worker_processes(tmp_path, redis_url, fake_openai, 2) as workers:
        answer, rerun_after, frozen = await signal_the_owner(gateway, fake_openai, workers,
                                                             signal.SIGSTOP)
        frozen.signal(signal.SIGCONT)  # it wakes up with the first call's answer in hand
        with trio.fail_after(10):
            while not any(e.get("event") == "job" for e in frozen.lines()):
                await trio.sleep(0.05)
        await trio.sleep(0.5)
        assert frozen.process.poll() is None  # alive and well
        events = {e["event"] for e in frozen.lines()}
        assert {"job_lost", "job_not_owned"} & events  # it stood down
    assert answer.choices[0].message.content == "hi there"
    assert rerun_after < 10, f"re-run {rerun_after:.1f} s after the worker froze"
    assert len(fake_openai.requests) == 2
    assert (await gateway.usage())["requests"] == 1  # the resumed worker answered nothing


async def running_entries(redis: RedisClient, queue: Queue, count: int) -> list[bytes]:
    """`count` jobs queued for provider "up" and read by worker-a: its running entries."""
    await queue.ensure_group("up")
    for i in range(count):
        job = Job(request_id=f"req_{i}", org="acme", project="p", key_id="k", model="m",
                  routes=[Route(provider="up", model="u")], body=b"{}", stream=False,
                  reply_to=names.reply("test"), deadline=time.time() + 60)
        await redis.xadd(names.queue("up"), {"j": job_encoder.encode(job)})
    mine = [delivery.entry_id for delivery in await queue.read("up", "worker-a", count, 10)]
    assert len(mine) == count
    return mine


async def test_a_heartbeat_refreshes_many_entries_in_bounded_script_calls(redis_url: str) -> None:
    """A worker holding many streams refreshes them a few hundred per script call, so no
    call holds Redis for long, and every entry is refreshed or reported lost."""
    count = 3 * HEARTBEAT_ENTRIES + 10
    async with connect(redis_url) as redis:
        queue = Queue(redis)
        mine = await running_entries(redis, queue, count)
        taken = [mine[5], mine[HEARTBEAT_ENTRIES + 7], mine[-1]]  # one in each of three calls
        await redis.xclaim(names.queue("up"), "workers", "worker-b", 0, taken, justid=True)
        await queue.heartbeat("up", "worker-a", [])  # (loads the script: no NOSCRIPT below)
        await redis.config_resetstat()
        lost = await queue.heartbeat("up", "worker-a", mine, alive_ms=5000)
        stats = await redis.info("commandstats")
        assert sorted(lost) == sorted(taken)
        assert stats["cmdstat_evalsha"]["calls"] == math.ceil(count / HEARTBEAT_ENTRIES)
        assert stats["cmdstat_xclaim"]["calls"] == count - len(taken)  # each one of ours, once
        assert await redis.exists([names.alive("worker-a")]) == 1
        owners = await redis.xpending(names.queue("up"), "workers", "-", "+", count)
        assert all(row.idle < 5000 for row in owners)


async def test_every_call_of_a_long_heartbeat_renews_the_worker_s_liveness(
        redis_url: str) -> None:
    """bench/held.py at 10,000 streams (~5,000 per worker): 64 running streams of a live
    worker were taken at once as a dead worker's and ended `worker_lost`. Only the first of
    a heartbeat's script calls renewed the liveness, so on a busy worker the gap between
    renewals was a pause plus all its calls; now it is a pause plus one call."""
    count = 3 * HEARTBEAT_ENTRIES
    async with connect(redis_url) as redis:
        queue = Queue(redis)
        mine = await running_entries(redis, queue, count)
        await queue.heartbeat("up", "worker-a", [])  # (loads the script)
        await redis.config_resetstat()
        assert await queue.heartbeat("up", "worker-a", mine, alive_ms=5000) == []
        stats = await redis.info("commandstats")
        assert stats["cmdstat_evalsha"]["calls"] == 3
        assert stats["cmdstat_set"]["calls"] == 3  # the liveness, in each of the three calls
