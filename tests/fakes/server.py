"""What every fake upstream shares: the ASGI prologue (lifespan, reading and recording
the request), a queue of scripted behaviours, JSON answers, and serving on an ephemeral
localhost port.

A fake subclasses `ScriptedUpstream`, sets `base_path` (what follows the server's origin
in the provider's `base_url`) and implements `answer`, which sees each request already
read and recorded in `requests`.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Self, TypeVar
from urllib.parse import parse_qs

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

B = TypeVar("B")


@dataclass
class Received:
    """One request as a fake got it."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    body: dict[str, Any]  # the JSON body ({} when empty or not JSON)
    raw: bytes = b""  # the body as received, byte for byte


class ScriptedUpstream(Generic[B]):
    """The ASGI app: records every request (`requests`) and the answers a subclass notes
    in `answers`; `then` queues behaviours (`B`, default-constructed when none is queued).
    `base_url` is set by whoever serves it (the `fake_upstream` fixture)."""

    base_path = ""

    def __init__(self, default: Callable[[], B]) -> None:
        self.requests: list[Received] = []
        self.answers: list[bytes] = []
        self.behaviors: deque[B] = deque()
        self.base_url = ""
        self._default = default

    def then(self, *behaviors: B) -> Self:
        """Answer the next requests this way, in order."""
        self.behaviors.extend(behaviors)
        return self

    def next_behavior(self) -> B:
        return self.behaviors.popleft() if self.behaviors else self._default()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = {}
        received = Received(scope["method"], scope["path"],
                            parse_qs(scope.get("query_string", b"").decode()),
                            {k.decode().lower(): v.decode() for k, v in scope["headers"]},
                            body if isinstance(body, dict) else {}, raw)
        self.requests.append(received)
        await self.answer(received, receive, send)

    async def answer(self, request: Received, receive: Any, send: Any) -> None:
        """Answer one recorded request (`receive` still reports a client disconnect)."""
        raise NotImplementedError


async def _lifespan(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        else:
            await send({"type": "lifespan.shutdown.complete"})
            return


async def send_json(send: Any, status: int, payload: Any,
                    headers: list[tuple[bytes, bytes]] | None = None) -> bytes:
    """Answer with a JSON body (`payload` as is when it is bytes already); returns the body."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})
    return body


async def start_sse(send: Any, content_type: bytes = b"text/event-stream") -> None:
    """Begin a 200 event-stream answer; each event is then sent with `more_body`."""
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", content_type)]})


class DropConnection(ConnectionAbortedError):
    """Raised inside a fake's answer to drop the connection mid-body, as a crashed or
    cut-off upstream would (the client sees the body end without its last chunk)."""


async def serve_asgi(app: Any, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve `app` on 127.0.0.1:0 until cancelled; `started(origin)` once listening."""
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 0.5

    async with trio.open_nursery() as nursery:
        binds = await nursery.start(serve, app, config)
        task_status.started(binds[0])
