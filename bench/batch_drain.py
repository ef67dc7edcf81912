"""Does a big batch drain at the provider's pace without hurting interactive traffic?

One run starts everything on 127.0.0.1: a private redis-server, the fast fake upstream
(bench/fast_upstream.py) enforcing `--rpm` requests per rolling 60 s (a request beyond
it gets a 429 with Retry-After, and is counted), `switchboard serve` and `--workers`
worker processes whose config gives the provider the same `rpm` (and
`[batch] interactive_share`). Then:

(a) an interactive load alone: chat completions at a fixed rate (`--rate` per second,
    open loop: each request is sent at its planned time, and its latency counts from
    then) for `--duration` seconds; its p50/p99;
(b) the same interactive load while a batch of `--lines` lines (default 50,000) is
    uploaded with the openai SDK (`files.create` purpose "batch", `batches.create`),
    polled with `batches.retrieve` until it ends, and its output file read back
    (`files.content`: every custom_id once). Measured: lines per minute over the drain
    against the configured RPM and against the batch's share of it, the upstream's 429s
    and the most requests it saw in any rolling 60 s, and the interactive p99 during the
    drain against (a)'s.

Goals (issue 12): the upstream sees 0 429s and never more than `--rpm` in a window; the
batch drains at >= 95% of the rate it may use; interactive p99 within 10% of (a)'s.
`--quick` runs fewer lines and a shorter (a). `--skip-batch` runs (a) only.

    .venv/bin/python bench/batch_drain.py [--quick] [--lines N] [--rpm R] [--rate S]
                                          [--duration S] [--workers W] [--lanes] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import trio

from ingress.dev import free_port, start_private_redis

from load import percentile
from procs import (
    HOST,
    SLUG,
    SWITCHBOARD,
    UPSTREAM_KEY,
    UPSTREAM_KEY_ENV,
    UPSTREAM_MODEL,
    UPSTREAM_SCRIPT,
    Processes,
    child_env,
    create_key,
    find,
    http_ok,
    terminate_on_sigterm,
    upstream_stats,
    wait_until,
)

GRACE_S = 10.0  # in-flight interactive requests get this long after the load stops issuing
POLL_S = 1.0  # batches.retrieve
DONE = {"completed", "failed", "expired", "cancelled"}






def write_config(path: Path, redis_url: str, upstream_base: str, args: argparse.Namespace) -> None:
    path.write_text(f"""# written by bench/batch_drain.py for one benchmark run
redis_url = "{redis_url}"

[providers.fast]
kind = "openai"
base_url = "{upstream_base}"
api_key_env = "{UPSTREAM_KEY_ENV}"
max_concurrency = {args.concurrency}
max_queue = 100000
timeout_s = 30
max_retries = 0
{"" if args.no_pace else f"rpm = {args.rpm}"}

[[models]]
slug = "{SLUG}"
routes = [{{ provider = "fast", model = "{UPSTREAM_MODEL}" }}]

[limits]
request_timeout_s = 60

[batch]
interactive_share = {args.interactive_share}
max_lines = {max(args.lines, 1)}
""")


@dataclass
class Interactive:
    """One interactive run: latencies from each request's planned send time."""

    sent: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    sent_at: list[float] = field(default_factory=list)  # time.monotonic(), per latency

    def summary(self, since: float = -math.inf, until: float = math.inf) -> dict[str, Any]:
        """The figures of the requests sent between `since` and `until` (monotonic)."""
        ordered = sorted(latency for at, latency in zip(self.sent_at, self.latencies, strict=True)
                         if since <= at <= until)
        return {"sent": self.sent, "ok": len(ordered), "errors": dict(self.errors),
                "p50_ms": round(percentile(ordered, 50) * 1000, 2),
                "p99_ms": round(percentile(ordered, 99) * 1000, 2)}


async def interactive(url: str, secret: str, rate: float, duration: float,
                      stop: trio.Event | None = None) -> Interactive:
    """Chat completions at `rate`/s for `duration` s (or until `stop`), open loop."""
    out = Interactive()
    body = json.dumps({"model": SLUG, "messages": [{"role": "user", "content": "hi"}]}).encode()
    headers = {"authorization": f"Bearer {secret}", "content-type": "application/json"}
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(trust_env=False, timeout=60, limits=limits) as client:

        async def one(planned: float) -> None:
            try:
                response = await client.post(url, content=body, headers=headers)
                ok = response.status_code == 200
                problem = "" if ok else f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                problem = type(exc).__name__
            if problem:
                out.errors[problem] += 1
            else:
                out.latencies.append(trio.current_time() - planned)
                out.sent_at.append(time.monotonic() - (trio.current_time() - planned))

        start = trio.current_time()
        with trio.move_on_at(start + duration + GRACE_S) as scope:
            async with trio.open_nursery() as requests:
                for i in range(int(rate * duration)):
                    planned = start + i / rate
                    await trio.sleep_until(planned)
                    if stop is not None and stop.is_set():
                        scope.deadline = min(scope.deadline, trio.current_time() + GRACE_S)
                        break
                    out.sent += 1
                    requests.start_soon(one, planned)
        if scope.cancelled_caught:
            out.errors["cut off"] += out.sent - len(out.latencies) - sum(out.errors.values())
    return out


def batch_file(lines: int) -> bytes:
    return b"".join(json.dumps({
        "custom_id": f"line-{i}", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": SLUG, "messages": [{"role": "user", "content": f"line {i}"}],
                 "max_tokens": 16}}, separators=(",", ":")).encode() + b"\n"
        for i in range(lines))


async def drain(args: argparse.Namespace, base: str, secret: str) -> dict[str, Any]:
    """Part (b): upload and drain a batch while the interactive load runs."""
    http = httpx.AsyncClient(trust_env=False, timeout=300)
    client = openai.AsyncOpenAI(base_url=base + "/v1", api_key=secret, max_retries=0,
                                http_client=http)
    print(f"(b) uploading a batch of {args.lines} lines", flush=True)
    uploaded = await client.files.create(file=("batch.jsonl", batch_file(args.lines)),
                                         purpose="batch")
    batch = await client.batches.create(input_file_id=uploaded.id,
                                        endpoint="/v1/chat/completions", completion_window="24h")
    samples: list[tuple[float, int, str]] = []  # (monotonic, lines ended, status)
    created = time.monotonic()
    stop = trio.Event()
    load: list[Interactive] = []

    async def run_load() -> None:
        load.append(await interactive(base + "/v1/chat/completions", secret, args.rate,
                                      args.max_drain_s, stop))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_load)
        deadline = time.monotonic() + args.max_drain_s
        while True:
            batch = await client.batches.retrieve(batch.id)
            counts = batch.request_counts
            ended = (counts.completed + counts.failed) if counts else 0
            samples.append((time.monotonic(), ended, batch.status))
            if len(samples) % 30 == 0:
                print(f"    {batch.status}: {ended}/{args.lines} lines", flush=True)
            if batch.status in DONE or time.monotonic() > deadline:
                break
            await trio.sleep(POLL_S)
        stop.set()
    ended = (batch.request_counts.completed + batch.request_counts.failed) \
        if batch.request_counts else 0
    finished = batch.finalizing_at or batch.completed_at
    if batch.in_progress_at and finished and finished > batch.in_progress_at:
        minutes = (finished - batch.in_progress_at) / 60  # the batch's own timestamps (1 s)
    else:  # from the polls: the first with a line ended to the last
        running = [(t, n) for t, n, status in samples if n > 0]
        minutes = (running[-1][0] - running[0][0]) / 60 if len(running) > 1 else math.nan
    rate = ended / minutes if minutes else math.nan
    ids: Counter[str] = Counter()
    if batch.output_file_id:
        content = await client.files.content(batch.output_file_id)
        for line in content.text.splitlines():
            ids[json.loads(line)["custom_id"]] += 1
    await http.aclose()
    budget = args.rpm * (1 - args.interactive_share)
    return {"batch_id": batch.id, "status": batch.status,
            "completed": batch.request_counts.completed if batch.request_counts else 0,
            "failed": batch.request_counts.failed if batch.request_counts else 0,
            "output_custom_ids": len(ids), "duplicated_custom_ids": sum(1 for c in ids.values() if c > 1),
            "drain_minutes": round(minutes, 2), "lines_per_minute": round(rate, 1),
            "of_rpm": round(rate / args.rpm, 4), "of_batch_budget": round(rate / budget, 4),
            "with_interactive_of_rpm": round((rate + args.rate * 60) / args.rpm, 4),
            # The interactive figures while lines drain (in_progress), and over the whole
            # run from batches.create (upload validation and finalizing included).
            "interactive": load[0].summary(*drained(samples)) if load else {},
            "interactive_whole": load[0].summary(created) if load else {}}


def drained(samples: list[tuple[float, int, str]]) -> tuple[float, float]:
    """The monotonic times the batch was seen in_progress first and last."""
    times = [t for t, _, status in samples if status == "in_progress"]
    return (times[0], times[-1]) if times else (math.inf, -math.inf)


def start(args: argparse.Namespace, workdir: Path, processes: Processes) -> tuple[str, str, str]:
    """Redis, the rpm-limited upstream, ingress and workers; returns (ingress base, key,
    upstream base)."""
    redis_process, redis_port = start_private_redis(workdir / "redis")
    processes.add("redis", redis_process)
    redis_url = f"redis://{HOST}:{redis_port}/0"
    env = child_env(redis_url)
    upstream_port = free_port()
    processes.start("upstream", [sys.executable, str(UPSTREAM_SCRIPT), "--host", HOST,
                                 "--port", str(upstream_port), "--chunks", "8",
                                 "--api-key", UPSTREAM_KEY, "--rpm", str(args.rpm)], env)
    upstream_base = f"http://{HOST}:{upstream_port}/v1"
    wait_until("the fast upstream", lambda: http_ok(f"http://{HOST}:{upstream_port}/health"), processes)
    config = workdir / "switchboard.toml"
    write_config(config, redis_url, upstream_base, args)
    secret = create_key(config, env)
    port = free_port()
    processes.start("ingress", [str(SWITCHBOARD), "serve", "--config", str(config), "--host", HOST,
                                "--port", str(port), "--processes", "1"], env)
    for i in range(args.workers):
        # --lanes: the first worker takes interactive jobs only, the others batch lines only,
        # at a lower CPU priority (README, "How batches drain": lanes).
        lane = [] if not args.lanes else ["--lane", "interactive"] if i == 0 else \
            ["--lane", "batch", "--nice", str(args.batch_nice)]
        processes.start(f"worker{i}", [str(SWITCHBOARD), "worker", "--config", str(config),
                                       "--processes", "1", *lane], env)
        log = workdir / f"worker{i}.log"
        wait_until(f"worker {i}", lambda log=log: b'"worker_ready"' in log.read_bytes(), processes)  # type: ignore[misc]
    wait_until("switchboard ingress", lambda: http_ok(f"http://{HOST}:{port}/readyz"), processes)
    return f"http://{HOST}:{port}", secret, upstream_base


async def bench(args: argparse.Namespace, base: str, secret: str, upstream: str) -> dict[str, Any]:
    url = base + "/v1/chat/completions"
    await interactive(url, secret, args.rate, 3.0)  # warm-up (connections, caches)
    print(f"(a) interactive alone: {args.rate:g}/s for {args.duration:g}s", flush=True)
    alone = (await interactive(url, secret, args.rate, args.duration)).summary()
    print(f"    {alone}", flush=True)
    results: dict[str, Any] = {"interactive_alone": alone}
    if not args.skip_batch:
        results["drain"] = await drain(args, base, secret)
    results["upstream"] = upstream_stats(upstream)
    return results


def report(args: argparse.Namespace, results: dict[str, Any]) -> bool:
    alone, up = results["interactive_alone"], results["upstream"]
    print(f"\nrpm {args.rpm}, interactive_share {args.interactive_share}, interactive "
          f"{args.rate:g}/s, {args.workers} worker processes"
          + (f" (lanes: 1 interactive, the rest batch at nice {args.batch_nice})"
             if args.lanes else ""))
    print("\n| measure | value | goal |\n| --- | ---: | --- |")
    print(f"| (a) interactive alone p50 / p99 ms | {alone['p50_ms']} / {alone['p99_ms']} | - |")
    print(f"| (a) interactive errors | {sum(alone['errors'].values())} of {alone['sent']} | 0 |")
    ok = not alone["errors"]
    if "drain" in results:
        d = results["drain"]
        during = d["interactive"]
        ratio = during["p99_ms"] / alone["p99_ms"] if alone["p99_ms"] else float("nan")
        print(f"| (b) batch | {d['status']}, {d['completed']} completed, {d['failed']} failed, "
              f"{d['output_custom_ids']} custom_ids in the output ({d['duplicated_custom_ids']} twice) "
              f"| all {args.lines} once |")
        print(f"| (b) lines per minute over the drain ({d['drain_minutes']} min) | "
              f"{d['lines_per_minute']} ({d['of_rpm']:.1%} of rpm, {d['of_batch_budget']:.1%} of "
              f"the batch share) | >= 95% of what it may use |")
        print(f"| (b) batch + interactive upstream calls per minute | "
              f"{d['with_interactive_of_rpm']:.1%} of rpm | >= 95% |")
        print(f"| (b) interactive while lines drain ({during['ok']} requests) p50 / p99 ms | "
              f"{during['p50_ms']} / {during['p99_ms']} ({ratio:.2f}x) | p99 <= 1.10x |")
        whole = d["interactive_whole"]
        print(f"| (b) interactive from batches.create to the end (validation, finalizing) "
              f"p50 / p99 ms | {whole['p50_ms']} / {whole['p99_ms']} | - |")
        print(f"| (b) interactive errors | {sum(during['errors'].values())} of {during['sent']} | 0 |")
        ok = ok and d["status"] == "completed" and d["output_custom_ids"] == args.lines \
            and not d["duplicated_custom_ids"] and d["of_batch_budget"] >= 0.95 and ratio <= 1.10 \
            and not during["errors"]
    print(f"| upstream 429s | {up.get('throttled')} | 0 |")
    print(f"| upstream: most requests in one rolling 60 s | {up.get('max_in_window')} | <= {args.rpm} |")
    return ok and up.get("throttled") == 0 and up.get("max_in_window", 0) <= args.rpm


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=None, help="batch lines (default 50000; --quick 3000)")
    parser.add_argument("--rpm", type=int, default=6000,
                        help="the fake upstream's limit and the provider's rpm (default 6000)")
    parser.add_argument("--interactive-share", type=float, default=0.25,
                        help="[batch] interactive_share (default 0.25, the config's default)")
    parser.add_argument("--rate", type=float, default=20.0, help="interactive requests per second")
    parser.add_argument("--duration", type=float, default=None,
                        help="seconds of (a) (default 120; --quick 30)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--lanes", action="store_true",
                        help="worker 0 takes interactive jobs only, the others batch lines only "
                        "at nice --batch-nice (default: every worker takes both)")
    parser.add_argument("--batch-nice", type=int, default=19,
                        help="with --lanes: the batch workers' nice level (default 19)")
    parser.add_argument("--concurrency", type=int, default=256,
                        help="the provider's max_concurrency per worker process (default 256)")
    parser.add_argument("--max-drain-s", type=float, default=3600.0, help="give up on the drain after this")
    parser.add_argument("--quick", action="store_true", help="3000 lines and a 30 s (a)")
    parser.add_argument("--skip-batch", action="store_true", help="run (a) only")
    parser.add_argument("--no-pace", action="store_true",
                        help="leave the provider's rpm unset (what pacing costs; the batch then "
                             "meets the upstream's 429s)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--workdir", type=Path, default=None, help="keep configs and logs here")
    args = parser.parse_args(argv)
    args.lines = args.lines if args.lines is not None else 3000 if args.quick else 50_000
    args.duration = args.duration if args.duration is not None else 30.0 if args.quick else 120.0
    if min(args.lines, args.rpm, args.workers) < 1 or args.rate <= 0 or args.duration <= 0 \
            or not 0 <= args.interactive_share < 1:
        parser.error("--lines, --rpm, --workers, --rate and --duration must be positive, "
                     "--interactive-share in [0, 1)")
    with contextlib.ExitStack() as stack:
        if args.workdir:
            args.workdir.mkdir(parents=True, exist_ok=True)
            workdir = args.workdir.resolve()
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sb-batch-")))
        processes = Processes(workdir)
        try:
            with terminate_on_sigterm():
                print(f"Starting redis-server, the upstream (rpm {args.rpm}) and Switchboard "
                      f"({workdir})", flush=True)
                base, secret, upstream = start(args, workdir, processes)
                results = trio.run(bench, args, base, secret, upstream)
                ok = report(args, results)
                if args.json:
                    args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                     **results}, indent=2, default=asdict))
                return 0 if ok else 1
        except BaseException as exc:  # trio may wrap these in exception groups
            if find(exc, KeyboardInterrupt):
                print("\nbench: interrupted; stopping everything", file=sys.stderr)
                return 130
            failure = find(exc, RuntimeError) or find(exc, openai.OpenAIError)
            if failure is None:
                raise
            print(f"bench: {failure}", file=sys.stderr)
            return 1
        finally:
            processes.stop_all()


if __name__ == "__main__":
    sys.exit(main())
