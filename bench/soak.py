"""Soak: a bounded run under faults that counts every answer (not part of CI).

One run starts, on 127.0.0.1 only: a private redis-server with AOF on (so keys survive a
restart), two `switchboard serve` and two `switchboard worker` processes on a mock
provider that echoes each request's unique text. Then, for --duration seconds, --concurrency
callers send mixed plain and streamed completions (half each) across both ingresses, and
some callers leave early on purpose (--disconnect-rate). Meanwhile worker w1 is SIGKILLed
and restarted every --kill-every seconds and Redis is restarted once, half-way.

Every request ends as one of: completed (the text is exactly the one sent: a doubled or
mixed-up chunk shows), left (we disconnected), errored (an HTTP error or an explicit
error event; by code, with the time since the last fault), lost (no answer in time, or a
stream that ended with neither `[DONE]` nor an error event) or wrong (a complete answer
whose text differs: duplicated or mixed up). It prints the counts, the metered usage
against the tokens delivered, and the RSS of every process sampled over the run.

    .venv/bin/python bench/soak.py [--duration 180] [--concurrency 64] [--kill-every 30]
                                   [--disconnect-rate 0.05] [--no-redis-restart]
                                   [--json soak.json]

`--kill-every 0 --no-redis-restart --disconnect-rate 0` is the same load without faults,
to tell a leak from what the faults cost.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio

from ingress.dev import free_port, redis_answers
from workers.connection import connect

from procs import Processes, child_env, create_key, http_ok, wait_until

SLUG = "soak-echo"
CONFIG = """# written by bench/soak.py
redis_url = "{redis_url}"

[providers.mock]
kind = "mock"
latency_ms = 20
chunks = 8
chunk_delay_ms = 15
max_concurrency = 128

[[models]]
slug = "{slug}"
routes = [{{ provider = "mock", model = "echo" }}]

[limits]
request_timeout_s = 60
"""
EXPLAINED_S = 15.0  # an error this soon after a fault is one the fault explains


@dataclass
class Tally:
    """What happened to every request of the run."""

    sent: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    unexplained: list[dict[str, Any]] = field(default_factory=list)
    delivered_tokens: int = 0  # prompt + completion words of completed answers
    faults: list[float] = field(default_factory=list)  # monotonic times of kills and restarts

    def error(self, code: str) -> None:
        self.outcomes["errored"] += 1
        self.errors[code] += 1
        since = time.monotonic() - max(self.faults, default=-1e9)
        if since > EXPLAINED_S:
            self.unexplained.append({"code": code, "s_after_last_fault": round(since, 1)})


def words(text: str) -> int:
    return len(text.split())


class Redis:
    """A redis-server with AOF that can be restarted on the same port and directory."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir / "redis"
        self.workdir.mkdir()
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server") or sys.exit("redis-server is not installed")
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir),
             "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
             "--loglevel", "warning"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not redis_answers("127.0.0.1", self.port):
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)

    def restart(self) -> None:
        assert self.process is not None
        self.process.terminate()  # a clean shutdown writes the AOF out
        self.process.wait(timeout=30)
        self.start()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class Soak:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.redis = Redis(workdir)
        self.processes = Processes(workdir)
        self.tally = Tally()
        self.bases: list[str] = []
        self.secret = ""
        self.generation = 0
        self.rss: dict[str, list[float]] = {}
        self.rng = random.Random(args.seed)

    def start(self) -> None:
        self.redis.start()
        config = self.workdir / "soak.toml"
        config.write_text(CONFIG.format(redis_url=self.redis.url, slug=SLUG))
        self.config = config
        self.env = child_env(self.redis.url)
        self.secret = create_key(config, self.env)
        for name in ("in1", "in2"):
            port = free_port()
            self.processes.start(name, [str(Path(sys.executable).with_name("switchboard")),
                                        "serve", "--config", str(config), "--host", "127.0.0.1",
                                        "--port", str(port), "--processes", "1"], self.env)
            base = f"http://127.0.0.1:{port}"
            wait_until(name, lambda b=base: http_ok(b + "/readyz"), self.processes)
            self.bases.append(base)
        self.start_worker("w1")
        self.start_worker("w2")

    def start_worker(self, name: str) -> None:
        self.generation += 1
        self.processes.start(f"{name}.{self.generation}",
                             [str(Path(sys.executable).with_name("switchboard")), "worker",
                              "--config", str(self.config), "--processes", "1"], self.env)

    async def call(self, http: httpx.AsyncClient, index: int) -> None:
        text = f"soak request {index} " + " ".join(self.rng.sample(WORDS, 6))
        stream = index % 2 == 1
        leave = self.rng.random() < self.args.disconnect_rate
        body = {"model": SLUG, "messages": [{"role": "user", "content": text}], "stream": stream}
        headers = {"authorization": f"Bearer {self.secret}"}
        self.tally.sent += 1
        try:
            with trio.fail_after(90):
                if not stream:
                    with trio.move_on_after(self.rng.uniform(0.001, 0.05) if leave else 1e9):
                        reply = await http.post("/v1/chat/completions", json=body, headers=headers)
                        self.check_plain(reply, text)
                        return
                    self.tally.outcomes["left"] += 1
                    return
                async with http.stream("POST", "/v1/chat/completions", json=body,
                                       headers=headers) as reply:
                    if reply.status_code != 200:
                        await reply.aread()
                        self.tally.error(error_code(reply.content, reply.status_code))
                        return
                    await self.read_stream(reply, text, leave)
        except trio.TooSlowError:
            self.tally.outcomes["lost"] += 1
        except httpx.HTTPError as exc:
            self.tally.error(type(exc).__name__)

    def check_plain(self, reply: httpx.Response, text: str) -> None:
        if reply.status_code != 200:
            self.tally.error(error_code(reply.content, reply.status_code))
            return
        content = reply.json()["choices"][0]["message"]["content"]
        self.tally.outcomes["completed" if content == text else "wrong"] += 1
        self.tally.delivered_tokens += 2 * words(text)

    async def read_stream(self, reply: httpx.Response, text: str, leave: bool) -> None:
        pieces: list[str] = []
        stop_after = self.rng.randint(1, 4) if leave else -1
        async for line in reply.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line.removeprefix("data: ")
            if data == "[DONE]":
                got = "".join(pieces)
                self.tally.outcomes["completed" if got == text else "wrong"] += 1
                self.tally.delivered_tokens += 2 * words(text)
                return
            event = json.loads(data)
            if "error" in event:
                self.tally.error(event["error"].get("code") or "stream_error")
                return
            pieces.extend(c["delta"].get("content") or "" for c in event["choices"])
            if len(pieces) == stop_after:
                self.tally.outcomes["left"] += 1
                return  # leaving the block closes the connection mid-stream
        self.tally.outcomes["lost"] += 1  # ended with neither [DONE] nor an error

    async def callers(self) -> None:
        counter = iter(range(10**9))
        stop_at = trio.current_time() + self.args.duration

        async def caller(number: int) -> None:
            base = self.bases[number % len(self.bases)]
            async with httpx.AsyncClient(base_url=base, timeout=None, trust_env=False) as http:
                while trio.current_time() < stop_at:
                    await self.call(http, next(counter))

        async with trio.open_nursery() as nursery:
            for number in range(self.args.concurrency):
                nursery.start_soon(caller, number)

    async def faults(self) -> None:
        started = trio.current_time()
        restarted_redis = False
        next_kill = started + self.args.kill_every
        while trio.current_time() < started + self.args.duration - 5:
            await trio.sleep(0.5)
            now = trio.current_time()
            if self.args.redis_restart and not restarted_redis and \
                    now > started + self.args.duration / 2 + 5:
                restarted_redis = True
                self.tally.faults.append(time.monotonic())
                print(f"soak: t={now - started:.0f}s restarting redis", file=sys.stderr)
                await trio.to_thread.run_sync(self.redis.restart)
                self.tally.faults.append(time.monotonic())
            if self.args.kill_every > 0 and now >= next_kill:
                next_kill = now + self.args.kill_every
                name = next(n for n, p, _ in reversed(self.processes.running)
                            if n.startswith("w1.") and p.poll() is None)
                print(f"soak: t={now - started:.0f}s SIGKILL {name}", file=sys.stderr)
                self.processes._signal(name, next(p for n, p, _ in self.processes.running
                                                   if n == name), 9)
                self.tally.faults.append(time.monotonic())
                await trio.sleep(1.0)
                self.start_worker("w1")

    async def sample_rss(self) -> None:
        while True:
            for name, process, _ in self.processes.running:
                if process.poll() is None and (mb := rss_mb(process.pid)) is not None:
                    self.rss.setdefault(name, []).append(round(mb, 1))
            if self.redis.process and (mb := rss_mb(self.redis.process.pid)) is not None:
                self.rss.setdefault("redis", []).append(round(mb, 1))
            await trio.sleep(5)

    async def run(self) -> dict[str, Any]:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.sample_rss)
            nursery.start_soon(self.faults)
            await self.callers()
            nursery.cancel_scope.cancel()
        await trio.sleep(2)  # the last finishes meter their usage
        usage = await redis_usage(self.redis.url)
        return {"sent": self.tally.sent, "outcomes": dict(self.tally.outcomes),
                "errors": dict(self.tally.errors), "unexplained_errors": self.tally.unexplained,
                "delivered_tokens": self.tally.delivered_tokens, "metered": usage,
                # every 30 s (a sample every 5 s); "first" is after 10 s of warm-up
                "rss_mb": {name: {"first": s[min(2, len(s) - 1)], "last": s[-1], "max": max(s),
                                  "every_30s": s[::6]}
                           for name, s in self.rss.items() if s}}


WORDS = "the quick brown fox jumps over lazy dogs while gateway relays every token".split()


def error_code(body: bytes, status: int) -> str:
    try:
        return f"{status} {json.loads(body)['error']['code']}"
    except (ValueError, KeyError, TypeError):
        return str(status)


async def redis_usage(url: str) -> dict[str, int]:
    """Every org's metered usage, summed."""
    total: Counter[str] = Counter()
    async with connect(url) as redis:
        for key in await redis.keys("{sb}:usage:*"):
            for name, value in (await redis.hgetall(key)).items():
                total[name.decode()] += int(value)
    return dict(total)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=180)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--kill-every", type=float, default=30)
    parser.add_argument("--disconnect-rate", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--no-redis-restart", dest="redis_restart", action="store_false")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sb-soak-") as tmp:
        soak = Soak(args, Path(tmp))
        try:
            soak.start()
            result = trio.run(soak.run)
        finally:
            soak.processes.stop_all()
            soak.redis.stop()
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    bad = result["outcomes"].get("lost", 0) + result["outcomes"].get("wrong", 0)
    return 1 if bad or result["unexplained_errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
