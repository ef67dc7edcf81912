"""`--processes N`: N copies of `switchboard serve` or `switchboard worker`, supervised.

Python runs one core per process, so a machine's cores are used by processes. The parent
started by `serve --processes N` / `worker --processes N` does no serving itself: it
starts N children running the same command with `--processes 1` (each its own process
group, so a terminal's Ctrl-C reaches the parent only), forwards every SIGTERM and SIGINT
to all of them (the first drains each child as it drains alone, a second cuts them off),
restarts a child that exits while nobody asked it to (after 1 s, doubling to 30 s while it
keeps failing within 10 s of its start), and exits once every child has, with the first
non-zero status among them.

Ingress children share one port through SO_REUSEPORT (`reuse_port` in
`ingress.server.run_ingress`): the kernel spreads new connections over their listening
sockets, and each child drains its own connections on SIGTERM. Port 0 is resolved by the
parent first (a bound, not listening, SO_REUSEPORT socket it holds until the children
have stopped), so every child listens on the same port. A worker child `i` given
`--metrics-port P` serves its metrics on `P + i`.
"""

from __future__ import annotations

import signal
import socket
import sys
from collections.abc import AsyncIterator, Sequence

import trio

from ingress.server import shared_listener
from workers.logs import log_event

RESTART_MIN_S = 1.0
RESTART_MAX_S = 30.0
STABLE_S = 10.0  # a child that ran this long restarts after RESTART_MIN_S again


def reserve_port(host: str, port: int) -> tuple[socket.socket, int]:
    """A bound (not listening) SO_REUSEPORT socket on host:port, and the port it got (for
    port 0, a free one): children binding the same port with SO_REUSEPORT may share it,
    nothing else may take it meanwhile. OSError when the port is taken."""
    sock = socket.socket(fileno=shared_listener(host, port))
    return sock, sock.getsockname()[1]


def child_command(arguments: Sequence[str]) -> list[str]:
    """A child's command: this program (`python -m ingress`) with `arguments`."""
    return [sys.executable, "-m", "ingress", *arguments]


async def supervise(name: str, commands: Sequence[Sequence[str]]) -> int:
    """Run one child per command until all have exited after a signal; their status."""
    children: dict[int, trio.Process] = {}
    stopping = False
    statuses: list[int] = []

    async def keep(index: int, command: Sequence[str]) -> None:
        delay = RESTART_MIN_S
        while True:
            started = trio.current_time()
            process = await trio.lowlevel.open_process(list(command), start_new_session=True)
            children[index] = process
            log_event("process_started", verb=name, index=index, pid=process.pid)
            status = await process.wait()
            if stopping:
                statuses.append(status)
                return
            log_event("process_exited", verb=name, index=index, pid=process.pid,
                      status=status, restart_in_s=delay)
            await trio.sleep(delay)
            if stopping:
                return
            stable = trio.current_time() - started >= STABLE_S + delay
            delay = RESTART_MIN_S if stable else min(delay * 2, RESTART_MAX_S)

    async def forward(signals: AsyncIterator[int]) -> None:
        nonlocal stopping
        async for signum in signals:
            stopping = True
            for process in children.values():
                if process.returncode is None:
                    process.send_signal(signum)

    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(forward, signals)
            async with trio.open_nursery() as running:
                for index, command in enumerate(commands):
                    running.start_soon(keep, index, command)
            nursery.cancel_scope.cancel()
    return next((status for status in statuses if status != 0), 0)


def run_serve(arguments: Sequence[str], host: str, port: int, count: int) -> int:
    """`serve --processes N` (N > 1): the port reserved, then N ingress children."""
    try:
        held, bound = reserve_port(host, port)
    except OSError as exc:
        print(f"switchboard: cannot listen on {host}:{port}: {exc.strerror}", file=sys.stderr)
        return 1
    with held:
        base = _without(arguments, "--port", "--processes")
        commands = [child_command([*base, "--port", str(bound), "--processes", "1",
                                   "--reuse-port"]) for _ in range(count)]
        return trio.run(supervise, "serve", commands)


def run_workers(arguments: Sequence[str], count: int, metrics_port: int | None) -> int:
    """`worker --processes N` (N > 1): N worker children."""
    base = _without(arguments, "--processes", "--metrics-port")
    commands = []
    for i in range(count):
        metrics = [] if metrics_port is None else \
            ["--metrics-port", str(metrics_port + i if metrics_port else 0)]
        commands.append(child_command([*base, *metrics, "--processes", "1"]))
    return trio.run(supervise, "worker", commands)


def _without(arguments: Sequence[str], *options: str) -> list[str]:
    """`arguments` without the given options and their values (`--x V` or `--x=V`)."""
    kept: list[str] = []
    skip = False
    for word in arguments:
        if skip:
            skip = False
            continue
        if word in options:
            skip = True
            continue
        if any(word.startswith(option + "=") for option in options):
            continue
        kept.append(word)
    return kept

