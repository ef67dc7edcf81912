"""How much does Switchboard add on top of calling the upstream directly?

One run starts everything it needs on 127.0.0.1 only: a private redis-server, the
fast fake upstream (bench/fast_upstream.py), and a real Switchboard deployment as
subprocesses (`switchboard serve` + `switchboard worker` with a temporary config that
routes one model slug to the fake upstream through a provider of kind "openai").
An httpx load generator under trio then runs the same requests twice, once straight
to the upstream ("direct") and once through the gateway ("switchboard"):

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
                                       [--litellm PATH]

With --litellm PATH (a `litellm` executable, installed in its own venv, never in the
project's), it also starts the LiteLLM proxy (one uvicorn worker, no database, a
temporary YAML config routing the same slug to the same fake upstream) and measures a
third path, "litellm", with the same requests and checks; its CPU is counted over its
whole process tree.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib.metadata
import json
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec
import trio

from ingress.dev import free_port, start_private_redis

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
SWITCHBOARD = VENV_BIN / "switchboard"
UPSTREAM_SCRIPT = Path(__file__).resolve().with_name("fast_upstream.py")
HOST = "127.0.0.1"
SLUG = "bench-fast"
UPSTREAM_MODEL = "fast-upstream-model"
UPSTREAM_KEY_ENV = "SB_BENCH_UPSTREAM_KEY"
UPSTREAM_KEY = "sk-bench-upstream-not-a-secret"
PROMPT = "Say hello to the benchmark"
WORDS = "The quick brown fox jumps over the lazy dog while the gateway relays every token".split()
GRACE_S = 5.0  # after the duration cap, in-flight requests get this long before they are cut
STARTUP_S = 30.0
EXPECTED_LINES = ("Running on http", "fast_upstream listening on")  # start-up banners
PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")
LITELLM_MASTER_KEY = "sk-bench-master"
LITELLM_STARTUP_S = 120.0  # LiteLLM imports a lot before it listens


# ---------------------------------------------------------------------------------------
# Subprocesses


def _die_with_parent() -> None:
    """Linux: the child gets SIGTERM if the benchmark itself is killed."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Processes:
    """The subprocesses of one run, stopped in reverse order of start."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.running: list[tuple[str, subprocess.Popen[bytes], Path | None]] = []
        self.groups: set[str] = set()  # signalled as a whole process group (own session)

    def add(self, name: str, process: subprocess.Popen[bytes], log: Path | None = None) -> None:
        self.running.append((name, process, log))

    def start(self, name: str, argv: list[str], env: dict[str, str], *,
              group: bool = False) -> subprocess.Popen[bytes]:
        log = self.workdir / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                cwd=ROOT, start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
        self.add(name, process, log)
        if group:
            self.groups.add(name)
        return process

    def pid(self, name: str) -> int:
        return next(p.pid for n, p, _ in self.running if n == name)

    def has(self, name: str) -> bool:
        return any(n == name for n, _, _ in self.running)

    def _signal(self, name: str, process: subprocess.Popen[bytes], signum: int) -> None:
        if name in self.groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signum)  # its own session: pgid == pid
        else:
            process.send_signal(signum)

    def check_alive(self) -> None:
        for name, process, log in self.running:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with status {process.returncode}"
                                   + (f"; last log lines:\n{tail(log)}" if log else ""))

    def stop_all(self) -> None:
        """SIGINT to our Python children (a clean exit, which lets --profile write its
        files), SIGTERM to redis-server; SIGKILL whatever is left after 10 seconds."""
        for name, process, log in reversed(self.running):
            if process.poll() is None:
                self._signal(name, process, signal.SIGINT if log is not None else signal.SIGTERM)
        deadline = time.monotonic() + 10
        for name, process, _ in reversed(self.running):
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                print(f"bench: {name} did not stop on SIGTERM; killing it", file=sys.stderr)
                if name in self.groups:
                    self._signal(name, process, signal.SIGKILL)
                else:
                    process.kill()
                process.wait(timeout=5)
            if name in self.groups:  # children that outlived their parent
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)
        self.running.clear()


def tail(path: Path | None, lines: int = 20) -> str:
    if path is None or not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def wait_until(what: str, ready: Callable[[], bool], processes: Processes,
               timeout: float = STARTUP_S) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        processes.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} was not ready within {timeout:.0f}s")
        time.sleep(0.05)


def http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


def child_env(redis_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in PROXY_VARS}
    env.update({"REDIS_URL": redis_url, UPSTREAM_KEY_ENV: UPSTREAM_KEY,
                "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"})
    return env


def write_config(path: Path, redis_url: str, upstream_base: str, concurrency: int) -> None:
    path.write_text(f"""# written by bench/overhead.py for one benchmark run
redis_url = "{redis_url}"

[providers.fast]
kind = "openai"
base_url = "{upstream_base}"
api_key_env = "{UPSTREAM_KEY_ENV}"
max_concurrency = {max(256, concurrency)}
max_queue = 100000
timeout_s = 30
max_retries = 0

[[models]]
slug = "{SLUG}"
routes = [{{ provider = "fast", model = "{UPSTREAM_MODEL}" }}]

[limits]
request_timeout_s = 60
""")


def litellm_env() -> dict[str, str]:
    """LiteLLM's environment: no proxies, no Redis or database URL, no remote cost map."""
    env = {k: v for k, v in os.environ.items()
           if k not in PROXY_VARS and not k.startswith(("REDIS_", "DATABASE_", "LITELLM_"))}
    env.update({"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
                "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # do not fetch the price list from GitHub
                "LITELLM_TELEMETRY": "False"})
    return env


def write_litellm_config(path: Path, upstream_base: str) -> None:
    """One model, the same slug and upstream as Switchboard's; no database, no callbacks."""
    q = json.dumps  # a JSON string is a YAML string
    path.write_text(f"""# written by bench/overhead.py for one benchmark run
model_list:
  - model_name: {q(SLUG)}
    litellm_params:
      model: {q("openai/" + UPSTREAM_MODEL)}
      api_base: {q(upstream_base)}
      api_key: {q(UPSTREAM_KEY)}
litellm_settings:
  telemetry: false
  set_verbose: false
  num_retries: 0
general_settings:
  master_key: {q(LITELLM_MASTER_KEY)}
  disable_spend_logs: true
""")


# ---------------------------------------------------------------------------------------
# Measuring processes: CPU time from /proc, Redis command counts from INFO commandstats


CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds of a process (this one when pid is None); Linux only."""
    if pid is None:
        return time.process_time()
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def tree_cpu_seconds(root: int) -> float | None:
    """User + system CPU seconds of `root` and all its descendants, including children
    already exited and reaped (each process's cutime + cstime); Linux only."""
    children: dict[int, list[int]] = {}
    times: dict[int, float] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        pid = int(entry.name)
        children.setdefault(int(fields[1]), []).append(pid)
        times[pid] = sum(int(f) for f in fields[11:15]) / CLOCK_TICKS
    if root not in times:
        return None
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += times.get(pid, 0.0)
        todo.extend(children.get(pid, ()))
    return total


def redis_command(port: int, *words: str) -> bytes:
    """Send one inline command to the private Redis; return the reply's payload."""
    with socket.create_connection((HOST, port), timeout=5) as sock:
        sock.sendall((" ".join(words) + "\r\n").encode())
        data = b""
        while b"\r\n" not in data:
            data += sock.recv(65536)
        first, _, rest = data.partition(b"\r\n")
        if not first.startswith(b"$"):
            return first
        size = int(first[1:])
        while len(rest) < size:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
        return rest[:size]


def redis_commandstats(port: int) -> dict[str, int]:
    stats: dict[str, int] = {}
    for line in redis_command(port, "INFO", "commandstats").decode().splitlines():
        if line.startswith("cmdstat_"):
            name, _, values = line.partition(":")
            calls = dict(item.split("=", 1) for item in values.split(","))
            stats[name.removeprefix("cmdstat_")] = int(calls["calls"])
    return stats


# ---------------------------------------------------------------------------------------
# The load generator


@dataclass
class Result:
    """One (scenario, path) measurement."""

    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    cut_off: int = 0  # in flight when the duration cap + grace ran out
    wall_s: float = 0.0
    rps: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    ttfc_p50_ms: float | None = None
    ttfc_p99_ms: float | None = None
    cpu_ms_per_request: dict[str, float] = field(default_factory=dict)
    redis_calls_per_request: dict[str, float] = field(default_factory=dict)
    upstream_connections: int = 0  # new upstream connections that carried measured requests
    upstream_requests: int = 0


@dataclass(frozen=True)
class Target:
    name: str  # "direct" | "switchboard" | "litellm"
    url: str
    headers: dict[str, str]
    model: str


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (q in 0..100)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


class Load:
    """Runs one scenario against one target: a closed loop of callers.

    Caller i uses `clients[i]`, an AsyncClient that holds one keep-alive connection:
    one AsyncClient shared by 32 callers spends most of its time in its connection
    pool (httpcore), which made the load generator, not the server, the bottleneck.
    """

    def __init__(self, clients: list[httpx.AsyncClient], target: Target, stream: bool,
                 chunks: int) -> None:
        self.clients = clients
        self.target = target
        self.stream = stream
        self.chunks = chunks
        body: dict[str, Any] = {"model": target.model,
                                "messages": [{"role": "user", "content": PROMPT}]}
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        self.body = msgspec.json.encode(body)
        self.expected_text = "".join(WORDS[i % len(WORDS)] if i == 0 else " " + WORDS[i % len(WORDS)]
                                     for i in range(chunks))

    async def run(self, requests: int, concurrency: int, cap_s: float) -> tuple[
            list[float], list[float], Counter[str], int, float]:
        latencies: list[float] = []
        firsts: list[float] = []
        errors: Counter[str] = Counter()
        issued = 0
        in_flight = 0
        started = time.perf_counter()
        stop_issuing = started + cap_s

        async def caller(client: httpx.AsyncClient) -> None:
            nonlocal issued, in_flight
            while issued < requests and time.perf_counter() < stop_issuing:
                issued += 1
                in_flight += 1
                t0 = time.perf_counter()
                try:
                    problem, first = await (self._stream_once(client, t0) if self.stream
                                            else self._plain_once(client))
                except httpx.HTTPError as exc:
                    problem, first = type(exc).__name__, None
                finally:
                    in_flight -= 1
                if problem:
                    errors[problem] += 1
                else:
                    latencies.append(time.perf_counter() - t0)
                    if first is not None:
                        firsts.append(first - t0)

        with trio.move_on_after(cap_s + GRACE_S):
            async with trio.open_nursery() as nursery:
                for client in self.clients[:concurrency]:
                    nursery.start_soon(caller, client)
        wall = time.perf_counter() - started
        return latencies, firsts, errors, in_flight, wall

    async def _plain_once(self, client: httpx.AsyncClient) -> tuple[str | None, None]:
        response = await client.post(self.target.url, content=self.body,
                                          headers=self.target.headers)
        if response.status_code != 200:
            return f"HTTP {response.status_code}", None
        try:
            answer = msgspec.json.decode(response.content)
            text = answer["choices"][0]["message"]["content"]
        except (msgspec.DecodeError, KeyError, IndexError, TypeError):
            return "malformed body", None
        if text != self.expected_text:
            return "wrong content", None
        return None, None

    async def _stream_once(self, client: httpx.AsyncClient, t0: float) -> tuple[str | None, float | None]:
        first: float | None = None
        events = 0
        done = False
        parts: list[str] = []
        async with client.stream("POST", self.target.url, content=self.body,
                                      headers=self.target.headers) as response:
            if response.status_code != 200:
                await response.aread()
                return f"HTTP {response.status_code}", None
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if first is None:
                    first = time.perf_counter()
                if done:
                    return "data after [DONE]", None
                if data == "[DONE]":
                    done = True
                    continue
                try:
                    chunk = msgspec.json.decode(data)
                except msgspec.DecodeError:
                    return "malformed chunk", None
                if "error" in chunk:
                    return "error event in stream", None
                events += 1
                for choice in chunk.get("choices") or ():
                    parts.append((choice.get("delta") or {}).get("content") or "")
        if not done:
            return "stream ended without [DONE]", None
        if events != self.chunks + 2:  # content chunks + finish chunk + usage chunk
            return f"stream had {events} chunks, not {self.chunks + 2}", None
        if "".join(parts) != self.expected_text:
            return "wrong stream content", None
        return None, first


@dataclass(frozen=True)
class Scenario:
    name: str
    stream: bool
    concurrency: int
    requests: int


def upstream_stats(base: str) -> dict[str, int]:
    """The fast upstream's counters (served completions, connections that carried them)."""
    response = httpx.get(base.removesuffix("/v1") + "/stats", timeout=5, trust_env=False)
    return {k: int(v) for k, v in response.json().items()}


@dataclass
class Bench:
    args: argparse.Namespace
    processes: Processes
    redis_port: int
    targets: list[Target]
    upstream_base: str
    results: dict[str, dict[str, Result]] = field(default_factory=dict)

    def cpu_snapshot(self) -> dict[str, float | None]:
        pids: dict[str, int | None] = {"loadgen": None}
        for name in ("upstream", "ingress", "worker", "redis"):
            pids[name] = self.processes.pid(name)
        snapshot = {name: cpu_seconds(pid) for name, pid in pids.items()}
        if self.processes.has("litellm"):
            snapshot["litellm"] = tree_cpu_seconds(self.processes.pid("litellm"))
        return snapshot

    async def measure(self, scenario: Scenario, target: Target,
                      clients: list[httpx.AsyncClient]) -> Result:
        load = Load(clients, target, scenario.stream, self.args.chunks)
        warmup = min(self.args.warmup, scenario.requests)
        if warmup:
            await load.run(warmup, scenario.concurrency, self.args.duration_cap)
        redis_commandstats_before = await trio.to_thread.run_sync(redis_commandstats, self.redis_port)
        upstream_before = await trio.to_thread.run_sync(upstream_stats, self.upstream_base)
        cpu_before = self.cpu_snapshot()
        latencies, firsts, errors, cut_off, wall = await load.run(
            scenario.requests, scenario.concurrency, self.args.duration_cap)
        cpu_after = self.cpu_snapshot()
        upstream_after = await trio.to_thread.run_sync(upstream_stats, self.upstream_base)
        redis_commandstats_after = await trio.to_thread.run_sync(redis_commandstats, self.redis_port)
        self.processes.check_alive()
        latencies.sort()
        firsts.sort()
        ok = len(latencies)
        result = Result(ok=ok, errors=dict(errors), cut_off=cut_off, wall_s=round(wall, 3),
                        rps=round(ok / wall, 1) if wall else 0.0,
                        p50_ms=ms(percentile(latencies, 50)), p99_ms=ms(percentile(latencies, 99)))
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
        if args.serial_requests:
            scenarios.append(Scenario("plain c=1", False, 1, args.serial_requests))
        scenarios.append(Scenario(f"plain c={args.concurrency}", False, args.concurrency, args.requests))
        if args.serial_requests:
            scenarios.append(Scenario("stream c=1", True, 1, args.serial_requests))
        scenarios.append(Scenario(f"stream c={args.concurrency}", True, args.concurrency, args.requests))
        async with contextlib.AsyncExitStack() as stack:
            clients: dict[str, list[httpx.AsyncClient]] = {}
            for target in self.targets:
                clients[target.name] = [
                    await stack.enter_async_context(httpx.AsyncClient(
                        limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
                        timeout=httpx.Timeout(30.0), trust_env=False))
                    for _ in range(args.concurrency)]
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


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2) if not math.isnan(seconds) else math.nan


# ---------------------------------------------------------------------------------------
# Reporting


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return None
    return round(a / b, 2)


def fmt(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def compare(s: Result, d: Result) -> dict[str, Any]:
    """Path s relative to path d: ratios, and s minus d in milliseconds."""
    return {
        "rps": ratio(s.rps, d.rps), "p50": ratio(s.p50_ms, d.p50_ms),
        "p99": ratio(s.p99_ms, d.p99_ms), "ttfc_p50": ratio(s.ttfc_p50_ms, d.ttfc_p50_ms),
        "ttfc_p99": ratio(s.ttfc_p99_ms, d.ttfc_p99_ms),
        "added_p50_ms": round(s.p50_ms - d.p50_ms, 2),
        "added_ttfc_p50_ms": (round(s.ttfc_p50_ms - d.ttfc_p50_ms, 2)
                              if s.ttfc_p50_ms is not None and d.ttfc_p50_ms is not None
                              else None)}


# (JSON key, title, numerator path, denominator path)
COMPARISONS = [
    ("ratios_switchboard_over_direct", "Switchboard ÷ direct", "switchboard", "direct"),
    ("ratios_litellm_over_direct", "LiteLLM ÷ direct", "litellm", "direct"),
    ("ratios_switchboard_over_litellm", "Switchboard ÷ LiteLLM", "switchboard", "litellm"),
]


def report(results: dict[str, dict[str, Result]]) -> tuple[str, dict[str, dict[str, dict[str, Any]]]]:
    """The Markdown tables, and {JSON key: {scenario: comparison}} of the path pairs measured."""
    lines = ["| scenario | path | ok | errors | req/s | p50 ms | p99 ms | TTFC p50 ms | TTFC p99 ms |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    all_ratios: dict[str, dict[str, dict[str, Any]]] = {}
    for scenario, by_path in results.items():
        for path, r in by_path.items():
            errors = sum(r.errors.values()) + r.cut_off
            lines.append(f"| {scenario} | {path} | {r.ok} | {errors} | {fmt(r.rps, 1)} | {fmt(r.p50_ms)}"
                         f" | {fmt(r.p99_ms)} | {fmt(r.ttfc_p50_ms)} | {fmt(r.ttfc_p99_ms)} |")
    for key, title, num, den in COMPARISONS:
        ratios = {scenario: compare(by_path[num], by_path[den]) for scenario, by_path in results.items()
                  if num in by_path and den in by_path}
        if not ratios:
            continue
        all_ratios[key] = ratios
        lines += ["", f"{title} (req/s below 1 = slower; latency above 1 = slower"
                  + (f"; added = {num} minus {den}" if den != "direct" else "") + "):", "",
                  "| scenario | req/s | p50 | p99 | TTFC p50 | TTFC p99 | added p50 ms | added TTFC p50 ms |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for scenario, q in ratios.items():
            lines.append(f"| {scenario} | {fmt(q['rps'])} | {fmt(q['p50'])} | {fmt(q['p99'])}"
                         f" | {fmt(q['ttfc_p50'])} | {fmt(q['ttfc_p99'])} | {fmt(q['added_p50_ms'])}"
                         f" | {fmt(q['added_ttfc_p50_ms'])} |")
    names = ["loadgen", "upstream", "ingress", "worker", "redis"]
    if any("litellm" in r.cpu_ms_per_request for by_path in results.values() for r in by_path.values()):
        names.append("litellm")
    lines += ["", "CPU time per request, ms (user+system, from /proc; loadgen = this script"
              + ("; litellm = its whole process tree" if "litellm" in names else "") + "), and "
              "upstream requests and new upstream connections during the measurement:", "",
              "| scenario | path | " + " | ".join(names) + " | total | upstream requests"
              " | upstream connections |",
              "| --- | --- | " + " | ".join("---:" for _ in names) + " | ---: | ---: | ---: |"]
    for scenario, by_path in results.items():
        for path, r in by_path.items():
            cpu = r.cpu_ms_per_request
            lines.append(f"| {scenario} | {path} | " + " | ".join(fmt(cpu.get(n), 3) for n in names)
                         + f" | {fmt(sum(cpu.values()), 3)} | {r.upstream_requests}"
                         f" | {r.upstream_connections} |")
    commands = sorted({c for by_path in results.values() for c in
                       by_path.get("switchboard", Result()).redis_calls_per_request})
    if commands:
        lines += ["", "Redis commands per request through Switchboard (INFO commandstats; "
                  "commands run inside Lua scripts and MULTI are counted too):", "",
                  "| scenario | " + " | ".join(c.replace("|", " ") for c in commands) + " |",
                  "| --- | " + " | ".join("---:" for _ in commands) + " |"]
        for scenario, by_path in results.items():
            calls = by_path["switchboard"].redis_calls_per_request if "switchboard" in by_path else {}
            lines.append(f"| {scenario} | " + " | ".join(fmt(calls.get(c)) for c in commands) + " |")
    return "\n".join(lines), all_ratios


def machine(redis_port: int | None) -> dict[str, Any]:
    info: dict[str, Any] = {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_count": os.cpu_count(), "python": platform.python_version(),
        "platform": platform.platform()}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError):
        info["loadavg_at_start"] = Path("/proc/loadavg").read_text().split()[:3]
    for package in ("trio", "httpx", "hypercorn", "quart-trio", "coredis", "msgspec"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            info[package] = importlib.metadata.version(package)
    if redis_port:
        with contextlib.suppress(OSError, ValueError):
            for line in redis_command(redis_port, "INFO", "server").decode().splitlines():
                if line.startswith("redis_version:"):
                    info["redis"] = line.split(":", 1)[1].strip()
    return info


def log_summary(paths: list[Path]) -> list[str]:
    """Anything unusual the gateway logged: non-200 requests, error events, tracebacks."""
    findings: Counter[str] = Counter()
    for path in paths:
        for line in path.read_text(errors="replace").splitlines():
            try:
                event = msgspec.json.decode(line)
            except msgspec.DecodeError:
                if line.strip() and not any(known in line for known in EXPECTED_LINES):
                    findings[f"{path.stem}: non-JSON line: {line.strip()[:160]}"] += 1
                continue
            if not isinstance(event, dict):
                continue
            kind = event.get("event")
            if kind in ("request", "job"):
                if event.get("status", 200) != 200 or event.get("outcome") not in (None, "done"):
                    findings[f"{path.stem}: {kind} status={event.get('status')} "
                             f"outcome={event.get('outcome')}"] += 1
            elif kind not in ("worker_ready",):
                findings[f"{path.stem}: {kind} {msgspec.json.encode(event.get('error', '')).decode()}"] += 1
    return [f"{count} x {text}" for text, count in findings.most_common(20)]


# ---------------------------------------------------------------------------------------
# Setting up and running


@contextlib.contextmanager
def terminate_on_sigterm() -> Iterator[None]:
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


async def run_with_signals(bench: Bench) -> None:
    async def watch() -> None:
        with trio.open_signal_receiver(signal.SIGTERM) as signals:
            async for _ in signals:
                raise KeyboardInterrupt

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        await bench.run()
        nursery.cancel_scope.cancel()


def create_key(config: Path, env: dict[str, str]) -> str:
    done = subprocess.run([str(SWITCHBOARD), "keys", "create", "--config", str(config),
                           "--org", "bench", "--name", "overhead benchmark"],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=STARTUP_S)
    if done.returncode != 0 or not done.stdout.strip():
        raise RuntimeError(f"switchboard keys create failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout.strip().splitlines()[-1].strip()


def smoke(target: Target, chunks: int) -> None:
    """One plain and one streamed request, checked, before any load."""

    async def check() -> None:
        async with httpx.AsyncClient(timeout=10, trust_env=False) as client:
            for stream in (False, True):
                load = Load([client], target, stream, chunks)
                _, _, errors, _, _ = await load.run(1, 1, 10)
                if errors:
                    raise RuntimeError(f"{target.name}: the first {'streamed' if stream else 'plain'} "
                                       f"request failed: {dict(errors)}")

    trio.run(check)


def switchboard_argv(verb: str, args: argparse.Namespace, *rest: str) -> list[str]:
    """The command line of one Switchboard process, under cProfile with --profile."""
    if args.profile is None:
        return [str(SWITCHBOARD), verb, *rest]
    out = args.profile.resolve() / f"{'ingress' if verb == 'serve' else verb}.prof"
    return [sys.executable, "-m", "cProfile", "-o", str(out), str(SWITCHBOARD), verb, *rest]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000,
                        help="measured requests per scenario and path at --concurrency (default 2000)")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent callers (default 32)")
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
    parser.add_argument("--litellm", type=Path, default=None, metavar="PATH",
                        help="also measure the LiteLLM proxy: PATH is its `litellm` executable "
                             "(installed in a separate venv)")
    args = parser.parse_args(argv)
    if args.litellm is not None and not os.access(args.litellm, os.X_OK):
        parser.error(f"--litellm {args.litellm}: not an executable file")
    if min(args.requests, args.concurrency, args.chunks) < 1 or args.duration_cap <= 0:
        parser.error("--requests, --concurrency, --chunks and --duration-cap must be positive")
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


def find(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    """`exc` itself or the first exception of `kind` inside (nested) exception groups."""
    if isinstance(exc, kind):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = find(inner, kind)
            if found is not None:
                return found
    return None


def start_litellm(args: argparse.Namespace, workdir: Path, processes: Processes,
                  upstream_base: str) -> int:
    """Start the LiteLLM proxy (one uvicorn worker, own process group); return its port."""
    config = workdir / "litellm.yaml"
    write_litellm_config(config, upstream_base)
    port = free_port()
    print(f"Starting the LiteLLM proxy ({args.litellm})", flush=True)
    processes.start("litellm", [str(args.litellm), "--config", str(config), "--host", HOST,
                                "--port", str(port), "--num_workers", "1"], litellm_env(), group=True)
    wait_until("the LiteLLM proxy", lambda: http_ok(f"http://{HOST}:{port}/health/liveliness"),
               processes, timeout=LITELLM_STARTUP_S)
    return port


def litellm_version(executable: Path) -> str:
    """The version of the litellm package next to `executable` (its venv's site-packages)."""
    for site in sorted(executable.resolve().parent.parent.glob("lib/python*/site-packages")):
        for dist in importlib.metadata.distributions(path=[str(site)]):
            if dist.metadata["Name"] == "litellm":
                return dist.version
    return "?"


def litellm_log_summary(path: Path) -> list[str]:
    """Non-200 access-log lines, errors and tracebacks in LiteLLM's (plain text) log."""
    findings: Counter[str] = Counter()
    if path.exists():
        for line in path.read_text(errors="replace").splitlines():
            text = line.strip()
            if '"POST /v1/chat/completions' in text:
                if not text.endswith("200 OK"):
                    findings["non-200 answer: " + text.split(" - ", 1)[-1][:120]] += 1
            elif "Traceback" in text or "ERROR" in text or "Exception" in text:
                findings[text[:160]] += 1
    return [f"{count} x {text}" for text, count in findings.most_common(10)]


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
    write_config(config, redis_url, upstream_base, args.concurrency)
    secret = create_key(config, env)
    ingress_port = free_port()
    processes.start("ingress", switchboard_argv("serve", args, "--config", str(config),
                                                "--host", HOST, "--port", str(ingress_port)), env)
    processes.start("worker", switchboard_argv("worker", args, "--config", str(config)), env)
    worker_log = workdir / "worker.log"
    wait_until("switchboard worker", lambda: b'"worker_ready"' in worker_log.read_bytes(), processes)
    wait_until("switchboard ingress", lambda: http_ok(f"http://{HOST}:{ingress_port}/readyz"), processes)
    litellm_port = start_litellm(args, workdir, processes, upstream_base) if args.litellm else None

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
    for target in targets:
        smoke(target, args.chunks)

    info = machine(redis_port)
    if args.litellm:
        info["litellm"] = litellm_version(args.litellm)
    print(f"Machine: {info.get('nproc')} CPUs ({info.get('cpu', '?')}), Python {info['python']}, "
          f"redis {info.get('redis', '?')}, load average {' '.join(info.get('loadavg_at_start', []))}")
    print(f"Load: {args.requests} requests at concurrency {args.concurrency}, "
          f"{args.serial_requests} at concurrency 1, {args.chunks} chunks per stream, "
          f"upstream delays {args.upstream_latency_ms:g} ms + {args.chunk_delay_ms:g} ms/chunk, "
          f"warm-up {args.warmup}, cap {args.duration_cap:g}s per measurement\n", flush=True)
    bench = Bench(args, processes, redis_port, targets, upstream_base)
    started = time.monotonic()
    trio.run(run_with_signals, bench)
    elapsed = time.monotonic() - started

    table, ratios = report(bench.results)
    print("\n" + table)
    findings = log_summary([workdir / "ingress.log", workdir / "worker.log", workdir / "upstream.log"])
    if findings:
        print("\nUnusual log lines (ingress/worker/upstream):")
        for finding in findings:
            print("  " + finding)
    if args.litellm:
        for finding in litellm_log_summary(workdir / "litellm.log"):
            print("  litellm: " + finding)
    print(f"\nMeasured in {elapsed:.1f}s.")
    if args.json:
        document = {
            "command": " ".join([os.path.relpath(sys.executable, ROOT), "bench/overhead.py",
                                 *sys.argv[1:]]),
            "machine": info,
            "params": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "results": {s: {p: asdict(r) for p, r in by_path.items()}
                        for s, by_path in bench.results.items()},
            **{key: ratios.get(key, {}) for key, _, _, _ in COMPARISONS
               if key == "ratios_switchboard_over_direct" or key in ratios},
            "log_findings": findings,
        }
        args.json.write_bytes(msgspec.json.format(msgspec.json.encode(document), indent=2) + b"\n")
        print(f"Wrote {args.json}")
    failed = any(r.errors or r.cut_off for by_path in bench.results.values() for r in by_path.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
