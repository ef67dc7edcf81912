"""The floor under the ingress: what Hypercorn alone, and with Quart-trio, cost per request.

    .venv/bin/python bench/floor.py [--connections 2000] [--requests 10000] [--concurrency 16]

The ingress runs on Hypercorn (trio) and Quart-trio; this script measures those two with
nothing of Switchboard's, on the same machine, so the ingress's own figures
(bench/overhead.py, bench/held.py) can be read against them. Each server runs in a fresh
process (this script with `--serve KIND`): a bare ASGI application, and a Quart-trio app
with one route, as the ingress's routes are written.

- **CPU per plain request**: `--requests` POSTs answered with a small JSON body, from
  `--concurrency` keep-alive connections (bench/wire.py), after a warm-up; the server's
  user+system CPU seconds (/proc) divided by the requests.
- **Memory per held stream**: the server answers with an event stream, sends one event
  and holds the response open; `--connections` connections are opened one after the
  other and held, and the server's RSS difference (/proc, VmRSS) is divided by them
  (after a warm-up of 200).
- **CPU per Redis call**: coredis, as both sides of the gateway use it
  (`workers.connection.connect`), against a private redis-server: this process's CPU
  per PING and per call of a one-line script, one at a time and 64 at once.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import trio

from ingress.dev import free_port, start_private_redis
from workers.connection import connect

from procs import cpu_seconds
from rss import status_kib
from wire import Connection

HOST = "127.0.0.1"
WARMUP = 200
REQUEST = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: bench\r\n"
           b"content-type: application/json\r\ncontent-length: 2\r\n\r\n{}")
EVENT = b"data: {}\n\n"
PLAIN_PATH = "/v1/plain"
ANSWER = b'{"id":"chatcmpl-floor","object":"chat.completion","choices":[]}'
WARMUP_REQUESTS = 500
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
    if scope["path"] == PLAIN_PATH:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(ANSWER)).encode())]})
        await send({"type": "http.response.body", "body": ANSWER})
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/event-stream")]})
    await send({"type": "http.response.body", "body": EVENT, "more_body": True})
    await trio.sleep_forever()


def quart() -> Any:
    """The same answer from a Quart-trio route, as the ingress's routes answer."""
    from quart import Response, request
    from quart_trio import QuartTrio

    app = QuartTrio("floor")

    @app.post(PLAIN_PATH)
    async def plain() -> Response:
        await request.get_data()
        return Response(ANSWER, 200, content_type="application/json")

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
    app: Any = bare if kind == "bare" else quart()
    trio.run(hypercorn_serve, app, config)


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


async def answer(port: int, requests: int, concurrency: int, pid: int) -> float:
    """CPU milliseconds of the server per plain request."""
    connections = [Connection(f"http://{HOST}:{port}{PLAIN_PATH}", {})
                   for _ in range(concurrency)]
    left = requests

    async def caller(connection: Connection) -> None:
        nonlocal left
        while left > 0:
            left -= 1
            if await connection.post(b"{}") != 200 or await connection.body() != ANSWER:
                raise SystemExit("a plain answer was wrong")

    for count in (WARMUP_REQUESTS, requests):
        left = count
        before = cpu_seconds(pid)
        async with trio.open_nursery() as nursery:
            for connection in connections:
                nursery.start_soon(caller, connection)
        after = cpu_seconds(pid)
    for connection in connections:
        await connection.aclose()
    assert before is not None and after is not None
    return (after - before) * 1000 / requests


def measure(kind: str, args: argparse.Namespace) -> tuple[float, float]:
    """(CPU ms per plain request, KiB per held stream) of a fresh `kind` server."""
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
        cpu_ms = trio.run(answer, port, args.requests, args.concurrency, server.pid)
        trio.run(hold, port, WARMUP, server.pid)
        return cpu_ms, trio.run(hold, port, args.connections, server.pid)
    finally:
        server.terminate()
        server.wait(10)


async def redis_calls(url: str, calls: int) -> list[tuple[str, float]]:
    """(what, CPU microseconds of this process per call) for coredis's calls."""
    found = []
    async with connect(url) as redis:
        script = redis.register_script("return redis.call('INCR', KEYS[1])")
        kinds = {"PING": redis.ping, "one-line script": lambda: script(keys=["floor"], args=[])}
        for name, call in kinds.items():
            for each in (1, 64):
                async def loop(count: int, call: Any = call) -> None:
                    for _ in range(count):
                        await call()

                for count in (calls // 10, calls):  # a warm-up, then the measured calls
                    started = time.process_time()
                    async with trio.open_nursery() as nursery:
                        for _ in range(each):
                            nursery.start_soon(loop, count // each)
                found.append((f"coredis {name}, {each} at once",
                              (time.process_time() - started) * 1e6 / count))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=2000, help="streams held (default 2000)")
    parser.add_argument("--requests", type=int, default=10000,
                        help="plain requests measured (default 10000)")
    parser.add_argument("--concurrency", type=int, default=16,
                        help="connections sending them (default 16)")
    parser.add_argument("--serve", choices=["bare", "quart"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port)
        return 0
    if min(args.connections, args.requests, args.concurrency) < 1:
        parser.error("--connections, --requests and --concurrency must be 1 or more")
    print(f"{args.requests:,} plain requests from {args.concurrency} connections; "
          f"{args.connections:,} streams held\n")
    print("| server | CPU ms per plain request | RSS per held stream KiB |\n| --- | ---: | ---: |")
    for kind, name in (("bare", "Hypercorn (trio), a bare ASGI app"),
                       ("quart", "Hypercorn (trio) + Quart-trio")):
        cpu_ms, kib = measure(kind, args)
        print(f"| {name} | {cpu_ms:.3f} | {kib:.1f} |", flush=True)
    with tempfile.TemporaryDirectory() as workdir:
        redis, port = start_private_redis(Path(workdir))
        try:
            rows = trio.run(redis_calls, f"redis://{HOST}:{port}/0", args.requests)
        finally:
            redis.terminate()
            redis.wait(10)
    print("\n| Redis call (this process's CPU) | µs per call |\n| --- | ---: |")
    for name, micros in rows:
        print(f"| {name} | {micros:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
