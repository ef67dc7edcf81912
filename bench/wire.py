"""The load generator's HTTP client: one keep-alive HTTP/1.1 connection, h11 over trio.

httpx cost the load generator about 1 ms of CPU per request on the 2-core machine, as much
as some gateways it measured; the load generator shares the cores with them, so it
capped the direct path at a bare 1.7x the fastest gateway. This client does only what a
benchmark needs: one connection, one request at a time, the body as it arrives, and a
new connection when the server closes the old one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from urllib.parse import urlsplit

import h11
import trio

READ_BYTES = 65536


class Connection:
    """POSTs to one URL over one kept-alive connection (opened on first use)."""

    def __init__(self, url: str, headers: Mapping[str, str]) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"an http:// URL is needed, not {url!r}")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.path = parts.path or "/"
        given = {name.lower(): value for name, value in headers.items()}
        self.headers = [("host", f"{self.host}:{self.port}"),
                        *({"content-type": "application/json"} | given).items()]
        self._stream: trio.SocketStream | None = None
        self._h11 = h11.Connection(h11.CLIENT)
        self._answering = False

    async def post(self, body: bytes) -> int:
        """Send a POST and read its status line and headers; then read `body_parts()`.

        A kept-alive connection that the server closed while it was idle (Node's and
        uvicorn's servers do after 5 s) fails before any byte of an answer: the request is
        sent again once, on a new connection, as HTTP clients do."""
        reused = self._stream is not None and self._h11.our_state is h11.IDLE
        if not reused:
            await self._reconnect()
        try:
            return await self._exchange(body)
        except (OSError, h11.ProtocolError):
            if not reused or self._answering:
                raise
        await self._reconnect()
        return await self._exchange(body)

    async def _exchange(self, body: bytes) -> int:
        assert self._stream is not None
        self._answering = False  # whether any byte of an answer came
        wire = self._h11.send(h11.Request(method="POST", target=self.path,
                                          headers=[*self.headers,
                                                   ("content-length", str(len(body)))]))
        wire = (wire or b"") + (self._h11.send(h11.Data(data=body)) or b"") + \
            (self._h11.send(h11.EndOfMessage()) or b"")
        await self._stream.send_all(wire)
        event = await self._next()
        while isinstance(event, h11.InformationalResponse):
            event = await self._next()
        if not isinstance(event, h11.Response):
            raise h11.RemoteProtocolError(f"expected a response, got {type(event).__name__}")
        return event.status_code

    async def body_parts(self) -> AsyncIterator[bytes]:
        """The response body as it arrives; the connection is reusable once it ends."""
        while True:
            event = await self._next()
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                raise h11.RemoteProtocolError(f"unexpected {type(event).__name__} in a body")
        if self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE:
            self._h11.start_next_cycle()

    async def body(self) -> bytes:
        """The whole response body."""
        return b"".join([part async for part in self.body_parts()])

    async def aclose(self) -> None:
        if self._stream is not None:
            await self._stream.aclose()
            self._stream = None

    async def _reconnect(self) -> None:
        await self.aclose()
        self._stream = await trio.open_tcp_stream(self.host, self.port)
        self._h11 = h11.Connection(h11.CLIENT)

    async def _next(self) -> h11.Event | type[h11.PAUSED]:
        assert self._stream is not None
        while True:
            event = self._h11.next_event()
            if event is not h11.NEED_DATA:
                if isinstance(event, h11.ConnectionClosed):
                    raise ConnectionResetError("the server closed the connection")
                return event  # type: ignore[return-value]
            received = await self._stream.receive_some(READ_BYTES)
            self._answering = self._answering or bool(received)
            self._h11.receive_data(received)
