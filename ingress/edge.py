"""The ASGI edge: every request body is read before any handler runs (invariant 10).

Why it exists. On an HTTP/1.1 connection whose answer ends while the client is still
sending the body (an unknown path, a bad key, a body too large: answers made without
reading it), Hypercorn ends the request from inside the application's last `send`, and
the application hears `http.disconnect`; Quart-trio answers that by cancelling the
application's tasks, the one running that `send` included. Hypercorn's own step that
recycles or closes the connection is cut off halfway: the connection is left neither
reusable nor closed, and the client's next request on it waits until its timeout.

So, around the whole application, in one place that no route can bypass:

- The body is read whole (up to `max_body_bytes`, or an upload path's own limit, within
  `body_timeout_s`) before the application sees the request; by the time any answer
  ends, the client has finished sending and the connection can serve the next request.
- A body over the limit is not kept: the application is told to answer 413 (rendered
  like every other error), with `Connection: close`, and the rest of the body is read
  and discarded (bounded) before the answer ends, so closing never resets a connection
  whose client is still writing.
- The answer's last message is sent shielded (bounded), so a disconnect cannot cut
  Hypercorn's end-of-request step in half.
- Every write of the answer is bounded by `write_timeout_s` (`WriteWatch`, one task for
  the whole process): a client that stops reading is cut off instead of holding its
  request, its job and its connection until TCP gives up.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any, cast

import trio

from workers.logs import log_event

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[..., Awaitable[None]]  # Quart types its own scope and events

# Where the edge tells the application that it refused the body ("too_large", "too_slow").
REFUSAL = "switchboard.body_refusal"
FINISH_S = 10.0  # bound on the shielded last send
DISCARD_S = 5.0  # how long an oversized body is read and thrown away before closing
DISCARD_FACTOR = 8  # ... and how much of it, in multiples of max_body_bytes (at least 64 MiB)


class BodyFirst:
    """ASGI middleware: read the body first, refuse oversized ones, finish shielded."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, body_timeout_s: float, *,
                 write_timeout_s: float = 30.0, uploads: Mapping[str, int] | None = None,
                 caller_known: Callable[[Scope], Awaitable[bool]] | None = None) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s
        self.writes = WriteWatch(write_timeout_s)  # its `serve` runs beside the server
        # POST paths whose bodies may be larger (file uploads): {path: their own limit}
        self.uploads = dict(uploads or {})
        # Whether a request carries a valid access key: only then may an upload path's body
        # pass max_body_bytes, so nobody without a key makes the ingress buffer a file.
        self.caller_known = caller_known

    def limit(self, scope: Scope) -> int:
        """The body limit of this request: its upload path's, else max_body_bytes."""
        if scope.get("method") == "POST":
            return self.uploads.get(scope.get("path", ""), self.max_body_bytes)
        return self.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit(scope)
        if limit > self.max_body_bytes and self.caller_known is not None \
                and not await self.caller_known(scope):
            limit = self.max_body_bytes
        request = _Request(receive, max(DISCARD_FACTOR * limit, 64 * 1024 * 1024))
        refusal = await request.read(limit, self.body_timeout_s, _declared_length(scope))
        if refusal == "gone":
            return  # the client left before it finished sending
        if refusal:
            scope[REFUSAL] = refusal
        answer = _Answer(_Watched(self.writes, send).send, request, closing=bool(refusal))
        await self.app(scope, request.replay, answer.send)


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # h11 has refused a malformed length already
    return None


class _Request:
    """The request side: the body read up front, then replayed to the application."""

    def __init__(self, receive: Receive, discard_bytes: int) -> None:
        self._receive = receive
        self._body = b""
        self.complete = False  # the client sent its whole body
        self.discarded = trio.Event()  # set once an unread body was discarded (or given up)
        self._replayed = False
        self._discard_budget = discard_bytes  # how much of a refused body is read and dropped

    async def read(self, limit: int, timeout_s: float, declared: int | None) -> str:
        """Read the body; "" when read whole, else why not ("too_large", "too_slow", "gone")."""
        if declared is not None and declared > limit:
            return "too_large"
        parts: list[bytes] = []
        size = 0
        with trio.move_on_after(timeout_s):
            while True:
                message = await self._receive()
                if message["type"] == "http.disconnect":
                    return "gone"
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    return "too_large"
                parts.append(chunk)
                if not message.get("more_body", False):
                    self.complete = True
                    self._body = parts[0] if len(parts) == 1 else b"".join(parts)
                    return ""
        return "too_slow"

    async def replay(self) -> Message:
        """The application's `receive`: the body in one message, then the real disconnect."""
        if not self._replayed:
            self._replayed = True
            body, self._body = self._body, b""
            return {"type": "http.request", "body": body, "more_body": False}
        if not self.complete:
            await self._discard()
            if not self.complete:
                await trio.sleep_forever()  # gave up: only the answer's end stops this
        return await self._receive()

    async def _discard(self) -> None:
        """Read what is left of a refused body and throw it away, within bounds."""
        try:
            with trio.move_on_after(DISCARD_S):
                while self._discard_budget > 0:
                    message = await self._receive()
                    if message["type"] == "http.disconnect":
                        return
                    self._discard_budget -= len(message.get("body", b""))
                    if not message.get("more_body", False):
                        self.complete = True
                        return
        finally:
            self.discarded.set()


class _Answer:
    """The response side: `Connection: close` after a refused body; a shielded last send."""

    def __init__(self, send: Send, request: _Request, *, closing: bool) -> None:
        self._send = send
        self._request = request
        self._closing = closing

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start" and self._closing:
            message["headers"] = [*message.get("headers", []), (b"connection", b"close")]
        elif message["type"] == "http.response.body" and not message.get("more_body", False):
            if not self._request.complete:
                # The answer is on its way; end it only once the client stopped sending.
                with trio.move_on_after(DISCARD_S + 1):
                    await self._request.discarded.wait()
            with trio.CancelScope(shield=True, deadline=trio.current_time() + FINISH_S):
                await self._send(message)
            return
        await self._send(message)


class WriteWatch:
    """Every write of every answer within `timeout_s`, although Hypercorn shields them.

    Hypercorn writes to the socket inside a shielded cancel scope (`protocol_send` in
    hypercorn/trio/tcp_server.py), so no timeout around `send` can end a write to a client
    that stopped reading. One task (`serve`) watches the writes instead: when one has
    lasted `timeout_s`, it tells Hypercorn that the application is done with that answer
    (`send(None)`, what Hypercorn's own task runner sends when an application returns).
    The answer being unfinished, Hypercorn closes the connection; the stuck write returns,
    and the application hears `http.disconnect` (the SSE relay then withdraws the job).

    One task for the process, not one per request: every write has the same timeout, so
    writes fall due in the order they began, and the watch sleeps until the oldest one
    under way is due (`_writes`, oldest first).
    """

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._writes: OrderedDict[_Watched, float] = OrderedDict()  # under way: their deadlines
        self._begun = trio.Event()  # set when a write begins while none was under way

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Watch until cancelled (the server's nursery ends it after the last answer)."""
        async with trio.open_nursery() as ending:
            task_status.started()
            while True:
                if not self._writes:
                    self._begun = trio.Event()
                    await self._begun.wait()
                    continue
                watched, due = next(iter(self._writes.items()))
                if trio.current_time() < due:
                    await trio.sleep_until(due)  # (writes begun meanwhile are due later)
                    continue
                del self._writes[watched]
                log_event("client_write_timeout", timeout_s=self.timeout_s)
                ending.start_soon(watched.end)

    def begin(self, watched: _Watched) -> None:
        if not self._writes:
            self._begun.set()
        self._writes[watched] = trio.current_time() + self.timeout_s

    def end(self, watched: _Watched) -> None:
        self._writes.pop(watched, None)


class _Watched:
    """One answer's `send`, its writes registered with the process's WriteWatch."""

    __slots__ = ("_send", "_watch")

    def __init__(self, watch: WriteWatch, send: Send) -> None:
        self._watch = watch
        self._send = send

    async def send(self, message: Message) -> None:
        self._watch.begin(self)
        try:
            await self._send(message)
        finally:
            self._watch.end(self)

    async def end(self) -> None:
        """End the answer: the application is done with it, as far as Hypercorn knows."""
        end = cast(Callable[[None], Awaitable[None]], self._send)
        await end(None)
