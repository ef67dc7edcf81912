"""How many slow streams can one ingress process hold, and what does each cost in memory?

For each N in --streams (default 1000,5000,10000) it starts a fresh deployment on
127.0.0.1 (a private redis-server, the fast fake upstream sending a chunk every
--chunk-every-s seconds, one `switchboard serve` process, --workers worker processes),
opens N streamed chat completions through the ingress at --open-rate a second on raw
sockets (far cheaper than an HTTP client, so the load lands on the gateway), and keeps
them open until every one has ended. Each stream must end with every chunk and
`[DONE]`: any other end (an error event, a 4xx/5xx, a cut connection) is counted.

The ingress's RSS is read from /proc before the streams open (after a warm-up wave that
loads everything lazily imported) and once a second while they are held; "RSS per held
stream" is (highest RSS while all N were held - RSS before) / N, or, when some had ended
before the last one opened, the same at the sample with the most open, per stream open
then; Redis's `used_memory` is read the same way, for the Redis data a held stream costs
(its job entry in the stream, its reservation, its output-began mark). The processes'
logs stay in the run's folder (printed at the end) when a stream did not end whole.

    .venv/bin/python bench/held.py [--streams 1000,5000,10000] [--open-rate 250]
                                   [--chunk-every-s 5] [--hold-s 20] [--workers 2]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import trio

from ingress.dev import free_port, start_private_redis

from procs import (
    HOST,
    SLUG,
    UPSTREAM_KEY,
    UPSTREAM_SCRIPT,
    Processes,
    child_env,
    create_key,
    http_ok,
    redis_command,
    switchboard_argv,
    terminate_on_sigterm,
    wait_until,
    write_config,
)
from rss import descendants, status_kib

WARMUP_STREAMS = 50


@dataclass
class Run:
    """One N: what every stream ended with, and the ingress's memory around it."""

    streams: int
    outcomes: Counter[str] = field(default_factory=Counter)
    rss_before_kib: int = 0
    rss_held_kib: int = 0  # highest VmRSS once all were opened, with `held_at` open
    held_at: int = 0  # streams open at that sample (all of them, unless some had ended)
    most_open: int = 0  # most streams open (sent, not yet ended) at one time
    open_s: float = 0.0  # how long opening them took
    worker_rss_kib: int = 0
    redis_rss_kib: int = 0
    redis_before: int = 0  # Redis's used_memory (bytes) before the streams opened
    redis_held: int = 0  # ... and at the same samples

    @property
    def per_stream_kib(self) -> float:
        return (self.rss_held_kib - self.rss_before_kib) / max(self.held_at, 1)

    @property
    def redis_per_stream_b(self) -> float:
        return (self.redis_held - self.redis_before) / max(self.held_at, 1)

    async def sample_held(self, open_now: int, ingress_pid: int, redis_port: int) -> None:
        """Keep the memory of the sample with the most streams open (the highest among
        equals): when some ended before the last opened, per stream is per one held."""
        if open_now == 0 or open_now < self.held_at:
            return
        rss = rss_kib(ingress_pid)
        redis = await trio.to_thread.run_sync(redis_used_memory, redis_port)
        if open_now > self.held_at:
            self.held_at, self.rss_held_kib, self.redis_held = open_now, rss, redis
        else:
            self.rss_held_kib = max(self.rss_held_kib, rss)
            self.redis_held = max(self.redis_held, redis)


def redis_used_memory(port: int) -> int:
    """INFO memory's used_memory: what Redis's allocator holds for data, in bytes."""
    for line in redis_command(port, "INFO", "memory").decode().splitlines():
        if line.startswith("used_memory:"):
            return int(line.split(":", 1)[1])
    return 0


def rss_kib(pid: int) -> int:
    """VmRSS of one process, KiB (0 when it is gone)."""
    return status_kib(pid, "VmRSS")


class Streams:
    """Opens streams on raw sockets and checks how each one ends."""

    def __init__(self, port: int, secret: str, chunks: int) -> None:
        self.address = (HOST, port)
        self.chunks = chunks
        body = msgspec.json.encode({"model": SLUG, "stream": True,
                                    "messages": [{"role": "user", "content": "hold"}]})
        self.request = (b"POST /v1/chat/completions HTTP/1.0\r\nhost: gateway\r\n"
                        b"authorization: Bearer " + secret.encode() + b"\r\n"
                        b"content-type: application/json\r\ncontent-length: "
                        + str(len(body)).encode() + b"\r\n\r\n" + body)
        self.open = 0

    async def one(self, outcomes: Counter[str]) -> None:
        self.open += 1
        try:
            outcomes[await self._exchange()] += 1
        except OSError as exc:
            outcomes[type(exc).__name__] += 1
        finally:
            self.open -= 1

    async def _exchange(self) -> str:
        sock = trio.socket.socket()
        with sock:
            await sock.connect(self.address)
            await sock.send(self.request)
            data = bytearray()
            while chunk := await sock.recv(65536):
                data += chunk
        head, _, body = bytes(data).partition(b"\r\n\r\n")
        status = head.split(b" ", 2)[1].decode() if head.count(b" ") >= 2 else "?"
        if status != "200":
            try:
                code = msgspec.json.decode(body)["error"]["code"]
            except (msgspec.DecodeError, KeyError, TypeError):
                code = "?"
            return f"HTTP {status} {code}"
        events = [line[5:].strip() for line in body.split(b"\n") if line.startswith(b"data:")]
        errors = [event for event in events if event.startswith(b'{"error"')]
        if errors:
            try:
                return "error event " + str(msgspec.json.decode(errors[0])["error"]["code"])
            except (msgspec.DecodeError, KeyError, TypeError):
                return "error event"
        if not events or events[-1] != b"[DONE]":
            return "ended without [DONE]"
        content = sum(1 for event in events if b'"content":"' in event)
        return "done" if content == self.chunks else f"{content} of {self.chunks} chunks"


async def hold(streams: Streams, run: Run, rate: float, ingress_pid: int,
               redis_port: int) -> None:
    """Open `run.streams` streams at `rate` a second, sampling the ingress's RSS once a
    second until all have ended."""
    started = trio.current_time()
    all_open = trio.Event()

    async def sample() -> None:
        while True:
            if all_open.is_set():
                await run.sample_held(streams.open, ingress_pid, redis_port)
            run.most_open = max(run.most_open, streams.open)
            await trio.sleep(1.0)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sample)
        async with trio.open_nursery() as openers:
            for i in range(run.streams):
                openers.start_soon(streams.one, run.outcomes)
                await trio.sleep_until(started + (i + 1) / rate)
            run.open_s = trio.current_time() - started
            all_open.set()
            await trio.sleep(1.5)  # at least one sample with every stream open
            run.most_open = max(run.most_open, streams.open)
            await run.sample_held(streams.open, ingress_pid, redis_port)
        nursery.cancel_scope.cancel()


def measure(args: argparse.Namespace, count: int) -> Run:
    """A fresh deployment, `count` streams through it, everything stopped after."""
    workdir = Path(tempfile.mkdtemp(prefix=f"sb-held-{count}-"))
    processes = Processes(workdir)
    try:
        redis_process, redis_port = start_private_redis(workdir / "redis")
        processes.add("redis", redis_process)
        env = child_env(f"redis://{HOST}:{redis_port}/0")
        # Long enough that the first stream is still open when the last one opens.
        lasting_s = count / args.open_rate + args.hold_s
        chunks = max(2, math.ceil(lasting_s / args.chunk_every_s))
        upstream_port = free_port()
        processes.start("upstream", [sys.executable, str(UPSTREAM_SCRIPT), "--host", HOST,
                                     "--port", str(upstream_port), "--chunks", str(chunks),
                                     "--chunk-delay-ms", str(args.chunk_every_s * 1000),
                                     "--api-key", UPSTREAM_KEY], env)
        wait_until("the fast upstream",
                   lambda: http_ok(f"http://{HOST}:{upstream_port}/health"), processes)
        config = workdir / "switchboard.toml"
        timeout_s = math.ceil(lasting_s + args.chunk_every_s * 2 + 60)
        write_config(config, env["REDIS_URL"], f"http://{HOST}:{upstream_port}/v1", count,
                     request_timeout_s=timeout_s, upstream_timeout_s=timeout_s)
        secret = create_key(config, env)
        port = free_port()
        processes.start("ingress", switchboard_argv("serve", args, "--config", str(config),
                                                    "--host", HOST, "--port", str(port),
                                                    "--processes", "1"), env)
        processes.start("worker", switchboard_argv("worker", args, "--config", str(config),
                                                   "--processes", str(args.workers)), env)
        log = workdir / "worker.log"
        wait_until("switchboard worker",
                   lambda: log.read_bytes().count(b'"worker_ready"') >= args.workers, processes)
        wait_until("switchboard ingress", lambda: http_ok(f"http://{HOST}:{port}/readyz"),
                   processes)
        ingress_pid = processes.pid("ingress")

        async def main() -> Run:
            warm = Run(WARMUP_STREAMS)
            await hold(Streams(port, secret, chunks), warm, args.open_rate, ingress_pid,
                       redis_port)
            run = Run(count)
            await trio.sleep(2.0)  # let the warm-up's garbage go
            run.rss_before_kib = rss_kib(ingress_pid)
            run.redis_before = redis_used_memory(redis_port)
            print(f"  N={count}: {chunks} chunks {args.chunk_every_s:g} s apart, ingress RSS "
                  f"{run.rss_before_kib / 1024:.1f} MiB before; opening at "
                  f"{args.open_rate:g}/s", flush=True)
            streams = Streams(port, secret, chunks)
            async with trio.open_nursery() as nursery:
                async def memory() -> None:  # the other processes, near the peak
                    await trio.sleep(count / args.open_rate + 1.0)
                    worker = processes.pid("worker")
                    run.worker_rss_kib = sum(rss_kib(pid) for pid in descendants(worker))
                    run.redis_rss_kib = rss_kib(processes.pid("redis"))

                nursery.start_soon(memory)
                await hold(streams, run, args.open_rate, ingress_pid, redis_port)
            return run

        run = trio.run(main)
        processes.check_alive()
        return run
    finally:
        processes.stop_all()


def report(runs: list[Run]) -> str:
    lines = ["| streams | opened in s | most open at once | ended whole | other ends "
             "| ingress RSS before MiB | ingress RSS held MiB (streams open) "
             "| RSS per held stream KiB "
             "| worker RSS MiB | redis RSS MiB | Redis data per held stream B |",
             "| ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for run in runs:
        other = ", ".join(f"{what}: {n}" for what, n in run.outcomes.items() if what != "done")
        lines.append(f"| {run.streams:,} | {run.open_s:.1f} | {run.most_open:,} "
                     f"| {run.outcomes['done']:,} | {other or 'none'} "
                     f"| {run.rss_before_kib / 1024:.1f} | {run.rss_held_kib / 1024:.1f} "
                     f"({run.held_at:,}) "
                     f"| {run.per_stream_kib:.1f} | {run.worker_rss_kib / 1024:.1f} "
                     f"| {run.redis_rss_kib / 1024:.1f} | {run.redis_per_stream_b:,.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", default="1000,5000,10000",
                        help="comma list of stream counts, one fresh deployment each")
    parser.add_argument("--open-rate", type=float, default=250.0,
                        help="streams opened per second (default 250)")
    parser.add_argument("--chunk-every-s", type=float, default=5.0,
                        help="seconds between two chunks of a stream (default 5)")
    parser.add_argument("--hold-s", type=float, default=20.0,
                        help="seconds every stream stays open after the last one opened")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.set_defaults(profile=None)  # switchboard_argv's cProfile option: never here
    args = parser.parse_args(argv)
    counts = [int(part) for part in args.streams.split(",") if part.strip()]
    if (not counts or min(counts) < 1 or args.open_rate <= 0 or args.chunk_every_s <= 0
            or args.workers < 1 or args.hold_s < 0):
        parser.error("--streams, --open-rate, --chunk-every-s and --workers must be positive, "
                     "--hold-s not negative")
    runs = []
    with terminate_on_sigterm():
        for count in counts:
            runs.append(measure(args, count))
            print(report(runs[-1:]).splitlines()[-1], flush=True)
    print("\n" + report(runs))
    return 0 if all(run.outcomes == Counter(done=run.streams) for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
