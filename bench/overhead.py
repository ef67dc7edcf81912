"""How much does Switchboard add on top of calling the upstream directly?

One run starts everything it needs on 127.0.0.1 only: a private redis-server, the
fast fake upstream (bench/fast_upstream.py), and a real Switchboard deployment as
subprocesses (`switchboard serve` + `switchboard worker` with a temporary config that
routes one model slug to the fake upstream through a provider of kind "openai").
A load generator under trio (h11 on keep-alive connections, bench/wire.py) then runs the
same requests twice, once straight to the upstream ("direct") and once through the
gateway ("switchboard"):

- plain (non-streamed) completions, one at a time (c=1) and at --concurrency;
- streamed completions (--chunks content chunks + a finish chunk + a usage chunk +
  `[DONE]`), one at a time and at --concurrency.

It prints Markdown tables (requests/s, latency p50/p99, time to first chunk, CPU time
per request of every process, Redis commands per request) and the switchboard/direct
ratios, and with --json writes everything to a file. Every scenario is bounded by
--requests and by --duration-cap seconds; every subprocess is stopped at the end,
also on Ctrl-C and on errors.

    .venv/bin/python bench/overhead.py [--requests N] [--concurrency C] [--chunks K]
                                       [--duration-cap S] [--json results.json]
                                       [--litellm PATH] [--portkey PATH] [--peers]
                                       [--py-spy DIR]

With --litellm PATH (a `litellm` executable, installed in its own venv, never in the
project's), it also starts the LiteLLM proxy (one uvicorn worker, no database, a
temporary YAML config routing the same slug to the same fake upstream) and measures a
third path, "litellm", with the same requests and checks; its CPU is counted over its
whole process tree.

With --portkey PATH (the start script of an installed `@portkey-ai/gateway`, or the
folder holding it), it also starts Portkey's gateway under `node` and measures a fourth
path, "portkey", the same way (bench/peers.py: how it is run and told the upstream).
--peers is the shortcut for both peers as `bench/peers.py install` (make bench-peers)
put them in bench/.peers/. The run ends with the peak RSS of each path's process tree
(bench/rss.py).

With --py-spy DIR, py-spy samples the ingress and the worker during each Switchboard
scenario and the run ends with where their busy time went (bench/spy.py).

This file is the command line and the wiring; the pieces live next to it: procs.py
(subprocesses, configs, CPU and Redis accounting), load.py (the load generator and
answer checks), measure.py (scenarios and per-request counters), report.py (tables,
ratios, JSON), peers.py (installing and running the peer gateways) and rss.py (peak
RSS). The script is run by path, so its folder is sys.path[0] and they are imported as
top-level modules.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import trio

from ingress.dev import free_port, start_private_redis

from load import Target, smoke
from measure import Bench
from peers import (
    installed_paths,
    node_version,
    portkey_script,
    portkey_target,
    portkey_version,
    start_portkey,
)
from peers import log_findings as portkey_log_findings
from procs import (
    HOST,
    LITELLM_MASTER_KEY,
    SLUG,
    UPSTREAM_KEY,
    UPSTREAM_MODEL,
    UPSTREAM_SCRIPT,
    Processes,
    child_env,
    create_key,
    find,
    http_ok,
    start_litellm,
    switchboard_argv,
    terminate_on_sigterm,
    wait_until,
    write_config,
)
from report import (
    litellm_log_summary,
    litellm_version,
    log_summary,
    machine,
    report,
    summary,
    write_json,
)
from rss import peak_rss_mb, render
from spy import main as spy_main


def concurrencies(text: str) -> list[int]:
    """`--concurrency 16,64,256`: the levels, in order, each at least 1."""
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma list of integers: {text!r}") from None
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError("every concurrency must be at least 1")
    return levels


async def run_with_signals(bench: Bench) -> None:
    async def watch() -> None:
        with trio.open_signal_receiver(signal.SIGTERM) as signals:
            async for _ in signals:
                raise KeyboardInterrupt

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        await bench.run()
        nursery.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000,
                        help="measured requests per scenario and path at --concurrency (default 2000)")
    parser.add_argument("--concurrency", type=concurrencies, default=[32],
                        help="concurrent callers, one level or a comma list such as 16,64,256 "
                             "(default 32); c=1 is --serial-requests")
    parser.add_argument("--ingress-processes", type=int, default=1, metavar="N",
                        help="run `switchboard serve --processes N` (default 1)")
    parser.add_argument("--worker-processes", type=int, default=1, metavar="N",
                        help="run `switchboard worker --processes N` (default 1)")
    parser.add_argument("--chunks", type=int, default=16,
                        help="content chunks per streamed answer (default 16)")
    parser.add_argument("--duration-cap", type=float, default=20.0,
                        help="seconds after which a scenario stops issuing requests (default 20)")
    parser.add_argument("--serial-requests", type=int, default=300,
                        help="measured requests of the one-at-a-time (c=1) scenarios; 0 skips them")
    parser.add_argument("--upstream-latency-ms", type=float, default=0.0,
                        help="the fake upstream waits this long before answering (default 0)")
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0,
                        help="the fake upstream waits this long between chunks (default 0)")
    parser.add_argument("--warmup", type=int, default=100,
                        help="unmeasured requests before each measurement (default 100)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep config and process logs here (default: a temporary directory)")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR",
                        help="run ingress and worker under cProfile, writing DIR/ingress.prof and "
                             "DIR/worker.prof (slows them down: use for where, not how fast)")
    parser.add_argument("--py-spy", type=Path, default=None, metavar="DIR", dest="py_spy",
                        help="sample ingress and worker with py-spy during each Switchboard "
                             "scenario into DIR/<scenario>-<process>.txt, then print where the "
                             "time goes (bench/spy.py)")
    parser.add_argument("--litellm", type=Path, default=None, metavar="PATH",
                        help="also measure the LiteLLM proxy: PATH is its `litellm` executable "
                             "(installed in a separate venv)")
    parser.add_argument("--portkey", type=Path, default=None, metavar="PATH",
                        help="also measure Portkey's gateway: PATH is the start script of an "
                             "installed @portkey-ai/gateway (build/start-server.js) or its folder")
    parser.add_argument("--peers", action="store_true",
                        help="measure both peers as installed by bench/peers.py (make bench-peers)")
    args = parser.parse_args(argv)
    if args.peers:
        try:
            args.litellm, args.portkey = installed_paths()
        except RuntimeError as exc:
            parser.error(str(exc))
    if args.portkey is not None:
        try:
            args.portkey = portkey_script(args.portkey)
        except RuntimeError as exc:
            parser.error(str(exc))
    if args.litellm is not None and not os.access(args.litellm, os.X_OK):
        parser.error(f"--litellm {args.litellm}: not an executable file")
    if (min(args.requests, *args.concurrency, args.chunks, args.ingress_processes,
            args.worker_processes) < 1 or args.duration_cap <= 0):
        parser.error("--requests, --concurrency, --chunks, the process counts and "
                     "--duration-cap must be positive")
    if min(args.serial_requests, args.warmup, args.upstream_latency_ms, args.chunk_delay_ms) < 0:
        parser.error("--serial-requests, --warmup and the delays cannot be negative")

    with contextlib.ExitStack() as stack:
        if args.workdir:
            args.workdir.mkdir(parents=True, exist_ok=True)
            workdir = args.workdir.resolve()
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sb-bench-")))
        if args.profile:
            args.profile.mkdir(parents=True, exist_ok=True)
        if args.py_spy:
            args.py_spy.mkdir(parents=True, exist_ok=True)
        processes = Processes(workdir)
        try:
            with terminate_on_sigterm():
                return run(args, workdir, processes)
        except BaseException as exc:  # trio may wrap these in exception groups
            if find(exc, KeyboardInterrupt):
                print("\nbench: interrupted; stopping everything", file=sys.stderr)
                return 130
            failure = find(exc, RuntimeError)
            if failure is None:
                raise
            print(f"bench: {failure}", file=sys.stderr)
            return 1
        finally:
            processes.stop_all()
    return 0




def run(args: argparse.Namespace, workdir: Path, processes: Processes) -> int:
    print(f"Starting redis-server, the fast upstream and Switchboard (work dir {workdir})", flush=True)
    redis_process, redis_port = start_private_redis(workdir / "redis")
    processes.add("redis", redis_process)
    redis_url = f"redis://{HOST}:{redis_port}/0"
    env = child_env(redis_url)

    upstream_port = free_port()
    processes.start("upstream", [sys.executable, str(UPSTREAM_SCRIPT), "--host", HOST,
                                 "--port", str(upstream_port), "--chunks", str(args.chunks),
                                 "--latency-ms", str(args.upstream_latency_ms),
                                 "--chunk-delay-ms", str(args.chunk_delay_ms),
                                 "--api-key", UPSTREAM_KEY], env)
    upstream_base = f"http://{HOST}:{upstream_port}/v1"
    wait_until("the fast upstream", lambda: http_ok(f"http://{HOST}:{upstream_port}/health"), processes)

    config = workdir / "switchboard.toml"
    write_config(config, redis_url, upstream_base, max(args.concurrency))
    secret = create_key(config, env)
    ingress_port = free_port()
    processes.start("ingress", switchboard_argv(
        "serve", args, "--config", str(config), "--host", HOST, "--port", str(ingress_port),
        "--processes", str(args.ingress_processes)), env)
    processes.start("worker", switchboard_argv(
        "worker", args, "--config", str(config), "--processes", str(args.worker_processes)), env)
    worker_log = workdir / "worker.log"
    wait_until("switchboard worker", lambda: worker_log.read_bytes().count(b'"worker_ready"')
               >= args.worker_processes, processes)
    wait_until("switchboard ingress", lambda: http_ok(f"http://{HOST}:{ingress_port}/readyz"), processes)
    litellm_port = start_litellm(args, workdir, processes, upstream_base) if args.litellm else None
    portkey_port = start_portkey(args.portkey, processes) if args.portkey else None

    targets = [
        Target("direct", f"{upstream_base}/chat/completions",
               {"authorization": f"Bearer {UPSTREAM_KEY}", "content-type": "application/json"},
               UPSTREAM_MODEL),
        Target("switchboard", f"http://{HOST}:{ingress_port}/v1/chat/completions",
               {"authorization": f"Bearer {secret}", "content-type": "application/json"}, SLUG),
    ]
    if litellm_port is not None:
        targets.append(Target(
            "litellm", f"http://{HOST}:{litellm_port}/v1/chat/completions",
            {"authorization": f"Bearer {LITELLM_MASTER_KEY}", "content-type": "application/json"},
            SLUG))
    if portkey_port is not None:
        targets.append(portkey_target(portkey_port, upstream_base))
    for target in targets:
        smoke(target, args.chunks)

    info = machine(redis_port)
    if args.litellm:
        info["litellm"] = litellm_version(args.litellm)
    if args.portkey:
        info["portkey"] = portkey_version(args.portkey)
        info["node"] = node_version()
    print(f"Machine: {info.get('nproc')} CPUs ({info.get('cpu', '?')}), Python {info['python']}, "
          f"redis {info.get('redis', '?')}, load average {' '.join(info.get('loadavg_at_start', []))}")
    print(f"Switchboard: {args.ingress_processes} ingress and {args.worker_processes} worker "
          f"process(es)")
    print(f"Load: {args.requests} requests at concurrency {','.join(map(str, args.concurrency))}, "
          f"{args.serial_requests} at concurrency 1, {args.chunks} chunks per stream, "
          f"upstream delays {args.upstream_latency_ms:g} ms + {args.chunk_delay_ms:g} ms/chunk, "
          f"warm-up {args.warmup}, cap {args.duration_cap:g}s per measurement\n", flush=True)
    bench = Bench(args, processes, redis_port, targets, upstream_base)
    started = time.monotonic()
    trio.run(run_with_signals, bench)
    elapsed = time.monotonic() - started
    peak_rss = peak_rss_mb({name: processes.pid(name) for name in
                            ("upstream", "ingress", "worker", "redis", "litellm", "portkey")
                            if processes.has(name)})

    table, ratios = report(bench.results)
    print("\n" + table + "\n\n" + render(peak_rss))
    print("\nSummary (CPU: each path's own process tree, Switchboard's Redis included; "
          "direct: the fake upstream):\n\n" + summary(bench.results, peak_rss))
    findings = log_summary([workdir / "ingress.log", workdir / "worker.log", workdir / "upstream.log"])
    if findings:
        print("\nUnusual log lines (ingress/worker/upstream):")
        for finding in findings:
            print("  " + finding)
    if args.litellm:
        for finding in litellm_log_summary(workdir / "litellm.log"):
            print("  litellm: " + finding)
    if args.portkey:
        for finding in portkey_log_findings(workdir / "portkey.log"):
            print("  portkey: " + finding)
    print(f"\nMeasured in {elapsed:.1f}s.")
    if args.py_spy:
        print("\nWhere the time goes (py-spy):\n")
        spy_main([str(args.py_spy)])
    if args.json:
        write_json(args, info, bench.results, ratios, findings, peak_rss)
        print(f"Wrote {args.json}")
    failed = any(r.errors or r.cut_off for by_path in bench.results.values() for r in by_path.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
