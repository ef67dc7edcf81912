"""Serving a fake upstream (a raw ASGI app) on an ephemeral localhost port."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, Generic, Self, TypeVar

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

B = TypeVar("B")
R = TypeVar("R")


class ScriptedUpstream(Generic[B, R]):
    """What every fake upstream shares: the requests it received (`R`), the answers it
    sent, and a queue of scripted behaviours (`B`, default-constructed when empty).
    `base_url` is set by the fixture that serves it."""

    def __init__(self, default: Callable[[], B]) -> None:
        self.requests: list[R] = []
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


async def read_request(scope: dict[str, Any], receive: Any,
                       send: Any) -> tuple[dict[str, str], bytes] | None:
    """An HTTP request's headers (lower-case names) and whole body; None after answering
    a lifespan exchange, which has no request."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return None
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    return {k.decode().lower(): v.decode() for k, v in scope["headers"]}, body


async def serve_asgi(app: Any, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve `app` on 127.0.0.1:0 until cancelled; `started(base_url)` once listening."""
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 0.5

    async with trio.open_nursery() as nursery:
        binds = await nursery.start(serve, app, config)
        task_status.started(binds[0])
