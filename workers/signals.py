"""Signal handling both process kinds share: the first SIGTERM/SIGINT drains, a second cuts off.

A leaf module: the ingress and the workers import it without pulling in each other.
"""

from __future__ import annotations

import signal

import trio


async def watch_signals(stop: trio.Event, scope: trio.CancelScope) -> None:
    """Set `stop` on SIGTERM/SIGINT; cancel `scope` if asked a second time."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            if stop.is_set():
                scope.cancel()  # asked twice: stop now, running jobs will be reclaimed
            stop.set()

