"""A gateway as the Procfile runs it: `switchboard serve` and `switchboard worker` as real
subprocesses on one Redis, that a test can SIGKILL, freeze and restart one by one.

    fleet = Fleet(tmp_path, config_text, redis_url)
    base = await fleet.serve("in1"); await fleet.worker("w1")
    fleet.kill("w1"); await fleet.worker("w1")   # a new process under the same name
    fleet.stop_all()                              # also on failure (use try/finally)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import trio

from ingress.dev import free_port

SWITCHBOARD = str(Path(sys.executable).with_name("switchboard"))
READY_S = 30.0


class Fleet:
    """Named gateway subprocesses; each one's log goes to `workdir/NAME.N.log`."""

    def __init__(self, workdir: Path, config_text: str, redis_url: str,
                 env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.config = workdir / "fleet.toml"
        self.config.write_text(config_text)
        self.env = {**os.environ, "REDIS_URL": redis_url, **(env or {})}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: list[Path] = []

    def _start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = self.workdir / f"{name}.{len(self.logs)}.log"
        self.logs.append(log)
        with log.open("wb") as sink:
            process = subprocess.Popen(
                [SWITCHBOARD, *argv, "--config", str(self.config)], env=self.env,
                stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT)
        self.processes[name] = process
        return process

    async def serve(self, name: str, *options: str) -> str:
        """Start an ingress (`options`: more flags of `serve`); returns its base URL once it
        answers /readyz."""
        port = free_port()
        process = self._start(name, ["serve", "--host", "127.0.0.1", "--port", str(port),
                                     *_one_process(options)])
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base, trust_env=False) as http:
            with trio.fail_after(READY_S):
                while True:
                    assert process.poll() is None, self.log_text()
                    try:
                        if (await http.get("/readyz")).status_code == 200:
                            return base
                    except httpx.HTTPError:
                        pass
                    await trio.sleep(0.05)

    async def worker(self, name: str, *options: str, ready: int = 1) -> None:
        """Start a worker process (`options`: flags of `worker`); returns once `ready`
        `worker_ready` lines are in its log (one per process it runs)."""
        process = self._start(name, ["worker", *_one_process(options)])
        log = self.logs[-1]
        with trio.fail_after(READY_S):
            while log.read_bytes().count(b'"event":"worker_ready"') < ready:
                assert process.poll() is None, self.log_text()
                await trio.sleep(0.05)

    def kill(self, name: str, signum: int = signal.SIGKILL) -> None:
        """Signal one process (SIGKILL by default: no drain, no goodbye)."""
        process = self.processes[name]
        process.send_signal(signum)
        if signum == signal.SIGKILL:
            process.wait(timeout=10)

    def stop_all(self) -> dict[str, int]:
        """SIGTERM everything still running; returns each process's exit status."""
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)  # a frozen one must be able to drain
                process.terminate()
        statuses = {}
        for name, process in self.processes.items():
            try:
                statuses[name] = process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                statuses[name] = process.wait(timeout=5)
        return statuses

    def log_text(self) -> str:
        """Every process's log so far, for assertion messages and log checks."""
        return "\n".join(log.read_text(errors="replace") for log in self.logs if log.exists())


def _one_process(options: tuple[str, ...]) -> list[str]:
    """`options`, with `--processes 1` unless they say otherwise: the default follows the
    machine's cores, and a test means the same processes on every machine."""
    return list(options) if "--processes" in options else ["--processes", "1", *options]
