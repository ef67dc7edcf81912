"""Connections the client closed are closed by the ingress at once, not after keep-alive.

Found by bench/soak.py: each ingress's RSS grew by ~65 MB in two minutes, flat only once
connections began to expire. Every keep-alive connection a client closed while it was
idle (httpx closes one whose streamed answer it stopped reading at `[DONE]`) stayed open
on the server, in CLOSE_WAIT, with its Hypercorn tasks and buffers, for the whole
`keep_alive_timeout` (75 s): thousands of file descriptors and ~20 KB each.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import trio

from schemas.config import Config
from tests.conftest import make_config, start_gateway

CLOSE_WAIT = "08"  # the TCP state's code in /proc/net/tcp
SETTLE_S = 5.0  # far below keep_alive_timeout (75 s): the old code kept them that long
RECYCLED_S = 0.3  # time for the ingress to finish the request and wait for the next one


def _config(redis_url: str) -> Config:
    return make_config(redis_url, {"local": {"kind": "mock", "chunks": 3}},
                       [{"slug": "echo", "routes": [{"provider": "local", "model": "m"}]}])


async def _get_keep_alive(stream: trio.SocketStream, path: str) -> bytes:
    """One HTTP/1.1 request on a kept-alive connection; its whole answer."""
    await stream.send_all(f"GET {path} HTTP/1.1\r\nhost: test\r\n\r\n".encode())
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += await stream.receive_some(65536)
    head, _, body = answer.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += await stream.receive_some(65536)
    return head


async def test_idle_connection_closed_by_client_is_closed_at_once(
        nursery: trio.Nursery, redis_url: str) -> None:
    gateway = await start_gateway(nursery, _config(redis_url), workers=False)
    host, port = gateway.base_url.removeprefix("http://").split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    try:
        assert (await _get_keep_alive(stream, "/healthz")).startswith(b"HTTP/1.1 200")
        # A FIN that comes while the request is still being finished was always handled;
        # one that comes once the connection waits for the next request was not.
        await trio.sleep(RECYCLED_S)
        await stream.send_eof()  # the client is done: the connection is idle and half-closed
        with trio.fail_after(SETTLE_S):
            assert await stream.receive_some(65536) == b"", "the ingress closed its side"
    finally:
        await stream.aclose()


def _close_waits(port: int) -> int:
    """Sockets on `port` whose peer closed and this side has not (this host)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if int(local.rsplit(":", 1)[1], 16) == port and state == CLOSE_WAIT:
                count += 1
    return count


async def _stream_then_hang_up(base_url: str, body: dict[str, object],
                               headers: dict[str, str]) -> None:
    """One client: a whole streamed answer, then, its connection idle, it closes."""
    async with httpx.AsyncClient(base_url=base_url, trust_env=False) as http:
        async with http.stream("POST", "/v1/chat/completions", json=body,
                               headers=headers) as reply:
            assert reply.status_code == 200
            lines = [line async for line in reply.aiter_lines()]
        assert lines[-1] == "data: [DONE]" or "data: [DONE]" in lines
        await trio.sleep(RECYCLED_S)


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux's socket table")
async def test_streams_whose_clients_hung_up_leave_no_connection_behind(
        nursery: trio.Nursery, redis_url: str) -> None:
    gateway = await start_gateway(nursery, _config(redis_url))
    port = int(gateway.base_url.rsplit(":", 1)[1])
    body = {"model": "echo", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    headers = {"authorization": f"Bearer {gateway.secret}"}
    async with trio.open_nursery() as callers:
        for _ in range(20):
            callers.start_soon(_stream_then_hang_up, gateway.base_url, body, headers)
    with trio.move_on_after(SETTLE_S):
        while _close_waits(port):
            await trio.sleep(0.05)
    assert _close_waits(port) == 0, "connections the clients closed are still open"
