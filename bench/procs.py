"""Starting, watching and stopping the benchmark's subprocesses, and measuring them.

The processes of one run: a private redis-server, the fast fake upstream
(bench/fast_upstream.py), Switchboard's ingress and worker (with a temporary config
routing one model slug to the upstream), and optionally the LiteLLM proxy. All listen
on 127.0.0.1 only. `Processes` stops them in reverse order of start, also on errors.

Measuring them: CPU seconds from /proc (one process, or a whole process tree),
Redis command counts from INFO commandstats, and the fake upstream's own counters.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from ingress.dev import free_port

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
SWITCHBOARD = VENV_BIN / "switchboard"
UPSTREAM_SCRIPT = Path(__file__).resolve().with_name("fast_upstream.py")
HOST = "127.0.0.1"
SLUG = "bench-fast"
UPSTREAM_MODEL = "fast-upstream-model"
UPSTREAM_KEY_ENV = "SB_BENCH_UPSTREAM_KEY"
UPSTREAM_KEY = "sk-bench-upstream-not-a-secret"
STARTUP_S = 30.0
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


def write_config(path: Path, redis_url: str, upstream_base: str, concurrency: int, *,
                 request_timeout_s: int = 60, upstream_timeout_s: int = 30) -> None:
    path.write_text(f"""# written by bench/overhead.py for one benchmark run
redis_url = "{redis_url}"

[providers.fast]
kind = "openai"
base_url = "{upstream_base}"
api_key_env = "{UPSTREAM_KEY_ENV}"
max_concurrency = {max(256, concurrency)}
max_queue = {max(100000, concurrency * 2)}
timeout_s = {upstream_timeout_s}
max_retries = 0

[[models]]
slug = "{SLUG}"
routes = [{{ provider = "fast", model = "{UPSTREAM_MODEL}" }}]

[limits]
request_timeout_s = {request_timeout_s}
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


def upstream_stats(base: str) -> dict[str, int]:
    """The fast upstream's counters (served completions, connections that carried them)."""
    response = httpx.get(base.removesuffix("/v1") + "/stats", timeout=5, trust_env=False)
    return {k: int(v) for k, v in response.json().items()}


# ---------------------------------------------------------------------------------------
# Starting Switchboard and LiteLLM


def create_key(config: Path, env: dict[str, str]) -> str:
    done = subprocess.run([str(SWITCHBOARD), "keys", "create", "--config", str(config),
                           "--org", "bench", "--name", "overhead benchmark"],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=STARTUP_S)
    if done.returncode != 0 or not done.stdout.strip():
        raise RuntimeError(f"switchboard keys create failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout.strip().splitlines()[-1].strip()


def switchboard_argv(verb: str, args: argparse.Namespace, *rest: str) -> list[str]:
    """The command line of one Switchboard process, under cProfile with --profile."""
    if args.profile is None:
        return [str(SWITCHBOARD), verb, *rest]
    out = args.profile.resolve() / f"{'ingress' if verb == 'serve' else verb}.prof"
    return [sys.executable, "-m", "cProfile", "-o", str(out), str(SWITCHBOARD), verb, *rest]


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


@contextlib.contextmanager
def terminate_on_sigterm() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt here, so a bench stopped by it still cleans up."""
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def find(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    """`exc` itself or the first exception of `kind` inside (nested) exception groups."""
    if isinstance(exc, kind):
        return exc
    for inner in exc.exceptions if isinstance(exc, BaseExceptionGroup) else ():
        if (found := find(inner, kind)) is not None:
            return found
    return None
