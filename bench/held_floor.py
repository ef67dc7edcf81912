"""What one held stream costs below Switchboard: Hypercorn alone, then with Quart-trio.

    .venv/bin/python bench/held_floor.py [--connections 2000]

bench/held.py measures the ingress's memory per held stream; this script measures the
floor under it, with the same servers the ingress runs on (Hypercorn on trio, Quart-trio)
and nothing of Switchboard's: a server process answers every `POST` with an event stream,
sends one event and holds the response open. N connections are opened one after the
other, each with one request, and held; the server's RSS is read before and after
(/proc, VmRSS), and the difference divided by N. Each server runs in a fresh process
(this script with `--serve KIND`), warmed by 200 connections first.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import trio

from ingress.dev import free_port

from rss import status_kib

HOST = "127.0.0.1"
WARMUP = 200
REQUEST = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: bench\r\n"
           b"content-type: application/json\r\ncontent-length: 2\r\n\r\n{}")
EVENT = b"data: {}\n\n"
Message = MutableMapping[str, Any]


async def bare(scope: Message, receive: Callable[[], Awaitable[Message]],
               send: Callable[[Message], Awaitable[None]]) -> None:
    """A bare ASGI application: one event, then the response held open."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    await receive()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/event-stream")]})
    await send({"type": "http.response.body", "body": EVENT, "more_body": True})
    await trio.sleep_forever()


def quart() -> Any:
    """The same answer from a Quart-trio route, as the ingress's routes answer."""
    from quart import Response, request
    from quart_trio import QuartTrio

    app = QuartTrio("floor")

    @app.post("/v1/chat/completions")
    async def chat() -> Response:
        await request.get_data()

        async def events() -> Any:
            yield EVENT
            await trio.sleep_forever()

        response = Response(events(), 200, content_type="text/event-stream")
        response.timeout = None
        return response

    return app


def serve(kind: str, port: int) -> None:
    from hypercorn.config import Config
    from hypercorn.trio import serve as hypercorn_serve

    config = Config()
    config.bind = [f"{HOST}:{port}"]
    config.accesslog = None
    config.backlog = 4096
    trio.run(hypercorn_serve, bare if kind == "bare" else quart(), config)


async def hold(port: int, count: int, pid: int) -> float:
    """Open and hold `count` streams; the server's RSS per held stream, KiB."""
    streams = []
    before = status_kib(pid, "VmRSS")
    for _ in range(count):
        stream = await trio.open_tcp_stream(HOST, port)
        await stream.send_all(REQUEST)
        received = b""
        while EVENT not in received:
            received += await stream.receive_some(4096)
        streams.append(stream)
    await trio.sleep(1.0)
    held = status_kib(pid, "VmRSS")
    for stream in streams:
        await stream.aclose()
    return (held - before) / count


def measure(kind: str, count: int) -> float:
    port = free_port()
    server = subprocess.Popen([sys.executable, __file__, "--serve", kind, "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                trio.run(trio.open_tcp_stream, HOST, port)
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit(f"the {kind} server did not start") from None
                time.sleep(0.1)
        trio.run(hold, port, WARMUP, server.pid)
        return trio.run(hold, port, count, server.pid)
    finally:
        server.terminate()
        server.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=2000, help="streams held (default 2000)")
    parser.add_argument("--serve", choices=["bare", "quart"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port)
        return 0
    if args.connections < 1:
        parser.error("--connections must be 1 or more")
    print("| server | held streams | RSS per held stream KiB |\n| --- | ---: | ---: |")
    for kind, name in (("bare", "Hypercorn (trio), a bare ASGI app"),
                       ("quart", "Hypercorn (trio) + Quart-trio")):
        print(f"| {name} | {args.connections:,} | {measure(kind, args.connections):.1f} |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
