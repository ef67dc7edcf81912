"""Closing the connections clients closed: a fix to Hypercorn's trio server (0.18).

Hypercorn's trio `TCPServer` runs each connection in a task group that also holds its
keep-alive timer. When a client closes a connection while it waits for the next request
(httpx does, for one whose streamed answer it stopped reading at `[DONE]`, and so does
every client that opens a connection per request), the read loop ends, but the task group
waits for the timer: the socket stays in CLOSE_WAIT, with its tasks and buffers, for the
whole `keep_alive_timeout` (75 s here, longer than load balancers' idle timeouts). Under
the soak's load that was ~3,000 connections and ~65 MB per ingress, and any client that
churns connections faster can run the process out of file descriptors. Hypercorn's
asyncio server stops the timer when the connection closes; this does the same for trio:
once nothing more can be read, the keep-alive wait ends and the connection is closed.

A request still being answered is not affected: its timer is stopped already, and
Hypercorn itself ends that request when the client goes (`http.disconnect`).
"""

from __future__ import annotations

import hypercorn.trio.run
from hypercorn.trio.tcp_server import TCPServer


class ClosingTCPServer(TCPServer):
    """Hypercorn's trio connection handler, which ends its keep-alive wait at EOF."""

    async def _read_data(self) -> None:
        await super()._read_data()
        # The client sent its FIN (or the socket broke or was closed): no request can
        # follow, so the keep-alive timer must not hold the connection open.
        await self.idle_task.stop()


def install() -> None:
    """Make Hypercorn's trio worker serve connections with `ClosingTCPServer`.

    Process-wide and idempotent. Hypercorn builds its connection handlers from the name
    `TCPServer` in `hypercorn.trio.run`; if a release renames it, this fails loudly rather
    than leaving the fix silently off (tests/test_idle_connections.py pins the behaviour).
    """
    current = getattr(hypercorn.trio.run, "TCPServer", None)
    if current is not TCPServer and current is not ClosingTCPServer:
        raise RuntimeError("hypercorn.trio.run.TCPServer is not the class this fix wraps; "
                           "check ingress/connections.py against the installed Hypercorn")
    hypercorn.trio.run.TCPServer = ClosingTCPServer  # type: ignore[misc]
