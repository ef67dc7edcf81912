"""Faults: retries, failover, dead workers, heartbeats, cancellation, deadlines, Redis trouble.

Each test pins one invariant of DESIGN.md and fails when it breaks.
"""

from __future__ import annotations

import json
import time
from functools import partial
from typing import Any

import httpx
import openai
import pytest
import trio

from ingress.dev import start_private_redis
from ingress.keys import KeyStore
from tests.conftest import TLS, FakeUpstreams, Gateway, RedisServer, make_config, start_gateway
from tests.fakes.openai_upstream import Behavior, FakeOpenAI

HI = [{"role": "user", "content": "hi there"}]


def upstream(fake: FakeOpenAI, **options: Any) -> dict[str, Any]:
    return {"kind": "openai", "base_url": fake.base_url, "timeout_s": 10, "max_retries": 0,
            **options}


async def sse_payloads(gateway: Gateway, body: dict[str, Any]) -> list[Any]:
    """POST a streamed request and return each event's data (JSON, or the string [DONE])."""
    async with httpx.AsyncClient(verify=TLS, base_url=gateway.base_url, timeout=30) as http:
        reply = await http.post("/v1/chat/completions", json={**body, "stream": True},
                                headers={"authorization": f"Bearer {gateway.secret}"})
    assert reply.status_code == 200, reply.text
    events = [e.removeprefix("data: ") for e in reply.text.split("\n\n") if e]
    return [e if e == "[DONE]" else json.loads(e) for e in events]


async def served_after_outage(client: openai.AsyncOpenAI, within_s: float) -> str | None:
    """Ask until the gateway answers again; meanwhile every refusal must be a 503."""
    with trio.fail_after(within_s):
        while True:
            try:
                answer = await client.chat.completions.create(model="echo", messages=HI)  # type: ignore[arg-type]
                return answer.choices[0].message.content
            except openai.APIStatusError as exc:
                assert exc.status_code == 503
                await trio.sleep(0.2)


async def test_retry_before_first_byte_is_invisible(nursery: trio.Nursery, redis_url: str,
                                                    fake_openai: FakeOpenAI) -> None:
    config = make_config(redis_url, {"up": upstream(fake_openai, max_retries=1)},
                         [{"slug": "m", "routes": [{"provider": "up", "model": "u"}]}])
    gateway = await start_gateway(nursery, config)
    fake_openai.then(Behavior(status=503), Behavior(chunks=["x", "y"]))
    stream = await gateway.client().chat.completions.create(model="m", stream=True, messages=HI)  # type: ignore[arg-type]
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "xy"  # one complete answer, no trace of the failed try
    assert len(fake_openai.requests) == 2


async def test_dead_worker_job_is_reclaimed_and_answered_once(
        nursery: trio.Nursery, redis_url: str, fake_openai: FakeOpenAI) -> None:
    config = make_config(redis_url, {"up": upstream(fake_openai)},
                         [{"slug": "m", "routes": [{"provider": "up", "model": "u"}]}])
    gateway = await start_gateway(nursery, config, workers=False)
    doomed = await gateway.start_worker()
    fake_openai.then(Behavior(delay_s=30))  # the first worker hangs upstream, then dies
    result: list[Any] = []

    async def ask() -> None:
        result.append(await gateway.client().chat.completions.create(model="m", messages=HI))  # type: ignore[arg-type]

    async with trio.open_nursery() as inner:
        inner.start_soon(ask)
        while not fake_openai.requests:
            await trio.sleep(0.01)
        doomed.cancel()  # no ack: the job stays pending in Redis
        started = time.monotonic()
        await gateway.start_worker()
    assert result[0].choices[0].message.content == "hi there"
    # reclaimed promptly (the liveness key expires after 1 s here; test_liveness shows
    # the same at the default settings, with real worker processes)
    assert time.monotonic() - started < 5
    assert len(fake_openai.requests) == 2
    assert await gateway.redis.xlen("{sb}:q:up") == 0  # acknowledged and removed


async def test_worker_dying_mid_stream_ends_stream_with_error(
        nursery: trio.Nursery, redis_url: str, fake_openai: FakeOpenAI) -> None:
    config = make_config(redis_url, {"up": upstream(fake_openai)},
                         [{"slug": "m", "routes": [{"provider": "up", "model": "u"}]}])
    gateway = await start_gateway(nursery, config, workers=False)
    doomed = await gateway.start_worker()
    fake_openai.then(Behavior(chunks=["a", "b", "c", "d"], chunk_delay_s=0.5),
                     Behavior(chunks=["A", "B"]))
    events: list[str] = []

    async def read() -> None:
        async with httpx.AsyncClient(verify=TLS, base_url=gateway.base_url, timeout=30) as http, http.stream(
                "POST", "/v1/chat/completions",
                json={"model": "m", "stream": True, "messages": HI},
                headers={"authorization": f"Bearer {gateway.secret}"}) as reply:
            async for line in reply.aiter_lines():
                if line:
                    events.append(line.removeprefix("data: "))

    async with trio.open_nursery() as inner:
        inner.start_soon(read)
        while not events:
            await trio.sleep(0.01)
        doomed.cancel()
        await gateway.start_worker()
    contents = [json.loads(e)["choices"][0]["delta"].get("content") for e in events[:-1]]
    assert contents and "A" not in contents  # nothing of the second run was mixed in
    # The reclaiming worker knows output began: it ends the stream without calling upstream.
    assert json.loads(events[-1])["error"]["code"] == "worker_lost"
    assert "[DONE]" not in events
    assert len(fake_openai.requests) == 1


async def test_heartbeat_keeps_long_stream_from_being_stolen(
        nursery: trio.Nursery, redis_url: str, fake_openai: FakeOpenAI) -> None:
    config = make_config(redis_url, {"up": upstream(fake_openai)},
                         [{"slug": "m", "routes": [{"provider": "up", "model": "u"}]}])
    gateway = await start_gateway(nursery, config)
    await gateway.start_worker()  # a second, idle worker that keeps trying to reclaim
    pieces = [f"w{i} " for i in range(12)]
    fake_openai.then(Behavior(chunks=pieces, chunk_delay_s=0.25))  # 3 s > reclaim_after_s
    payloads = await sse_payloads(gateway, {"model": "m", "messages": HI})
    assert payloads[-1] == "[DONE]"
    contents = [p["choices"][0]["delta"].get("content") for p in payloads[:-1] if p["choices"]]
    assert [c for c in contents if c] == pieces  # every chunk once, in order
    assert len(fake_openai.requests) == 1


async def test_client_disconnect_cancels_upstream_stream_within_a_second(
        openai_gateway: Gateway, fake_openai: FakeOpenAI) -> None:
    fake_openai.then(Behavior(chunks=[f"c{i}" for i in range(100)], chunk_delay_s=0.1))
    async with httpx.AsyncClient(verify=TLS, base_url=openai_gateway.base_url) as http, http.stream(
            "POST", "/v1/chat/completions",
            json={"model": "gpt-test", "stream": True, "messages": HI},
            headers={"authorization": f"Bearer {openai_gateway.secret}"}) as reply:
        async for line in reply.aiter_lines():
            if line:
                break
    left = time.monotonic()
    with trio.fail_after(5):
        while not fake_openai.disconnects:
            await trio.sleep(0.02)
    assert fake_openai.disconnects[0] - left < 1.0


async def test_client_disconnect_cancels_plain_request_upstream(
        openai_gateway: Gateway, fake_openai: FakeOpenAI) -> None:
    fake_openai.then(Behavior(delay_s=10))
    with trio.move_on_after(0.5):
        await openai_gateway.client().chat.completions.create(model="gpt-test", messages=HI)  # type: ignore[arg-type]
    left = time.monotonic()
    with trio.fail_after(5):  # the upstream would answer only after 10 s
        while not fake_openai.disconnects:
            await trio.sleep(0.02)
    assert fake_openai.disconnects[0] - left < 1.0  # the worker closed its upstream call
    with trio.fail_after(1):
        while await openai_gateway.redis.xlen("{sb}:q:up") != 0:
            await trio.sleep(0.02)  # ... and the job was acknowledged


async def test_queued_job_of_a_departed_client_never_runs(
        nursery: trio.Nursery, redis_url: str, fake_openai: FakeOpenAI) -> None:
    config = make_config(redis_url, {"up": upstream(fake_openai)},
                         [{"slug": "m", "routes": [{"provider": "up", "model": "u"}]}])
    gateway = await start_gateway(nursery, config, workers=False)
    with trio.move_on_after(0.3):
        await gateway.client().chat.completions.create(model="m", messages=HI)  # type: ignore[arg-type]
    with trio.fail_after(1):  # withdrawn from the queue within a second
        while await gateway.redis.xlen("{sb}:q:up") != 0:
            await trio.sleep(0.02)
    await gateway.start_worker()
    await trio.sleep(0.5)
    assert fake_openai.requests == []


async def test_job_past_its_deadline_is_not_started(
        nursery: trio.Nursery, redis_url: str, fake_openai: FakeOpenAI) -> None:
    config = make_config(redis_url, {"up": upstream(fake_openai)},
                         [{"slug": "m", "routes": [{"provider": "up", "model": "u"}]}],
                         limits={"request_timeout_s": 0.5})
    gateway = await start_gateway(nursery, config, workers=False)
    # Keep the job queued past its deadline while the client still waits (grace period).
    async with trio.open_nursery() as inner:
        failures: list[BaseException] = []

        async def ask() -> None:
            try:
                await gateway.client().chat.completions.create(model="m", messages=HI)  # type: ignore[arg-type]
            except openai.APIStatusError as exc:
                failures.append(exc)

        inner.start_soon(ask)
        await trio.sleep(1.0)
        await gateway.start_worker()
    assert fake_openai.requests == []
    assert failures and failures[0].status_code == 504  # type: ignore[attr-defined]


async def test_redis_restart_service_resumes_by_itself(nursery: trio.Nursery, tmp_path: Any,
                                                       fake_openai: FakeOpenAI) -> None:
    process, port = start_private_redis(tmp_path)
    config = make_config(f"redis://127.0.0.1:{port}/0",
                         {"local": {"kind": "mock"}, "up": upstream(fake_openai)},
                         [{"slug": "echo", "routes": [{"provider": "local", "model": "m"}]},
                          {"slug": "m", "routes": [{"provider": "up", "model": "u"}]}],
                         limits={"redis_timeout_s": 1.0})
    try:
        gateway = await start_gateway(nursery, config)
        client = gateway.client(timeout=10)
        await client.chat.completions.create(model="echo", messages=HI)  # type: ignore[arg-type]
        process.terminate()
        process.wait()
        with pytest.raises(openai.APIStatusError) as caught:
            await client.chat.completions.create(model="echo", messages=HI)  # type: ignore[arg-type]
        assert caught.value.status_code == 503
        process, _ = start_private_redis(tmp_path, port)  # an empty Redis on the same port
        _, secret = await KeyStore(gateway.redis).create("acme")
        client = gateway.client(api_key=secret, timeout=10)
        assert await served_after_outage(client, within_s=20) == "hi there"
        # Cancellation works again too: a client that leaves stops the upstream call.
        fake_openai.then(Behavior(chunks=[f"c{i}" for i in range(100)], chunk_delay_s=0.1))
        async with httpx.AsyncClient(verify=TLS, base_url=gateway.base_url) as http, http.stream(
                "POST", "/v1/chat/completions",
                json={"model": "m", "stream": True, "messages": HI},
                headers={"authorization": f"Bearer {secret}"}) as reply:
            async for line in reply.aiter_lines():
                if line:
                    break
        left = time.monotonic()
        with trio.fail_after(5):
            while not fake_openai.disconnects:
                await trio.sleep(0.02)
        assert fake_openai.disconnects[0] - left < 2.0
    finally:
        process.kill()
        process.wait()


async def test_hundreds_of_concurrent_streams_complete_in_order(
        nursery: trio.Nursery, redis_url: str, redis_server: RedisServer) -> None:
    # About order and completeness, not overload: the 300 clients, the ingress and the
    # worker share this one event loop, whose lag on a slow machine would otherwise be
    # answered (rightly) with 429 ingress_busy; test_reply_path covers that answer.
    config = make_config(redis_url, {"local": {"kind": "mock", "chunks": 8, "chunk_delay_ms": 5}},
                         [{"slug": "echo", "routes": [{"provider": "local", "model": "m"}]}],
                         limits={"redis_timeout_s": 10.0})
    gateway = await start_gateway(nursery, config)
    count = 300
    results: dict[int, list[str]] = {}

    async def one(http: httpx.AsyncClient, i: int) -> None:
        words = " ".join(f"r{i}w{j}" for j in range(8))
        reply = await http.post("/v1/chat/completions", json={
            "model": "echo", "stream": True, "messages": [{"role": "user", "content": words}]})
        assert reply.status_code == 200, reply.text
        events = [e.removeprefix("data: ") for e in reply.text.split("\n\n") if e]
        assert events[-1] == "[DONE]"
        pieces = [json.loads(e)["choices"][0]["delta"].get("content") for e in events[:-1]]
        results[i] = [p for p in pieces if p]
        assert "".join(results[i]) == words

    limits = httpx.Limits(max_connections=count + 10)
    async with httpx.AsyncClient(verify=TLS, base_url=gateway.base_url, limits=limits, timeout=60,
                                 headers={"authorization": f"Bearer {gateway.secret}"}) as http:
        async with trio.open_nursery() as inner:
            for i in range(count):
                inner.start_soon(one, http, i)
    assert len(results) == count
    assert all(len(pieces) == 8 for pieces in results.values())
    assert (await gateway.usage())["requests"] == count


async def test_draining_worker_finishes_running_streams_and_takes_no_more(
        nursery: trio.Nursery, redis_url: str, fake_openai: FakeOpenAI) -> None:
    from workers.service import run_workers

    config = make_config(redis_url, {"up": upstream(fake_openai)},
                         [{"slug": "m", "routes": [{"provider": "up", "model": "u"}]}])
    gateway = await start_gateway(nursery, config, workers=False)
    stop = trio.Event()
    finished = trio.Event()

    async def worker() -> None:
        await run_workers(config, stop=stop)
        finished.set()

    nursery.start_soon(worker)
    fake_openai.then(Behavior(chunks=[f"p{i}" for i in range(6)], chunk_delay_s=0.15))
    payloads: list[Any] = []

    async def read() -> None:
        payloads.extend(await sse_payloads(gateway, {"model": "m", "messages": HI}))

    async with trio.open_nursery() as inner:
        inner.start_soon(read)
        while not fake_openai.requests:
            await trio.sleep(0.01)
        stop.set()  # SIGTERM: drain
    assert payloads[-1] == "[DONE]"  # the running stream finished whole
    with trio.fail_after(5):
        await finished.wait()
    with trio.move_on_after(0.5):
        await gateway.client().chat.completions.create(model="m", messages=HI)  # type: ignore[arg-type]
    assert len(fake_openai.requests) == 1  # the drained worker took nothing new


async def test_workers_take_only_what_they_can_run(nursery: trio.Nursery, redis_url: str,
                                                   fake_openai: FakeOpenAI) -> None:
    config = make_config(redis_url, {"up": upstream(fake_openai, max_concurrency=2)},
                         [{"slug": "m", "routes": [{"provider": "up", "model": "u"}]}])
    gateway = await start_gateway(nursery, config)
    fake_openai.then(*[Behavior(delay_s=0.6) for _ in range(5)])
    async with trio.open_nursery() as inner:
        for _ in range(5):
            inner.start_soon(lambda: gateway.client().chat.completions.create(
                model="m", messages=HI))
        while len(fake_openai.requests) < 2:
            await trio.sleep(0.01)
        await trio.sleep(0.2)
        pending = await gateway.redis.xpending("{sb}:q:up", "workers")
        assert await gateway.redis.xlen("{sb}:q:up") == 5  # all admitted...
        assert pending.pending == 2  # ...but only two delivered: the rest wait in Redis
        assert len(fake_openai.requests) == 2
    assert len(fake_openai.requests) == 5


async def test_a_bug_in_an_adapter_fails_one_request_not_the_worker(
        openai_gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    from workers.providers.mock import MockAdapter

    original = MockAdapter.complete
    calls = 0

    async def broken_once(self: MockAdapter, call: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug")
        return await original(self, call)

    monkeypatch.setattr(MockAdapter, "complete", broken_once)
    client = openai_gateway.client()
    with pytest.raises(openai.InternalServerError) as caught:
        await client.chat.completions.create(model="echo", messages=HI)  # type: ignore[arg-type]
    assert caught.value.status_code == 500
    assert caught.value.body["code"] == "internal_error"  # type: ignore[index]
    answer = await client.chat.completions.create(model="echo", messages=HI)  # type: ignore[arg-type]
    assert answer.choices[0].message.content == "hi there"  # the same worker still serves


async def test_a_bug_in_the_ingress_answers_500_in_the_error_shape(
        openai_gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    from ingress.catalog import Catalog

    def broken(self: Catalog) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(Catalog, "model_list", broken)
    async with httpx.AsyncClient(verify=TLS, base_url=openai_gateway.base_url) as http:
        reply = await http.get("/v1/models", headers={"authorization": f"Bearer {openai_gateway.secret}"})
        assert reply.status_code == 500 and reply.json()["error"]["code"] == "internal_error"
        assert reply.headers["x-request-id"]
        assert (await http.get("/healthz")).status_code == 200


async def test_own_entry_read_but_never_run_is_reclaimed(nursery: trio.Nursery, redis_url: str,
                                                         fake_openai: FakeOpenAI) -> None:
    """A reply lost in flight leaves a job pending under the live worker's own name."""
    from workers.service import run_workers

    config = make_config(redis_url, {"up": upstream(fake_openai)},
                         [{"slug": "m", "routes": [{"provider": "up", "model": "u"}]}],
                         limits={"reclaim_after_s": 0.3, "heartbeat_s": 0.1})
    gateway = await start_gateway(nursery, config, workers=False)
    result: list[Any] = []

    async def ask() -> None:
        result.append(await gateway.client().chat.completions.create(model="m", messages=HI))  # type: ignore[arg-type]

    async with trio.open_nursery() as inner:
        inner.start_soon(ask)
        while await gateway.redis.xlen("{sb}:q:up") == 0:
            await trio.sleep(0.01)
        await gateway.redis.xgroup_create("{sb}:q:up", "workers", "0")
        taken = await gateway.redis.xreadgroup("workers", "worker-fixed", streams={"{sb}:q:up": ">"},
                                               count=1)
        assert taken  # delivered to "worker-fixed", whose reply never arrived
        await nursery.start(partial(run_workers, config, consumer_id="worker-fixed"))
    assert result[0].choices[0].message.content == "hi there"
    assert len(fake_openai.requests) == 1


async def test_failover_copy_of_a_departed_client_is_not_run(
        nursery: trio.Nursery, redis_url: str, fake_openai: FakeOpenAI,
        fake_upstream: FakeUpstreams) -> None:
    backup = await fake_upstream("openai")
    config = make_config(
        redis_url, {"primary": upstream(fake_openai), "backup": upstream(backup)},
        [{"slug": "m", "routes": [{"provider": "primary", "model": "p"},
                                  {"provider": "backup", "model": "b"}]}])
    gateway = await start_gateway(nursery, config, workers=False)
    await gateway.start_worker(("primary",))  # nobody serves the backup route yet
    fake_openai.then(Behavior(status=500))
    async with trio.open_nursery() as inner:
        inner.start_soon(lambda: gateway.client().chat.completions.create(model="m", messages=HI))
        while await gateway.redis.xlen("{sb}:q:backup") == 0:  # failed over, waiting
            await trio.sleep(0.01)
        inner.cancel_scope.cancel()  # the client leaves
    with trio.fail_after(2):
        while not await gateway.redis.exists(["{sb}:gone:" + (await last_request_id(gateway))]):
            await trio.sleep(0.02)
    await gateway.start_worker(("backup",))
    with trio.fail_after(5):
        while await gateway.redis.xlen("{sb}:q:backup") != 0:  # taken and acknowledged...
            await trio.sleep(0.02)
    assert backup.requests == []  # ...without calling the backup upstream


async def last_request_id(gateway: Gateway) -> str:
    entries = await gateway.redis.xrange("{sb}:q:backup")
    from schemas.envelopes import job_decoder

    return job_decoder.decode(entries[-1].field_values[b"j"]).request_id
