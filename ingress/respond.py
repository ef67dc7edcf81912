"""How a route answers: a JSON body, or a relayed request (validate, submit, reply).

Every inference route, OpenAI-shaped or native, goes through `relay`, so keys, limits,
the queue and the answer's framing are the same for all of them.
"""

from __future__ import annotations

import inspect
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from quart import Response, current_app, g, request

from ingress.gateway import Gateway, Submission
from ingress.keys import Identity
from ingress.requestlog import refusal_record
from schemas.errors import GatewayError
from schemas.kinds import GEMINI_GENERATE, dialect_of_path
from schemas.trace import incoming

_encode = msgspec.json.Encoder().encode
_RULE_PART = re.compile(r"<(?:[^:>]+:)?([^>]+)>")  # as app.served_endpoints has it
JSON = "application/json"
GEMINI_PREFIX = GEMINI_GENERATE.prefix  # where `?key=` is an access key
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def json_response(value: Any, status: int = 200) -> Response:
    """A JSON answer; `value` is bytes already encoded, or a Struct / plain data."""
    return Response(value if isinstance(value, bytes) else _encode(value), status,
                    content_type=JSON)


def route_template(rule: str) -> str:
    """A Werkzeug rule as the OpenAPI document writes it: `<path:target>` -> `{target}`."""
    return _RULE_PART.sub(r"{\1}", rule)


def gateway() -> Gateway:
    """The process's Gateway (set on the app by `create_app`)."""
    found: Gateway = current_app.config["GATEWAY"]
    return found


def access_key() -> str | None:
    """The access key, from whichever header the caller's SDK uses.

    `Authorization: Bearer` (OpenAI), `x-api-key` (Anthropic), `x-goog-api-key` (Gemini),
    and on /gemini/ paths Gemini's `?key=` query parameter too (REST examples and some
    clients send it). Never logged: log lines carry the path without its query.
    """
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    header = request.headers.get("x-api-key") or request.headers.get("x-goog-api-key")
    if not header and request.path.startswith(GEMINI_PREFIX):
        header = request.args.get("key")
    return header or None


async def identity() -> Identity:
    """The caller, authenticated (401 / 503 otherwise); a missing key's 401 names the
    header the path's API sends it in."""
    secret = access_key()
    if not secret:
        raise GatewayError(401, "unauthorized", "missing access key: send "
                           + dialect_of_path(request.path).key_hint)
    return await gateway().authenticate(secret)


async def relay(make: Callable[[bytes], Submission | Awaitable[Submission]], *,
                json_body: bool = True) -> Response:
    """Authenticate, validate, submit and answer: the same path for every endpoint.

    With tracing on, the request's span is ended by its log line once admitted, or here
    when it is refused or fails before. A refusal after authentication goes in the
    request log here too (admitted requests are recorded where they end)."""
    spans = gateway().spans
    trace = incoming(request.headers.get("traceparent"), request.headers.get("tracestate"),
                     g.request_id, sampled=spans.on)
    route = route_template(request.url_rule.rule) if request.url_rule else request.path
    span = spans.request(trace, request.method, route, g.request_id)
    caller: Identity | None = None
    submission: Submission | None = None
    started = time.monotonic()
    try:
        caller = await identity()
        if span is not None:
            span.tag(org=caller.org, key_id=caller.key_id)
        if caller.role == "operator":
            raise GatewayError(403, "forbidden", "an operator key manages the gateway and serves "
                               "no inference: use a key of an org (member or admin)")
        body = await request.get_data(cache=False)
        assert isinstance(body, bytes)
        if json_body:  # (a multipart upload's bytes are no JSON: its decoder never recurses)
            await gateway().bounds.check_body(body)  # before any decoder recurses into it
        pin = request.headers.get("vendor") or None
        g.caller = caller  # for a `make` that resolves per caller (ingress/responses.py)
        made = make(body)
        submission = await made if inspect.isawaitable(made) else made
        reply = await gateway().submit(caller, submission, g.request_id, pin, trace, span)
    except BaseException as exc:
        spans.refused(span, exc)  # (nothing if its log line ended it already)
        if isinstance(exc, GatewayError) and caller is not None:
            _log_refusal(caller, exc, submission, started)
            # Every answer to a limited key says where its windows stand, a bad request's
            # too (admission's answers carry them already; Redis trouble is not worth a read).
            if (caller.limits and not exc.headers and exc.status < 500
                    and exc.code != "ingress_busy"):
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
