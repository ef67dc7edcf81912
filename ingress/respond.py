"""How a route answers: a JSON body, or a relayed request (validate, submit, reply).

Every inference route, OpenAI-shaped or native, goes through `relay`, so keys, limits,
the queue and the answer's framing are the same for all of them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import msgspec
from quart import Response, current_app, g, request

from ingress.gateway import Gateway, Submission
from ingress.keys import Identity
from ingress.requestlog import refusal_record
from schemas.errors import GatewayError
from schemas.trace import incoming

_encode = msgspec.json.Encoder().encode
JSON = "application/json"
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def json_response(value: Any, status: int = 200) -> Response:
    """A JSON answer; `value` is bytes already encoded, or a Struct / plain data."""
    return Response(value if isinstance(value, bytes) else _encode(value), status,
                    content_type=JSON)


def gateway() -> Gateway:
    """The process's Gateway (set on the app by `create_app`)."""
    found: Gateway = current_app.config["GATEWAY"]
    return found


def access_key() -> str | None:
    """The access key, from whichever header the caller's SDK uses.

    `Authorization: Bearer` (OpenAI), `x-api-key` (Anthropic), `x-goog-api-key` (Gemini).
    """
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.headers.get("x-api-key") or request.headers.get("x-goog-api-key") or None


async def identity() -> Identity:
    """The caller, authenticated (401 / 503 otherwise)."""
    return await gateway().authenticate(access_key())


async def relay(make: Callable[[bytes], Submission]) -> Response:
    """Authenticate, validate, submit and answer: the same path for every endpoint."""
    caller = await identity()
    if caller.role == "operator":
        raise GatewayError(403, "forbidden", "an operator key manages the gateway and serves no "
                           "inference: use a key of an org (member or admin)")
    started = time.monotonic()
    submission: Submission | None = None
    try:
        body = await request.get_data(cache=False)
        assert isinstance(body, bytes)
        await gateway().bounds.check_body(body)  # before any decoder recurses into it
        pin = request.headers.get("vendor") or None
        trace = incoming(request.headers.get("traceparent"), request.headers.get("tracestate"),
                         g.request_id)
        submission = make(body)
        reply = await gateway().submit(caller, submission, g.request_id, pin, trace)
    except GatewayError as error:  # answered before (or without) a worker's outcome
        _log_refusal(caller, error, submission, started)
        raise
    if reply.events is None:
        response = json_response(reply.body, reply.status)
        response.headers.update(reply.headers)
        return response
    response = Response(reply.events, 200, content_type="text/event-stream",
                        headers={**SSE_HEADERS, **reply.headers})
    response.timeout = None
    return response


def _log_refusal(caller: Identity, error: GatewayError, submission: Submission | None,
                 started: float) -> None:
    """Record in the request log a request refused after authentication (422, 400, 429,
    503...): admitted requests are recorded where they end (`Gateway._log`)."""
    if not caller.org:
        return  # the operator's key serves no inference, and has no org's log to go in
    seen = submission or Submission("chat", "", b"")
    gateway().request_log.record(refusal_record(
        caller, g.request_id, error.status, error.code, time.monotonic() - started,
        endpoint=seen.endpoint if submission else "", model=seen.model, stream=seen.stream,
        identity=seen.identity, thread=seen.thread))
