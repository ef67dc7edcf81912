"""Turning a request's frames into the HTTP answer: one JSON body, or an SSE stream.

SSE framing lives here and only here: workers publish serialized chunks, this module
wraps each in `data: ...` and ends a good stream as its API's dialect does (OpenAI:
`data: [DONE]`; dialects are in `schemas.kinds`). A stream that
fails after it began ends with an error event and no `[DONE]` (invariant 1).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import coredis
import trio

from ingress.replies import Replies, RepliesLost
from schemas.config import Limits
from schemas.envelopes import Chunk, Done, Error, Frame, Head
from schemas.errors import GatewayError
from schemas.kinds import Dialect
from workers.connection import RedisClient


def sse_event(payload: bytes, event: str = "") -> bytes:
    """One SSE event; named when the dialect names its events. A payload with line breaks
    (possible only in relayed native events) becomes several `data:` lines, as SSE wants."""
    data = b"data: " + payload.replace(b"\n", b"\ndata: ") if b"\n" in payload else b"data: " + payload
    if event:
        return b"event: " + event.encode() + b"\n" + data + b"\n\n"
    return data + b"\n\n"


def error_event(dialect: Dialect, body: bytes, status: int, relayed: int = 0) -> bytes:
    """The event that ends a stream with the gateway error `body`, in the API's dialect,
    after `relayed` events."""
    data = dialect.event(body, status, relayed) if dialect.event else dialect.shape(body, status)
    return sse_event(data, dialect.error_event)


def lost_error() -> GatewayError:
    return GatewayError(503, "service_unavailable",
                        "the gateway lost its connection to Redis while waiting for the answer")


def timeout_error() -> GatewayError:
    return GatewayError(504, "upstream_timeout", "no answer before the request's deadline")


async def first_frame(replies: Replies, deadline: float) -> Frame:
    """The frame that decides the HTTP status (Head, Done or Error), by `deadline`."""
    with trio.move_on_at(deadline):
        try:
            return await replies.next()
        except RepliesLost:
            raise lost_error() from None
    raise timeout_error()


async def whole_body(redis: RedisClient, done: Done, limits: Limits) -> bytes:
    """The body of a whole answer: in the frame, or (too big for one) read once from its key."""
    if not done.body_key:
        return done.body
    try:
        with trio.fail_after(limits.transfer_s(done.body_bytes)):
            body = await redis.getdel(done.body_key)
    except (trio.TooSlowError, coredis.exceptions.RedisError, OSError) as exc:
        raise GatewayError(503, "service_unavailable",
                           "the gateway could not read the answer from Redis") from exc
    if body is None:
        raise GatewayError(502, "answer_lost", "the answer expired before it could be read")
    return body


async def end_only(dialect: Dialect) -> AsyncIterator[bytes]:
    """The SSE body of a stream whose answer had no content: only its dialect's end."""
    if dialect.done is not None:
        yield sse_event(dialect.done)


class Outcome:
    """How a stream ended, for the request log and for withdrawing an unfinished job."""

    def __init__(self) -> None:
        self.status = 200
        self.finished = False  # the worker published its last frame
        self.prompt_tokens = 0
        self.completion_tokens = 0


async def stream_events(replies: Replies, deadline: float, outcome: Outcome,
                        dialect: Dialect) -> AsyncIterator[bytes]:
    """The SSE body after the head frame: chunks as they come, then `[DONE]` or an error.

    No `yield` happens inside a cancel scope: the scope covers only the wait.
    """
    relayed = 0  # events sent so far (a numbered dialect numbers its error after them)
    while True:
        frame: Frame | None = None
        error: GatewayError | None = None
        try:
            with trio.move_on_at(deadline):
                frame = await replies.next()
            if frame is None:
                error = timeout_error()
        except RepliesLost:
            error = lost_error()
        except GatewayError as exc:
            error = exc
        if error is not None:
            outcome.status = error.status
            yield error_event(dialect, error.encode(), error.status, relayed)
            return
        match frame:
            case Chunk(payloads=payloads, events=[]):
                relayed += len(payloads)
                yield b"".join([sse_event(p) for p in payloads])
            case Chunk(payloads=payloads, events=events):
                relayed += len(payloads)
                yield b"".join([sse_event(p, e) for p, e in zip(payloads, events, strict=True)])
            case Done():
                outcome.finished = True
                outcome.prompt_tokens = frame.prompt_tokens
                outcome.completion_tokens = frame.completion_tokens
                if dialect.done is not None:
                    yield sse_event(dialect.done)
                return
            case Error(body=body, status=status):
                outcome.finished = True
                outcome.status = status
                yield error_event(dialect, body, status, relayed)
                return
            case Head() | None:
                raise AssertionError("replies yield one head, first")
