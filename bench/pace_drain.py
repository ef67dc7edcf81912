"""Pacing alone: do batch lines paced by workers/pace.py reach their share of the rpm?

The Batch API and the draining workers are measured by bench/batch_drain.py; this one
isolates the pacing. It starts a private redis-server and the fast fake upstream
enforcing `--rpm` per rolling `--window-s` (429 beyond it, counted), then runs for
`--duration` seconds, in this process, two `Pace` objects on two Redis connections
(as two worker processes would share the windows): `--callers` batch callers, each
acquiring a batch line's slot and then calling the upstream, as fast as the pace lets
them, and an interactive stream of `--rate` calls per second (open loop) acquiring
the interactive way. It reports batch calls per second against the batch's share
(`rpm * (1 - interactive_share) / window`), the upstream's 429s and the most it saw in
one window, and how long interactive calls took to acquire (p99: one Redis round trip, unless they
had to wait).

    .venv/bin/python bench/pace_drain.py [--rpm 6000] [--duration 180] [--rate 20]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import httpx
import trio

from ingress.dev import free_port, start_private_redis
from schemas.config import Route, parse_config
from schemas.envelopes import Job
from workers.connection import connect
from workers.pace import GUARD_MS, Pace

from load import percentile
from procs import HOST, UPSTREAM_SCRIPT, Processes, child_env, http_ok, upstream_stats, wait_until

BODY = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'


def job(batch: str) -> Job:
    return Job(request_id="bench", org="bench", project="p", key_id="k", model="s",
               routes=[Route(provider="up", model="m")], body=BODY, stream=False,
               reply_to="", deadline=time.time() + 3600, batch=batch)


async def run(args: argparse.Namespace, redis_url: str, upstream: str) -> dict[str, float]:
    config = parse_config({"redis_url": redis_url,
                           "providers": {"up": {"kind": "openai", "base_url": upstream,
                                                "rpm": args.rpm}},
                           "models": [{"slug": "s", "routes": [{"provider": "up", "model": "m"}]}],
                           "batch": {"interactive_share": args.interactive_share}}, "<bench>")
    counts = {"batch": 0, "interactive": 0, "refused": 0}
    waits: list[float] = []
    limits = httpx.Limits(max_connections=128, max_keepalive_connections=128)
    async with connect(redis_url) as one, connect(redis_url) as two, \
            httpx.AsyncClient(trust_env=False, limits=limits, timeout=30) as client:
        paces = [Pace(redis, config, window_ms=int(args.window_s * 1000)) for redis in (one, two)]
        end = trio.current_time() + args.duration

        async def call(kind: str) -> None:
            response = await client.post(upstream + "/chat/completions", content=BODY)
            counts[kind if response.status_code == 200 else "refused"] += 1

        async def batch_caller(pace: Pace) -> None:
            while trio.current_time() < end:
                await pace.acquire(job("batch_bench"))
                await call("batch")

        async def interactive(pace: Pace) -> None:
            asked = trio.current_time()
            await pace.acquire(job(""))
            waits.append(trio.current_time() - asked)
            await call("interactive")

        async with trio.open_nursery() as nursery:
            for i in range(args.callers):
                nursery.start_soon(batch_caller, paces[i % 2])
            start = trio.current_time()
            for i in range(int(args.rate * args.duration)):
                await trio.sleep_until(start + i / args.rate)
                nursery.start_soon(interactive, paces[i % 2])
    waits.sort()
    return {**counts, "interactive_wait_p99_ms": round(percentile(waits, 99) * 1000, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rpm", type=int, default=6000)
    parser.add_argument("--window-s", type=float, default=60.0,
                        help="the window of the upstream and of the pace (default 60)")
    parser.add_argument("--interactive-share", type=float, default=0.25)
    parser.add_argument("--rate", type=float, default=20.0, help="interactive calls per second")
    parser.add_argument("--callers", type=int, default=16, help="concurrent batch callers")
    parser.add_argument("--duration", type=float, default=180.0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sb-pace-") as tmp:
        workdir = Path(tmp)
        processes = Processes(workdir)
        try:
            redis_process, redis_port = start_private_redis(workdir / "redis")
            processes.add("redis", redis_process)
            redis_url = f"redis://{HOST}:{redis_port}/0"
            port = free_port()
            processes.start("upstream", [sys.executable, str(UPSTREAM_SCRIPT), "--host", HOST,
                                         "--port", str(port), "--rpm", str(args.rpm),
                                         "--window-s", str(args.window_s)], child_env(redis_url))
            wait_until("the fast upstream", lambda: http_ok(f"http://{HOST}:{port}/health"),
                       processes)
            upstream = f"http://{HOST}:{port}/v1"
            counts = trio.run(run, args, redis_url, upstream)
            stats = upstream_stats(upstream)
        finally:
            processes.stop_all()
    share = args.rpm * (1 - args.interactive_share)
    best = share / (args.window_s + GUARD_MS / 1000)  # a call counts GUARD_MS longer
    rate = counts["batch"] / args.duration
    print(f"rpm {args.rpm} per {args.window_s:g}s, interactive_share {args.interactive_share}, "
          f"{args.duration:g}s, {args.callers} batch callers, interactive {args.rate:g}/s")
    print("\n| measure | value | goal |\n| --- | ---: | --- |")
    print(f"| batch calls per second | {rate:.2f} ({rate / (share / args.window_s):.1%} of the "
          f"batch share, {rate / best:.1%} of its best with the guard) | >= 95% |")
    print(f"| interactive calls | {counts['interactive']} | {int(args.rate * args.duration)} |")
    print(f"| interactive acquire, p99 ms | {counts['interactive_wait_p99_ms']} | ~0 |")
    print(f"| upstream 429s | {stats.get('throttled')} | 0 |")
    print(f"| upstream: most requests in one rolling window | {stats.get('max_in_window')} | "
          f"<= {args.rpm} |")
    ok = stats.get("throttled") == 0 and stats.get("max_in_window", 0) <= args.rpm \
        and rate >= 0.95 * share / args.window_s
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
