"""Measuring every scenario on every path, with the processes' counters around it.

A `Bench` runs the scenarios (plain and streamed, one at a time and at --concurrency)
against each target in turn. Each measurement is a warm-up, then a snapshot of CPU
seconds, Redis command counts and upstream counters, the measured load, and a second
snapshot; the differences, divided by the requests done, go into its `Result`.
"""

from __future__ import annotations

import argparse
import contextlib
from dataclasses import dataclass, field

import trio

from load import Load, Result, Target, ms, percentile
from procs import Processes, cpu_seconds, redis_commandstats, tree_cpu_seconds, upstream_stats
from spy import Sampler
from wire import Connection


@dataclass(frozen=True)
class Scenario:
    name: str
    stream: bool
    concurrency: int
    requests: int


@dataclass
class Bench:
    args: argparse.Namespace
    processes: Processes
    redis_port: int
    targets: list[Target]
    upstream_base: str
    results: dict[str, dict[str, Result]] = field(default_factory=dict)

    def cpu_snapshot(self) -> dict[str, float | None]:
        snapshot = {"loadgen": cpu_seconds(None), "upstream": cpu_seconds(self.processes.pid("upstream")),
                    "redis": cpu_seconds(self.processes.pid("redis"))}
        # Whole process trees: `--processes N` makes ingress and worker supervisors of N
        # children, and the peers may fork too.
        for name in ("ingress", "worker", "litellm", "portkey"):
            if self.processes.has(name):
                snapshot[name] = tree_cpu_seconds(self.processes.pid(name))
        return snapshot

    def sampler(self, scenario: Scenario, target: Target) -> Sampler | None:
        """py-spy on the ingress and the worker while a Switchboard scenario runs
        (`--py-spy DIR`), else None."""
        if self.args.py_spy is None or target.name != "switchboard":
            return None
        stem = scenario.name.replace(" ", "-").replace("=", "")
        return Sampler({self.processes.pid(name): self.args.py_spy / f"{stem}-{name}.txt"
                        for name in ("ingress", "worker")},
                       subprocesses=max(self.args.ingress_processes, self.args.worker_processes) > 1)

    async def measure(self, scenario: Scenario, target: Target,
                      clients: list[Connection]) -> Result:
        load = Load(clients, target, scenario.stream, self.args.chunks)
        warmup = min(self.args.warmup, scenario.requests)
        if warmup:
            await load.run(warmup, scenario.concurrency, self.args.duration_cap)
        redis_commandstats_before = await trio.to_thread.run_sync(redis_commandstats, self.redis_port)
        upstream_before = await trio.to_thread.run_sync(upstream_stats, self.upstream_base)
        sampler = self.sampler(scenario, target)
        cpu_before = self.cpu_snapshot()
        try:
            latencies, firsts, errors, cut_off, wall = await load.run(
                scenario.requests, scenario.concurrency, self.args.duration_cap)
        finally:
            cpu_after = self.cpu_snapshot()
            if sampler is not None:
                await trio.to_thread.run_sync(sampler.stop)
        upstream_after = await trio.to_thread.run_sync(upstream_stats, self.upstream_base)
        redis_commandstats_after = await trio.to_thread.run_sync(redis_commandstats, self.redis_port)
        self.processes.check_alive()
        latencies.sort()
        firsts.sort()
        ok = len(latencies)
        result = Result(ok=ok, errors=dict(errors), cut_off=cut_off, wall_s=round(wall, 3),
                        rps=round(ok / wall, 1) if wall else 0.0,
                        p50_ms=ms(percentile(latencies, 50)), p90_ms=ms(percentile(latencies, 90)),
                        p99_ms=ms(percentile(latencies, 99)))
        result.upstream_connections = upstream_after["connections"] - upstream_before["connections"]
        result.upstream_requests = upstream_after["requests"] - upstream_before["requests"]
        if scenario.stream:
            result.ttfc_p50_ms = ms(percentile(firsts, 50))
            result.ttfc_p99_ms = ms(percentile(firsts, 99))
        done = ok + sum(errors.values())
        if done:
            for name, before in cpu_before.items():
                after = cpu_after[name]
                if before is not None and after is not None:
                    result.cpu_ms_per_request[name] = round((after - before) * 1000 / done, 3)
            for command, calls in sorted(redis_commandstats_after.items()):
                delta = calls - redis_commandstats_before.get(command, 0)
                if delta and command not in ("info",):
                    result.redis_calls_per_request[command] = round(delta / done, 2)
        return result

    async def run(self) -> None:
        args = self.args
        scenarios = []
        for stream, kind in ((False, "plain"), (True, "stream")):
            if args.serial_requests:
                scenarios.append(Scenario(f"{kind} c=1", stream, 1, args.serial_requests))
            scenarios += [Scenario(f"{kind} c={c}", stream, c, args.requests)
                          for c in args.concurrency if c > 1 or not args.serial_requests]
        async with contextlib.AsyncExitStack() as stack:
            clients: dict[str, list[Connection]] = {}
            for target in self.targets:
                clients[target.name] = [Connection(target.url, target.headers)
                                        for _ in range(max(args.concurrency))]
                for connection in clients[target.name]:
                    stack.push_async_callback(connection.aclose)
            for scenario in scenarios:
                self.results[scenario.name] = {}
                for target in self.targets:
                    print(f"  {scenario.name:<14} {target.name:<12}", end="", flush=True)
                    result = await self.measure(scenario, target, clients[target.name])
                    self.results[scenario.name][target.name] = result
                    problems = f"  errors={result.errors}" if result.errors else ""
                    if result.cut_off:
                        problems += f"  cut off={result.cut_off}"
                    print(f"{result.ok:>6} ok in {result.wall_s:6.2f}s  {result.rps:8.1f} req/s"
                          f"  p50 {result.p50_ms:7.2f} ms  p99 {result.p99_ms:7.2f} ms{problems}",
                          flush=True)
