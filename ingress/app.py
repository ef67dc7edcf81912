"""The Quart-trio application: routes, the edge checks, and the one place errors render."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from functools import partial
from typing import Any

from quart import Response, g, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.routing import RequestRedirect

from ingress.admin import admin
from ingress.batches import batches
from ingress.completions import completions
from ingress.console import SignInNeeded, console, error_page, sign_in_redirect
from ingress.cors import Cors
from ingress.edge import REFUSAL, BodyFirst
from ingress.files import FORM_SLACK, UPLOAD_PATH, file_too_large, files
from ingress.gateway import Gateway, new_request_id
from ingress.media import media
from ingress.metrics import CONTENT_TYPE
from ingress.native import native
from ingress.openapi import openapi_document
from ingress.reports import reports
from ingress.respond import identity, json_response, relay
from ingress.responses import responses
from schemas import names
from schemas.errors import GatewayError
from schemas.kinds import dialect_of_path
from workers.logs import log_event

_RULE_PART = re.compile(r"<(?:[^:>]+:)?([^>]+)>")
# Refusals no retry can turn into an answer before the month ends: `x-should-retry: false`.
NO_RETRY = frozenset({"subscription_limit", "budget_exceeded"})


def _lower(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers}


def served_endpoints(app: QuartTrio) -> str:
    """Every endpoint this app serves, as `METHOD /path` (for the 404 message)."""
    rules = sorted((rule.rule, method) for rule in app.url_map.iter_rules()
                   for method in (rule.methods or ()) if method not in ("HEAD", "OPTIONS"))
    # Werkzeug's `<path:target>` becomes `{target}`, as the OpenAPI document writes it.
    return ", ".join(method + " " + _RULE_PART.sub(r"{\1}", path) for path, method in rules)


def create_app(gateway: Gateway) -> QuartTrio:
    """The ingress application bound to one process's Gateway."""
    limits = gateway.config.limits
    app = QuartTrio("switchboard", static_folder=None)
    app.config["GATEWAY"] = gateway
    app.config.update(
        MAX_CONTENT_LENGTH=None,  # the edge enforces max_body_bytes, before any handler
        RESPONSE_TIMEOUT=None,  # streams last as long as the upstream does
    )
    # Every request passes the edge: its body is read before any handler may answer.
    # ... up to `batch.max_file_bytes` for a file upload (POST /v1/files) only.
    upload_limit = gateway.config.batch.max_file_bytes + FORM_SLACK
    app.asgi_app = BodyFirst(app.asgi_app, limits.max_body_bytes, limits.body_timeout_s,  # type: ignore[method-assign,assignment]
                             write_timeout_s=limits.write_timeout_s,
                             uploads={UPLOAD_PATH: upload_limit},
                             caller_known=partial(known_caller, gateway))

    cors = Cors(gateway.config.cors)
    console_enabled = gateway.config.console.enabled

    @app.before_request
    async def assign_request_id() -> Response | None:
        g.request_id = new_request_id()
        # A browser's preflight carries no key and may name any path: answered first.
        if (preflight := cors.preflight(request.method, _lower(request.headers.items()))) is not None:
            return preflight
        if isinstance(request.routing_exception, RequestRedirect):  # /console -> /console/
            moved = request.routing_exception
            return Response("", moved.code, headers={"location": moved.new_url})
        if request.routing_exception is not None:
            raise request.routing_exception  # a wrong path or method says so, whatever the body
        match request.scope.get(REFUSAL):
            case "too_large" if request.path == UPLOAD_PATH and request.method == "POST":
                await identity()  # a caller without a valid key hears 401, not the size
                raise file_too_large(gateway.config.batch.max_file_bytes)
            case "too_large":
                raise GatewayError(413, "request_too_large",
                                   f"the body exceeds {limits.max_body_bytes} bytes "
                                   f"(limits.max_body_bytes = {limits.max_body_bytes})",
                                   details={"limit": "max_body_bytes", "max": limits.max_body_bytes})
            case "too_slow":
                raise GatewayError(408, "request_timeout",
                                   f"the body did not arrive within {limits.body_timeout_s:g} s")
        return None

    @app.after_request
    async def tag_response(response: Response) -> Response:
        response.headers["x-request-id"] = getattr(g, "request_id", None) or new_request_id()
        cors.decorate(response, request.headers.get("origin"))
        return response

    @app.errorhandler(GatewayError)
    async def render_error(error: GatewayError) -> Response:
        """The one place errors become responses, in the shape the caller's API uses (a
        page, for the console's paths)."""
        if console_enabled and is_console(request.path):
            if error.status >= 400:
                log_event("request_rejected", request_id=getattr(g, "request_id", ""),
                          path=request.path, status=error.status, code=error.code)
            return await error_page(error)
        dialect = dialect_of_path(request.path)
        response = json_response(dialect.shape(error.encode(), error.status), error.status)
        response.headers.update(error.headers)
        if error.code in NO_RETRY:  # the OpenAI SDKs read it: retrying cannot help
            response.headers["x-should-retry"] = "false"
        if error.retry_after is not None:
            response.headers["retry-after"] = str(error.retry_after)
        elif error.status == 429:  # every 429 says when to try again (SDK back-off reads it)
            response.headers["retry-after"] = "1"
        if error.status >= 400:
            log_event("request_rejected", request_id=getattr(g, "request_id", ""),
                      path=request.path, status=error.status, code=error.code)
        return response

    @app.errorhandler(SignInNeeded)
    async def to_sign_in(_: SignInNeeded) -> Response:
        return sign_in_redirect()

    @app.errorhandler(HTTPException)
    async def render_http_error(error: HTTPException) -> Response:
        status = error.code or 500
        if status == 404:
            failure = GatewayError(404, "not_found", f"no endpoint {request.method} {request.path}; "
                                   f"served: {served_endpoints(app)}")
        elif status == 405:
            allowed = sorted(error.valid_methods or []) if isinstance(error, MethodNotAllowed) else []
            failure = GatewayError(405, "method_not_allowed",
                                   f"{request.method} is not allowed on {request.path}; "
                                   f"use {' or '.join(allowed) or 'another method'}")
        else:
            failure = GatewayError(status, "http_error", error.name)
        return await render_error(failure)

    @app.errorhandler(Exception)
    async def render_crash(error: Exception) -> Response:
        # A bug answers 500 in the documented shape; the process keeps serving.
        log_event("request_crashed", request_id=getattr(g, "request_id", ""), path=request.path,
                  error=type(error).__name__)
        return await render_error(GatewayError(500, "internal_error",
                                               "the gateway failed while handling this request"))

    @app.post("/v1/chat/completions")
    @app.post("/v3/router/chat/completions")
    async def chat_completions() -> Response:
        return await relay(gateway.chat)

    @app.post("/v1/embeddings")
    @app.post("/v3/router/embeddings")
    async def embeddings() -> Response:
        return await relay(gateway.embeddings)

    app.register_blueprint(completions)  # /v1/completions
    app.register_blueprint(media)  # /v1/images/generations, /v1/audio/{transcriptions,translations}
    app.register_blueprint(native)
    app.register_blueprint(responses)  # /v1/responses and /v3/router/responses (+ stored)
    app.register_blueprint(reports)  # /v1/admin/usage, /v1/admin/usage.csv, /v1/admin/requests
    app.register_blueprint(admin)
    app.register_blueprint(files)  # /v1/files (the Files API, for batches)
    app.register_blueprint(batches)  # /v1/batches
    if console_enabled:
        app.register_blueprint(console)  # /console: the web pages (ingress/console/)

        @app.get("/")
        async def home() -> Response:
            return Response("", 303, headers={"location": "/console/"})

    @app.get("/v1/models")
    @app.get("/v3/router/models")
    async def list_models() -> Response:
        await identity()
        return json_response(gateway.catalog.model_list())

    @app.get("/v1/models/<path:model_id>")
    @app.get("/v3/router/models/<path:model_id>")
    async def retrieve_model(model_id: str) -> Response:
        await identity()
        gateway.bounds.model(model_id, "model_id")
        return json_response(gateway.catalog.model_card(model_id))

    @app.get("/v1/router/models")
    async def router_models() -> Response:
        await identity()
        return json_response(gateway.catalog.router_list())

    @app.get("/v1/router/models/<path:model_id>/providers")
    async def model_providers(model_id: str) -> Response:
        await identity()
        gateway.bounds.model(model_id, "model_id")
        return json_response(gateway.catalog.providers_of(model_id))

    @app.get("/healthz")
    async def healthz() -> Response:
        return json_response({"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> Response:
        # A keyed read, not PING (which a cluster client sends to every master): the
        # shard that holds the gateway's names is the one that must answer.
        await gateway.redis_call(gateway.redis.exists([names.KEY_IDS]))
        if not gateway.hub.ready:
            raise GatewayError(503, "service_unavailable", "the reply channel is not subscribed")
        return json_response({"status": "ready"})

    @app.get("/metrics")
    async def metrics() -> Response:
        match gateway.config.metrics.ingress:
            case "off":  # as if there were no such endpoint
                raise GatewayError(404, "not_found", f"no endpoint GET {request.path}; "
                                   "metrics are off on this ingress (metrics.ingress)")
            case "key":
                await identity()
            case "operator":
                if (await identity()).role != "operator":
                    raise GatewayError(403, "forbidden", "the metrics of this ingress are for "
                                       "operator keys only (metrics.ingress = \"operator\")")
        return Response(await gateway.metrics.render(), 200, content_type=CONTENT_TYPE)

    @app.get("/openapi.json")
    async def openapi() -> Response:
        return json_response(openapi_document())

    return app


def edge(app: QuartTrio) -> BodyFirst:
    """The edge `create_app` put around the application (its write watch must be served)."""
    found = app.asgi_app
    assert isinstance(found, BodyFirst)
    return found


def is_console(path: str) -> bool:
    """Whether a path is one of the console's pages (errors there are drawn as pages)."""
    return path == "/console" or path.startswith("/console/")


async def known_caller(gateway: Gateway, scope: Mapping[str, Any]) -> bool:
    """Whether a request's `Authorization: Bearer` key is valid, asked by the edge before
    it reads an upload's body: only a known caller may send more than max_body_bytes."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, secret = bytes(value).decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and secret.strip():
                try:
                    await gateway.authenticate(secret.strip())
                    return True
                except GatewayError:
                    return False
    return False
