"""The ingress's reply path under pressure: Redis frozen while requests wait, a client that
stops reading, a thousand streams opened at once through one ingress.

Each test pins a promise of DESIGN.md (invariants 5 and 7) and fails when it breaks.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from typing import Any

import httpx
import pytest
import trio

from ingress.dev import start_private_redis
from tests.conftest import TLS, Gateway, make_config, start_gateway
from tests.fakes.openai_upstream import Behavior, FakeOpenAI
from tests.test_reliability import served_after_outage

HI = [{"role": "user", "content": "hi there"}]


def events_of(text: str) -> list[str]:
    """The data of each SSE event of a stream's body."""
    return [e.removeprefix("data: ") for e in text.split("\n\n") if e.strip()]


# --- Redis frozen while requests wait (invariant 7) -------------------------------------

async def test_frozen_redis_answers_every_waiting_request_within_the_bound(
        nursery: trio.Nursery, tmp_path: Any) -> None:
    """Requests already admitted and waiting (plain, streamed before its first chunk,
    streamed mid-answer) and one arriving during the freeze: each gets its whole answer
    within `redis_timeout_s` of the freeze, with the key cache warm (authentication needs
    no Redis, so what is timed is waiting, admission and withdrawal)."""
    process, port = start_private_redis(tmp_path)
    bound = 2.0
    try:
        config = make_config(
            f"redis://127.0.0.1:{port}/0",
            {"slow": {"kind": "mock", "latency_ms": 60_000},
             "drip": {"kind": "mock", "latency_ms": 0, "chunks": 50, "chunk_delay_ms": 1000},
             "local": {"kind": "mock"}},
            [{"slug": "slow", "routes": [{"provider": "slow", "model": "m"}]},
             {"slug": "drip", "routes": [{"provider": "drip", "model": "m"}]},
             {"slug": "echo", "routes": [{"provider": "local", "model": "m"}]}],
            limits={"redis_timeout_s": bound, "key_cache_s": 300, "request_timeout_s": 120})
        gateway = await start_gateway(nursery, config)
        words = " ".join(f"w{i}" for i in range(50))
        frozen_at: list[float] = []
        answers: dict[str, tuple[float, int, str]] = {}
        started: dict[str, trio.Event] = {name: trio.Event() for name in ("plain", "stream", "drip")}

        async def ask(http: httpx.AsyncClient, name: str, body: dict[str, Any]) -> None:
            async with http.stream("POST", "/v1/chat/completions", json=body) as reply:
                text = ""
                async for piece in reply.aiter_text():
                    text += piece
                    if name == "drip" and "w0" in text:
                        started[name].set()  # the answer began before the freeze
            answers[name] = (time.monotonic(), reply.status_code, text)

        async with httpx.AsyncClient(
                verify=TLS, base_url=gateway.base_url, timeout=60,
                headers={"authorization": f"Bearer {gateway.secret}"}) as http:
            ok = await http.post("/v1/chat/completions", json={"model": "echo", "messages": HI})
            assert ok.status_code == 200  # the key is cached from here on
            async with trio.open_nursery() as inner:
                inner.start_soon(ask, http, "plain", {"model": "slow", "messages": HI})
                inner.start_soon(ask, http, "stream", {"model": "slow", "messages": HI,
                                                       "stream": True})
                inner.start_soon(ask, http, "drip", {
                    "model": "drip", "stream": True,
                    "messages": [{"role": "user", "content": words}]})
                with trio.fail_after(10):
                    await started["drip"].wait()
                    while await gateway.redis.xlen("{sb}:q:slow") < 2:  # both admitted
                        await trio.sleep(0.02)
                await trio.sleep(0.3)  # all three wait for their next frame
                os.kill(process.pid, signal.SIGSTOP)  # Redis stops answering, sockets stay open
                frozen_at.append(time.monotonic())
                try:
                    inner.start_soon(ask, http, "late", {"model": "echo", "messages": HI})
                    with trio.move_on_after(15):
                        while len(answers) < 4:
                            await trio.sleep(0.05)
                finally:
                    os.kill(process.pid, signal.SIGCONT)
        assert set(answers) == {"plain", "stream", "drip", "late"}
        took = {name: round(at - frozen_at[0], 2) for name, (at, _, _) in answers.items()}
        assert all(t < bound + 0.5 for t in took.values()), took  # the bound, in total
        for name in ("plain", "stream", "late"):  # nothing was sent yet: an HTTP 503
            status, text = answers[name][1:]
            assert status == 503 and json.loads(text)["error"]["code"] == "service_unavailable"
        status, text = answers["drip"][1:]  # mid-answer: an error event ends the stream
        events = events_of(text)
        assert status == 200 and "[DONE]" not in events  # a cut answer never looks complete
        assert json.loads(events[-1])["error"]["code"] == "service_unavailable", events[-1]
        # Service resumes by itself, and the jobs of the failed requests are withdrawn
        # once Redis answers again (the withdrawals waited for it, the clients did not).
        assert await served_after_outage(gateway.client(timeout=10), within_s=15) == "hi there"
        with trio.fail_after(10):
            while await gateway.redis.xlen("{sb}:q:slow") + await gateway.redis.xlen("{sb}:q:drip"):
                await trio.sleep(0.1)
    finally:
        process.kill()
        process.wait()


# --- A client that stops reading (invariant 5) ------------------------------------------

async def open_and_stop_reading(gateway: Gateway, body: dict[str, Any]) -> trio.socket.SocketType:
    """A raw HTTP/1.1 client with a tiny receive buffer: it sends a streamed request,
    reads until the first event arrived, then never reads again."""
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    host, port = gateway.base_url.removeprefix("http://").split(":")
    await sock.connect((host, int(port)))
    payload = json.dumps({**body, "stream": True}).encode()
    await sock.send(b"POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\n"
                    b"authorization: Bearer " + gateway.secret.encode() + b"\r\n"
                    b"content-type: application/json\r\n"
                    b"content-length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload)
    seen = b""
    with trio.fail_after(10):
        while b"\r\n\r\n" not in seen or b"data: " not in seen.partition(b"\r\n\r\n")[2]:
            seen += await sock.recv(4096)
    assert seen.startswith(b"HTTP/1.1 200"), seen[:200]
    return sock


async def wait_closed(sock: trio.socket.SocketType, within_s: float) -> bytes:
    """Read what the server still sent until it closes the connection; return the tail."""
    tail = b""
    with trio.fail_after(within_s):
        while True:
            try:
                data = await sock.recv(1 << 20)
            except ConnectionResetError:
                return tail
            if not data:
                return tail
            tail = (tail + data)[-4096:]


@pytest.mark.parametrize("write_timeout_s", [2.0, 600.0], ids=["write-timeout", "frames-behind"])
async def test_a_client_that_stops_reading_loses_its_job_and_connection(
        nursery: trio.Nursery, redis_url: str, fake_openai: FakeOpenAI,
        switchboard_logs: pytest.LogCaptureFixture, write_timeout_s: float) -> None:
    """Whichever comes first, a write blocked for `write_timeout_s` or the frame buffer
    filling up, withdraws the job (the upstream call is cancelled within seconds) and ends
    the request: its log line is written and the connection is closed."""
    config = make_config(
        redis_url, {"up": {"kind": "openai", "base_url": fake_openai.base_url, "timeout_s": 120,
                           "max_retries": 0}},
        [{"slug": "m", "routes": [{"provider": "up", "model": "u"}]}],
        limits={"write_timeout_s": write_timeout_s, "request_timeout_s": 120})
    gateway = await start_gateway(nursery, config)
    # About 80 MB over 40 s if nobody stops it: far more than any socket buffer holds.
    fake_openai.then(Behavior(chunks=[f"{i:05d}" + "x" * 4000 for i in range(20_000)],
                              chunk_delay_s=0.002))
    sock = await open_and_stop_reading(gateway, {"model": "m", "messages": HI})
    with sock:
        stopped = time.monotonic()
        with trio.fail_after(20):
            while not fake_openai.disconnects:
                await trio.sleep(0.05)
        assert fake_openai.disconnects[0] - stopped < 10  # the upstream call was cancelled
        with trio.fail_after(5):
            while await gateway.redis.xlen("{sb}:q:up") != 0:
                await trio.sleep(0.05)  # the job is gone from Redis
        if write_timeout_s > 60:
            return  # the connection is let go only when its write times out
        tail = await wait_closed(sock, within_s=10)  # the ingress let go of the connection
        assert b"[DONE]" not in tail
    with trio.fail_after(5):
        while not (ended := [json.loads(r.getMessage()) for r in switchboard_logs.records
                             if '"event":"request"' in r.getMessage()]):
            await trio.sleep(0.05)  # the request ended: nothing of it is held any more
    assert ended[0]["status"] in (499, 502), ended  # cut off, never logged as served


# --- A thousand streams at once through one ingress (invariant 7) -----------------------

async def raw_exchange(address: tuple[str, int], request: bytes) -> tuple[int, bytes]:
    """One HTTP/1.0 exchange on a raw socket (the server closes when done): status, body.
    Far cheaper than an HTTP client library, so the load lands on the ingress."""
    sock = trio.socket.socket()
    with sock:
        await sock.connect(address)
        await sock.send(request)
        data = b""
        while chunk := await sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


async def test_a_thousand_streams_at_once_end_done_or_429_never_503(
        nursery: trio.Nursery, redis_url: str) -> None:
    """Opened as fast as the client can through one ingress (which shares its process and
    event loop with the worker and the client: as busy as an ingress gets), each stream
    ends with `[DONE]` or is refused with a 429; a busy ingress never takes itself for a
    Redis outage."""
    config = make_config(redis_url, {"local": {"kind": "mock", "latency_ms": 200, "chunks": 8,
                                               "chunk_delay_ms": 200}},
                         [{"slug": "echo", "routes": [{"provider": "local", "model": "m"}]}],
                         limits={"request_timeout_s": 60, "key_cache_s": 60})
    gateway = await start_gateway(nursery, config)
    host, port = gateway.base_url.removeprefix("http://").split(":")
    words = " ".join(f"w{j}" for j in range(8))
    body = json.dumps({"model": "echo", "stream": True,
                       "messages": [{"role": "user", "content": words}]}).encode()
    request = (b"POST /v1/chat/completions HTTP/1.0\r\nhost: gateway\r\n"
               b"authorization: Bearer " + gateway.secret.encode() + b"\r\n"
               b"content-type: application/json\r\ncontent-length: "
               + str(len(body)).encode() + b"\r\n\r\n" + body)
    count = 1000
    outcomes: dict[str, int] = {}

    async def one() -> None:
        try:
            status, answer = await raw_exchange((host, int(port)), request)
        except OSError as exc:
            outcome = type(exc).__name__
        else:
            events = events_of(answer.decode())
            if status == 200 and events and events[-1] == "[DONE]":
                chunks = [json.loads(e) for e in events[:-1]]
                text = "".join(c["choices"][0]["delta"].get("content") or ""
                               for c in chunks if c["choices"])
                outcome = "done" if text == words else "garbled"
            elif status == 200:
                outcome = "200 " + (events[-1][:80] if events else "empty")
            else:
                outcome = f"{status} {json.loads(answer)['error']['code']}"
        outcomes[outcome] = outcomes.get(outcome, 0) + 1

    started = time.monotonic()
    async with trio.open_nursery() as inner:
        for _ in range(count):
            inner.start_soon(one)
    took = time.monotonic() - started
    assert set(outcomes) <= {"done", "429 ingress_busy", "429 queue_full"}, (outcomes, took)
    # Pushback sheds what the loop cannot carry (how much depends on the machine: client,
    # ingress and worker share this one event loop); what it admitted is served whole.
    assert outcomes.get("done", 0) > 0, (outcomes, took)
    # And the burst left the gateway healthy: a wave at a pace it can carry is all served
    # (a gateway that refused everything, or stayed "busy", would fail here).
    outcomes.clear()
    for _ in range(5):
        async with trio.open_nursery() as inner:
            for _ in range(20):
                inner.start_soon(one)
    assert outcomes == {"done": 100}, outcomes


async def test_a_blocked_event_loop_is_not_taken_for_a_silent_redis(redis_url: str) -> None:
    """The loop blocked for longer than the silence bound (one CPU-bound call: twenty
    httpx clients built at once take a second on a slow machine) is this process's own
    stall, not Redis's: the hub stays ready and keeps its waiters. The hub's watchdog and
    the loop sampler wake in the same batch after a stall, in an order trio picks at
    random; a watchdog that ran first and did not count its own late wake-up failed
    everything with 503 (seen in CI). Repeated so that order comes up."""
    from ingress.replies import SILENT_SHARE, ReplyHub
    from workers.connection import connect

    timeout_s = 1.5
    async with connect(redis_url) as redis, trio.open_nursery() as nursery:
        hub = ReplyHub(redis, timeout_s=timeout_s)
        await nursery.start(hub.serve)
        with trio.fail_after(5):
            await hub.wait_ready()
        replies = hub.register("req_waiting")
        for _ in range(6):
            await trio.sleep(0.3)  # a probe answered, the watchdog asleep
            time.sleep(SILENT_SHARE * timeout_s + 0.25)  # noqa: ASYNC251 (the stall is the point)
            await trio.sleep(0.3)  # the watchdog and the sampler have both run
            assert hub.ready, "a stall of this process's loop was taken for a Redis outage"
            hub.register("req_after").close()  # a new request is admitted, not a 503
        assert "req_waiting" in hub._waiters, "the waiting request was failed"
        replies.close()
        nursery.cancel_scope.cancel()


async def test_a_request_waiting_through_an_ended_subscription_is_failed_only_after_the_gap_bound(
        redis_url: str) -> None:
    """When the subscription ends (Redis ends it on a master that loses the slot), the
    waiters keep waiting for their answers (tests/test_cluster_reshard.py), but a frame
    the old subscription took and never handed on is lost: a waiter that hears nothing
    is failed after GAP_WAIT_S, not left to its deadline; one whose frame comes is not."""
    from ingress.replies import GAP_WAIT_S, WATCH_S, RepliesLost, ReplyHub
    from schemas.envelopes import Done
    from schemas.envelopes import frame_encoder as encoder
    from workers.connection import connect, publish

    async with connect(redis_url) as redis, trio.open_nursery() as nursery:
        hub = ReplyHub(redis)
        await nursery.start(hub.serve)
        with trio.fail_after(5):
            await hub.wait_ready()
        silent, answered = hub.register("req_silent"), hub.register("req_answered")
        hub._through_gap()  # what serve() does when the subscription ends
        began = trio.current_time()
        await trio.sleep(1.0)
        await publish(redis, hub.channel, encoder.encode(
            Done(request_id="req_answered", attempt=0, seq=0, provider="p", body=b"{}")))
        with trio.fail_after(2):
            assert isinstance(await answered.next(), Done)
        with trio.fail_after(GAP_WAIT_S + 2):
            with pytest.raises(RepliesLost):
                await silent.next()
        waited = trio.current_time() - began
        assert GAP_WAIT_S - WATCH_S <= waited <= GAP_WAIT_S + 2 * WATCH_S + 0.5, waited
        assert hub.ready  # the hub itself goes on
        answered.close()
        silent.close()
        nursery.cancel_scope.cancel()
