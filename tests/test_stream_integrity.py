"""Stream integrity: every outcome metered, error frames in order, big answers, empty
streams, drained and killed workers (real processes), a publisher that cannot publish.

Real Redis, real sockets, fake upstreams speaking the OpenAI wire format, worker
subprocesses where a signal is the fault.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import trio

from schemas import names
from schemas.chat import Usage
from schemas.config import Limits, Route
from schemas.envelopes import Chunk, Done, Error, Head, Job, frame_decoder, frame_encoder, job_decoder
from schemas.errors import GatewayError
from tests.conftest import (
    SLUG,
    TLS,
    FakeUpstreams,
    Gateway,
    KindGateways,
    RedisServer,
    make_config,
    start_gateway,
)
from tests.fakes.openai_upstream import Behavior, FakeOpenAI
from tests.fakes.server import Received, send_json, serve_asgi, start_sse
from tests.kinds import CASES, KindCase
from workers.connection import connect, publish, subscription
from workers.providers._meter import UsageMeter
from workers.publisher import StreamPublisher
from workers.queue import Queue

SWITCHBOARD = str(Path(sys.executable).with_name("switchboard"))
HI = [{"role": "user", "content": "abcdefgh"}]
# What the meter estimates for a body of HI and slug "m" when the provider never said:
# the prompt's strings ("m", "user", "abcdefgh": 13 characters) at 4 a token.
PROMPT_ESTIMATE = 4


def upstream(fake: FakeOpenAI, **options: Any) -> dict[str, Any]:
    return {"kind": "openai", "base_url": fake.base_url, "timeout_s": 60, "max_retries": 0,
            **options}


async def one_route(nursery: trio.Nursery, redis_url: str, fake: FakeOpenAI, *,
                    workers: bool = True, **limits: Any) -> Gateway:
    config = make_config(redis_url, {"up": upstream(fake)},
                         [{"slug": "m", "routes": [{"provider": "up", "model": "u"}]}],
                         limits=limits)
    return await start_gateway(nursery, config, workers=workers)


def http(gateway: Gateway, timeout: float = 30) -> httpx.AsyncClient:
    return httpx.AsyncClient(verify=TLS, base_url=gateway.base_url, timeout=timeout,
                             headers={"authorization": f"Bearer {gateway.secret}"})


def data_of(text: str) -> list[str]:
    return [e.removeprefix("data: ") for e in text.split("\n\n") if e]


async def wait_usage(gateway: Gateway, within_s: float = 10) -> dict[str, int]:
    with trio.fail_after(within_s):
        while not (usage := await gateway.usage()):
            await trio.sleep(0.05)
    return usage


# ── item 4: streams that end early are metered ──────────────────────────────────
async def test_a_stream_the_upstream_cuts_is_metered(nursery: trio.Nursery, redis_url: str,
                                                     fake_openai: FakeOpenAI) -> None:
    gateway = await one_route(nursery, redis_url, fake_openai)
    fake_openai.then(Behavior(chunks=["abcd", "efgh", "ijkl"], break_after=2))
    async with http(gateway) as client:
        reply = await client.post("/v1/chat/completions",
                                  json={"model": "m", "stream": True, "messages": HI})
    events = data_of(reply.text)
    assert json.loads(events[-1])["error"]["code"] == "upstream_error"
    # No usage from the provider: the prompt estimated, the two relayed chunks (8 chars) too.
    assert await gateway.usage() == {"tokens": PROMPT_ESTIMATE + 2, "requests": 1,
                                     "prompt_tokens": PROMPT_ESTIMATE, "completion_tokens": 2}


async def test_a_stream_whose_client_leaves_is_metered(nursery: trio.Nursery, redis_url: str,
                                                       fake_openai: FakeOpenAI) -> None:
    gateway = await one_route(nursery, redis_url, fake_openai)
    fake_openai.then(Behavior(chunks=["abcd"] * 40, chunk_delay_s=0.1))
    async with http(gateway) as client, client.stream(
            "POST", "/v1/chat/completions",
            json={"model": "m", "stream": True, "messages": HI}) as reply:
        seen = 0
        async for line in reply.aiter_lines():
            seen += bool(line)
            if seen == 3:
                break  # the client leaves
    usage = await wait_usage(gateway)
    assert (usage["requests"], usage["prompt_tokens"]) == (1, PROMPT_ESTIMATE)
    assert 3 <= usage["completion_tokens"] < 40  # one token per 4-character chunk relayed
    assert usage["tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


@pytest.mark.parametrize("case", [pytest.param(case, id=case.kind) for case in CASES.values()
                                  if case.cut_stream is not None])
async def test_every_kinds_cut_stream_is_metered(case: KindCase,
                                                 kind_gateway: KindGateways) -> None:
    gateway = await kind_gateway(case.kind, max_retries=0)
    assert case.cut_stream is not None
    gateway.fake.then(case.cut_stream(["one", " two", " three", " four"], 2))
    stream = await gateway.client().chat.completions.create(
        model=SLUG, messages=[{"role": "user", "content": "one two three four"}], stream=True)
    with pytest.raises(openai.APIError):
        async for _ in stream:
            pass
    usage = await gateway.usage()
    assert usage["requests"] == 1
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0  # "one", " two" went out
    assert usage["tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_the_meter_adds_an_estimate_of_the_text_after_the_providers_last_figures() -> None:
    meter = UsageMeter(b'{"model": "m", "messages": [{"role": "user", "content": "abcdefgh"}]}')
    assert meter.usage() == Usage(4, 0, 4)  # the prompt's 13 characters of strings
    meter.add_text(5)
    assert meter.usage() == Usage(4, 2, 6)
    meter.report(Usage(10, 1, 11))  # the provider's own figures replace the estimate
    assert meter.usage() == Usage(10, 1, 11)
    meter.add_text(4)
    assert meter.usage() == Usage(10, 2, 12)


# ── item 6: a late error frame of an older attempt does not end a healthy stream ──
async def test_a_late_error_of_an_older_attempt_is_ignored(
        nursery: trio.Nursery, redis_url: str, fake_upstream: FakeUpstreams) -> None:
    first: FakeOpenAI = await fake_upstream("openai")
    second: FakeOpenAI = await fake_upstream("openai")
    config = make_config(redis_url, {"a": upstream(first), "b": upstream(second)},
                         [{"slug": "m", "routes": [{"provider": "a", "model": "u"},
                                                   {"provider": "b", "model": "u"}]}])
    gateway = await start_gateway(nursery, config)
    first.then(Behavior(status=503))  # attempt 0 fails before output: failover, attempt 1
    second.then(Behavior(chunks=[f"p{i}" for i in range(6)], chunk_delay_s=0.15))
    events: list[str] = []
    async with http(gateway) as client, client.stream(
            "POST", "/v1/chat/completions",
            json={"model": "m", "stream": True, "messages": HI}) as reply:
        request_id = reply.headers["x-request-id"]
        async for line in reply.aiter_lines():
            if not line:
                continue
            events.append(line.removeprefix("data: "))
            if len(events) == 1:  # the worker presumed dead for attempt 0 speaks up late
                [channel] = await gateway.redis.pubsub_shardchannels(names.reply("*"))
                late = Error(request_id=request_id, attempt=0, seq=0, status=502,
                             body=b'{"error": {"message": "late"}}')
                assert await publish(gateway.redis, channel.decode(), frame_encoder.encode(late)) == 1
    assert events[-1] == "[DONE]"
    assert "".join(json.loads(e)["choices"][0]["delta"].get("content") or ""
                   for e in events[:-1]) == "p0p1p2p3p4p5"


# ── item 9: an answer bigger than Redis lets one pub/sub message be ─────────────
class BigEmbeddings(FakeOpenAI):
    """Answers every embeddings request with the same ~100 MB body."""

    def __init__(self, dimensions: int) -> None:
        super().__init__()
        vector = b",".join([b"0.5"] * dimensions)
        self.body = (b'{"object":"list","data":[{"object":"embedding","index":0,"embedding":['
                     + vector + b']}],"model":"upstream","usage":{"prompt_tokens":3,'
                     b'"total_tokens":3}}')

    async def answer(self, received: Received, receive: Any, send: Any) -> None:
        await send_json(send, 200, self.body)


async def test_a_100_mb_answer_arrives_while_streams_on_the_same_ingress_complete(
        nursery: trio.Nursery, redis_url: str) -> None:
    big = BigEmbeddings(25_000_000)  # 4 bytes a number: ~100 MB
    assert len(big.body) > 100_000_000
    big.base_url = await nursery.start(serve_asgi, big) + big.base_path
    config = make_config(
        redis_url, {"big": upstream(big), "local": {"kind": "mock", "chunks": 20,
                                                     "chunk_delay_ms": 100}},
        [{"slug": "embed", "routes": [{"provider": "big", "model": "e"}]},
         {"slug": "echo", "routes": [{"provider": "local", "model": "m"}]}],
        limits={"request_timeout_s": 120})
    gateway = await start_gateway(nursery, config)
    streams: dict[int, list[str]] = {}
    answer: list[httpx.Response] = []

    async def stream(client: httpx.AsyncClient, i: int) -> None:
        words = " ".join(f"s{i}w{j}" for j in range(20))
        reply = await client.post("/v1/chat/completions", json={
            "model": "echo", "stream": True, "messages": [{"role": "user", "content": words}]})
        streams[i] = data_of(reply.text)
        assert streams[i][-1] == "[DONE]", streams[i][-1]
        text = "".join(json.loads(e)["choices"][0]["delta"].get("content") or ""
                       for e in streams[i][:-1])
        assert text == words

    async def embed(client: httpx.AsyncClient) -> None:
        await trio.sleep(0.5)  # the streams are under way
        answer.append(await client.post("/v1/embeddings", json={"model": "embed", "input": "x"}))

    async with http(gateway, timeout=120) as client, trio.open_nursery() as inner:
        for i in range(10):
            inner.start_soon(stream, client, i)
        inner.start_soon(embed, client)
    assert len(streams) == 10
    [reply] = answer
    assert reply.status_code == 200, reply.text[:300]
    body = json.loads(reply.content)
    assert body["model"] == "embed" and len(body["data"][0]["embedding"]) == 25_000_000
    assert not await gateway.redis.keys(names.body("*"))  # read once, then gone


# ── item 10: a stream with no content is still a stream ─────────────────────────
class EmptyStream(FakeOpenAI):
    """Streams no content: only `[DONE]`, or first a usage chunk nobody asked for."""

    def __init__(self, usage: bool) -> None:
        super().__init__()
        self.usage = usage

    async def answer(self, received: Received, receive: Any, send: Any) -> None:
        await start_sse(send)
        if self.usage:
            chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "u",
                     "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 0,
                                              "total_tokens": 3}}
            await send({"type": "http.response.body", "more_body": True,
                        "body": f"data: {json.dumps(chunk)}\n\n".encode()})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})


@pytest.mark.parametrize("usage", [False, True], ids=["done-only", "usage-only"])
async def test_a_stream_without_content_is_a_well_formed_stream(
        nursery: trio.Nursery, redis_url: str, usage: bool) -> None:
    fake = EmptyStream(usage)
    fake.base_url = await nursery.start(serve_asgi, fake) + fake.base_path
    gateway = await one_route(nursery, redis_url, fake)
    async with http(gateway) as client:
        reply = await client.post("/v1/chat/completions",
                                  json={"model": "m", "stream": True, "messages": HI})
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/event-stream")
    assert reply.text == "data: [DONE]\n\n"
    stream = await gateway.client().chat.completions.create(model="m", messages=HI,  # type: ignore[arg-type]
                                                            stream=True)
    assert [chunk async for chunk in stream] == []  # the SDK reads an empty, complete answer
    assert (await gateway.usage())["requests"] == 2


NATIVE_CALLS = {
    "openai": ("/v1/chat/completions", {"model": "m", "stream": True, "messages": HI},
               "data: [DONE]\n\n"),
    "anthropic": ("/anthropic/v1/messages",
                  {"model": "claude-x", "max_tokens": 8, "stream": True, "messages": HI}, ""),
    "gemini": ("/gemini/v1beta/models/gem-x:streamGenerateContent?alt=sse",
               {"contents": [{"role": "user", "parts": [{"text": "abcdefgh"}]}]}, ""),
}


@pytest.mark.parametrize("api", list(NATIVE_CALLS))
async def test_an_empty_answer_to_a_stream_is_a_stream_in_every_dialect(
        nursery: trio.Nursery, redis_url: str, api: str) -> None:
    """A worker of an earlier version ends a content-less stream with a bare Done frame."""
    providers = {"up": {"kind": "openai", "base_url": "http://127.0.0.1:9"},
                 "ant": {"kind": "anthropic", "base_url": "http://127.0.0.1:9"},
                 "gem": {"kind": "gemini", "base_url": "http://127.0.0.1:9"}}
    config = make_config(redis_url, providers, [
        {"slug": "m", "routes": [{"provider": "up", "model": "u"}]},
        {"slug": "claude-x", "routes": [{"provider": "ant", "model": "u"}]},
        {"slug": "gem-x", "routes": [{"provider": "gem", "model": "u"}]}])
    gateway = await start_gateway(nursery, config, workers=False)

    async def old_worker() -> None:
        while True:
            for provider in providers:
                for entry in await gateway.redis.xrange(names.queue(provider)):
                    job = job_decoder.decode(entry.field_values[b"j"])
                    done = Done(request_id=job.request_id, attempt=0, seq=0, provider=provider)
                    await publish(gateway.redis, job.reply_to, frame_encoder.encode(done))
                    await gateway.redis.xdel(names.queue(provider), [entry.identifier])
            await trio.sleep(0.02)

    nursery.start_soon(old_worker)
    path, body, expected = NATIVE_CALLS[api]
    async with http(gateway) as client:
        reply = await client.post(path, json=body, headers={"x-api-key": gateway.secret})
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/event-stream")
    assert reply.text == expected  # OpenAI ends with [DONE]; the native dialects just end


# ── item 11: drained and killed workers, as real processes ──────────────────────
def worker_config(path: Path, redis_url: str, fake: FakeOpenAI) -> Path:
    path.write_text(f"""
redis_url = "{redis_url}"
[limits]
heartbeat_s = 0.2
reclaim_after_s = 1.0
redis_timeout_s = 2.0
shutdown_grace_s = 1.0
[providers.up]
kind = "openai"
base_url = "{fake.base_url}"
timeout_s = 60
max_retries = 0
[[models]]
slug = "m"
routes = [{{ provider = "up", model = "u" }}]
""")
    return path


def said_ready(log: Path) -> bool:
    return '"worker_ready"' in log.read_text()


async def start_worker_process(config: Path, log: Path) -> subprocess.Popen[bytes]:
    """A `switchboard worker` process (its own `log`), once its consumers are ready."""
    with log.open("wb") as sink:
        # Popen only starts the process (no waiting), so the event loop keeps running.
        process = subprocess.Popen([SWITCHBOARD, "worker", "--config", str(config), "--processes", "1"],  # noqa: ASYNC220
                                   env={**os.environ, "REDIS_URL": ""}, stdout=sink, stderr=sink)
    with trio.fail_after(30):
        while not said_ready(log):
            assert process.poll() is None, "the worker process exited"
            await trio.sleep(0.05)
    return process


async def read_stream(gateway: Gateway, events: list[str], began: trio.Event) -> None:
    async with http(gateway, timeout=60) as client, client.stream(
            "POST", "/v1/chat/completions",
            json={"model": "m", "stream": True, "messages": HI}) as reply:
        async for line in reply.aiter_lines():
            if line:
                events.append(line.removeprefix("data: "))
                began.set()


async def test_a_drained_worker_ends_its_running_stream_at_the_deadline(
        nursery: trio.Nursery, redis_url: str, fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    gateway = await one_route(nursery, redis_url, fake_openai, workers=False)
    config = worker_config(tmp_path / "worker.toml", redis_url, fake_openai)
    worker = await start_worker_process(config, tmp_path / "worker.log")
    fake_openai.then(Behavior(chunks=["abcd"] * 100, chunk_delay_s=0.2))  # 20 s of answer
    events: list[str] = []
    began = trio.Event()
    try:
        with trio.fail_after(15):
            async with trio.open_nursery() as inner:
                inner.start_soon(read_stream, gateway, events, began)
                await began.wait()
                worker.send_signal(signal.SIGTERM)
                signalled = time.monotonic()
        ended_after = time.monotonic() - signalled
        assert worker.wait(timeout=10) == 0
    finally:
        worker.kill()
    assert json.loads(events[-1])["error"]["code"] == "worker_shutdown"
    assert "[DONE]" not in events
    assert ended_after < 6  # the 1 s grace and the publish, not the 30 s of a lost answer
    usage = await gateway.usage()
    assert usage["requests"] == 1 and usage["completion_tokens"] >= len(events) - 1
    assert await gateway.redis.xlen(names.queue("up")) == 0  # finished, nothing to reclaim
    assert not await gateway.redis.keys(names.began("*"))  # its mark went with it


async def test_a_killed_workers_started_stream_is_ended_without_a_second_upstream_call(
        nursery: trio.Nursery, redis_url: str, fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    gateway = await one_route(nursery, redis_url, fake_openai, workers=False)
    config = worker_config(tmp_path / "worker.toml", redis_url, fake_openai)
    doomed = await start_worker_process(config, tmp_path / "doomed.log")
    fake_openai.then(Behavior(chunks=["abcd"] * 100, chunk_delay_s=0.2))
    events: list[str] = []
    began = trio.Event()
    heir = None
    try:
        with trio.fail_after(30):
            async with trio.open_nursery() as inner:
                inner.start_soon(read_stream, gateway, events, began)
                await began.wait()
                doomed.send_signal(signal.SIGKILL)
                heir = await start_worker_process(config, tmp_path / "heir.log")
                reclaiming = time.monotonic()
        ended_after = time.monotonic() - reclaiming
        assert json.loads(events[-1])["error"]["code"] == "worker_lost"
        assert len(fake_openai.requests) == 1  # the heir did not call upstream again
        assert ended_after < 10
        assert await gateway.redis.xlen(names.queue("up")) == 0
        with trio.fail_after(5):  # the heir removes it just after the error frame went out
            while await gateway.redis.keys(names.began("*")):
                await trio.sleep(0.05)
    finally:
        for process in (doomed, heir):
            if process is not None:
                process.kill()
                process.wait()


# ── item 15: a publisher is bounded in memory and in time ───────────────────────
def a_job(channel: str) -> Job:
    return Job(request_id="r1", org="o", project="p", key_id="k", model="m",
               routes=[Route(provider="p", model="u")], body=b"{}", stream=True,
               reply_to=channel, deadline=time.time() + 60)


async def test_a_publisher_bounds_what_waits_and_how_big_a_frame_is(redis_url: str) -> None:
    limits = Limits(stream_buffer_bytes=4096, max_frame_bytes=1024, redis_timeout_s=2)
    async with connect(redis_url) as redis, subscription(redis, "ch") as pubsub:
        publisher = StreamPublisher(Queue(redis), a_job("ch"), 0, limits)
        for _ in range(10):
            publisher.emit(b"x" * 400)
        with pytest.raises(GatewayError) as caught:
            publisher.emit(b"x" * 400)  # Redis does not keep up: the stream ends, memory stays bounded
        assert caught.value.code == "stream_stalled"
        publisher.close()
        await publisher.pump()
        frames: list[Head | Chunk] = []
        with trio.fail_after(5):
            async for message in pubsub:
                if message["type"] == "message":
                    frames.append(frame_decoder.decode(message["data"]))  # type: ignore[arg-type]
                    if len(frames) == 6:
                        break
    assert isinstance(frames[0], Head)
    assert [f.seq for f in frames] == [0, 1, 2, 3, 4, 5]
    assert [len(f.payloads) for f in frames[1:] if isinstance(f, Chunk)] == [2] * 5  # 800 B a frame
    assert await redis_began(redis_url) == 1  # output began, for a worker that reclaims


async def redis_began(redis_url: str) -> int:
    async with connect(redis_url) as redis:
        return await redis.exists([names.began("r1")])


async def test_a_publish_that_hangs_ends_the_stream_with_an_error(
        redis_url: str, redis_server: RedisServer) -> None:
    limits = Limits(redis_timeout_s=0.5)
    async with connect(redis_url) as redis:
        publisher = StreamPublisher(Queue(redis), a_job("ch"), 0, limits)
        publisher.emit(b"x")
        assert redis_server.command("CLIENT", "PAUSE", "5000", "WRITE").startswith(b"+OK")
        try:
            asked = time.monotonic()
            with pytest.raises(GatewayError) as caught:
                await publisher.pump()
            assert time.monotonic() - asked < 3
        finally:
            redis_server.command("CLIENT", "UNPAUSE")
    assert (caught.value.status, caught.value.code) == (503, "service_unavailable")


async def test_a_stream_whose_frames_cannot_be_published_ends_with_an_error(
        nursery: trio.Nursery, redis_url: str, redis_server: RedisServer,
        fake_openai: FakeOpenAI) -> None:
    gateway = await one_route(nursery, redis_url, fake_openai, redis_timeout_s=0.5)
    fake_openai.then(Behavior(chunks=["abcd"] * 60, chunk_delay_s=0.1))
    events: list[str] = []
    began = trio.Event()
    with trio.fail_after(20):
        async with trio.open_nursery() as inner:
            inner.start_soon(read_stream, gateway, events, began)
            await began.wait()
            # Redis takes no writes for longer than a publish may take: the worker's next
            # publish times out, and the job ends (its error published once Redis is back,
            # or by the worker that reclaims it) instead of the stream going on as if whole.
            assert redis_server.command("CLIENT", "PAUSE", "1500", "WRITE").startswith(b"+OK")
    assert "[DONE]" not in events
    assert json.loads(events[-1])["error"]["code"] in ("service_unavailable", "worker_lost")
    assert len(fake_openai.requests) == 1
