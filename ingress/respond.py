"""How a route answers: a JSON body, or a relayed request (validate, submit, reply).

Every inference route, OpenAI-shaped or native, goes through `relay`, so keys, limits,
the queue and the answer's framing are the same for all of them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
from quart import Response, current_app, g, request

from ingress.gateway import Gateway, Submission
from ingress.keys import Identity
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
    body = await request.get_data(cache=False)
    assert isinstance(body, bytes)
    await gateway().bounds.check_body(body)  # before any decoder recurses into it
    pin = request.headers.get("vendor") or None
    trace = incoming(request.headers.get("traceparent"), request.headers.get("tracestate"),
                     g.request_id)
    try:
        reply = await gateway().submit(caller, make(body), g.request_id, pin, trace)
    except GatewayError as exc:
        # Every answer to a limited key says where its windows stand, a bad request's too
        # (admission's answers carry them already; Redis trouble is not worth a read).
        if caller.limits and not exc.headers and exc.status < 500 and exc.code != "ingress_busy":
            exc.headers = await gateway().rate_headers(caller)
        raise
    if reply.events is None:
        response = json_response(reply.body, reply.status)
        response.headers.update(reply.headers)
        return response
    response = Response(reply.events, 200, content_type="text/event-stream",
                        headers={**SSE_HEADERS, **reply.headers})
    response.timeout = None
    return response
