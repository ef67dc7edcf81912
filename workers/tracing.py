"""OTLP span export with the OpenTelemetry SDK, off unless the config has `[tracing]`.

A leaf module: the ingress and the workers both import it, and it imports neither. The SDK
(the `otel` extra) is imported only when tracing is on, so a deployment without it never
loads it and needs nothing new installed.

    ingress  one SERVER span per inference request:  "POST /v1/chat/completions"
    worker   one CLIENT span per upstream call:      "chat {upstream model}"
             (OpenTelemetry's GenAI conventions: gen_ai.operation.name, gen_ai.provider.name,
             gen_ai.request.model, gen_ai.usage.input_tokens / output_tokens)

The ids are Switchboard's own (schemas/trace.py) and are chosen before any span exists:
the ingress span's id is the parent id its Job carries, and a worker span's id is the one
its upstream call's `traceparent` names. The SDK is handed those ids (`ChosenIds`), so the
exported spans and the propagated headers name the same spans: client -> ingress ->
worker call -> upstream is one trace. Sampling follows the parent (a client's `sampled`
flag `00` records nothing); a trace the ingress starts is sampled.

Spans carry ids, names, statuses and token counts; never content, keys or credentials
(invariant 6). A finished span joins the BatchSpanProcessor's queue (its own thread
exports it, nothing on the request path waits for the collector); `aclose` flushes the
queue when the process stops, within `[tracing] timeout_s`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Literal

import trio

from schemas.chat import Usage
from schemas.config import ConfigError, Tracing
from schemas.envelopes import Job
from schemas.errors import GatewayError
from schemas.kinds import KINDS
from schemas.trace import TraceContext, parse_traceparent

Attribute = str | int | float | bool
INSTALL = "pip install 'switchboard[otel]'"


@dataclass(slots=True)
class Span:
    """One span being timed, in Switchboard's hex ids; `Spans.end` exports it, once."""

    name: str
    kind: Literal["server", "client"]
    trace: TraceContext  # its trace id, flags and state
    span_id: str
    parent_id: str  # "" for a root span
    attributes: dict[str, Attribute] = field(default_factory=dict)
    start_ns: int = field(default_factory=time.time_ns)
    error: str = ""  # `error.type`: an error code, a status, or an exception's name
    failed: bool = False  # the span's status is ERROR
    ended: bool = False

    def tag(self, **fields: Attribute | None) -> None:
        """Set `switchboard.<name>` attributes (empty values are left out)."""
        for name, value in fields.items():
            if value is not None and value != "":
                self.attributes[f"switchboard.{name}"] = value


class Spans:
    """This process's span export; `on` only when the config has `[tracing]`.

    Owned by the process's top-level service (`run_ingress`, `run_workers`), which calls
    `aclose` on its way out.
    """

    def __init__(self, settings: Tracing | None = None, role: str = "") -> None:
        self.on = settings is not None
        self.timeout_s = settings.timeout_s if settings is not None else 0.0
        self._provider: Any = None
        if settings is not None:
            self._provider, self._tracer, self._ids, self._sdk = _start(settings, role)

    def request(self, trace: TraceContext, method: str, route: str, request_id: str) -> Span | None:
        """The SERVER span of one inference request, timed from now (None: not recorded)."""
        if self._provider is None or not trace.sampled:
            return None
        span = Span(f"{method} {route}", "server", trace, trace.parent_id, trace.caller,
                    {"http.request.method": method, "http.route": route})
        span.tag(request_id=request_id)
        return span

    def answered(self, span: Span | None, http_status: int, status: int | None = None,
                 error: str = "") -> None:
        """End a request's span: `http_status` went out in the head; `status` is how the
        request ended (a stream cut short: 502, the client left: 499); `error` its code."""
        if span is None:
            return
        status = http_status if status is None else status
        span.attributes["http.response.status_code"] = http_status
        span.tag(status=status)
        if status >= 400:
            span.error = error or str(status)
        span.failed = status >= 500  # a server span fails on its own errors, not the client's
        self.end(span)

    def refused(self, span: Span | None, exc: BaseException) -> None:
        """End the span of a request that raised before its answer: a GatewayError's status
        and code, a cancellation as 499 (the client left), anything else as 500."""
        if isinstance(exc, GatewayError):
            self.answered(span, exc.status, error=exc.code)
        elif isinstance(exc, trio.Cancelled):
            self.answered(span, 499, error="cancelled")
        else:
            self.answered(span, 500, error=type(exc).__name__)

    @contextmanager
    def upstream(self, job: Job, span_id: str, kind: str, attempt: int) -> Iterator[Span | None]:
        """Time one upstream call of `job` (its `traceparent` names `span_id`) as a CLIENT
        span; an exception leaving the block marks it failed, with the error's code."""
        context = parse_traceparent(job.traceparent, job.tracestate)
        if self._provider is None or context is None or not context.sampled or not span_id:
            yield None
            return
        route = job.route
        operation = "embeddings" if job.endpoint == "embeddings" else "chat"
        span = Span(f"{operation} {route.model}", "client", context, span_id, context.parent_id,
                    {"gen_ai.operation.name": operation,
                     "gen_ai.provider.name": _genai_provider(kind),
                     "gen_ai.request.model": route.model})
        span.tag(request_id=job.request_id, provider=route.provider, model=job.model,
                 attempt=attempt)
        if job.thread:
            span.attributes["gen_ai.conversation.id"] = job.thread
        try:
            yield span
        except BaseException as exc:
            span.failed = True
            if isinstance(exc, GatewayError):
                span.error = exc.code
                span.tag(status=exc.status)
                if exc.details and isinstance(exc.details.get("status"), int):
                    span.attributes["http.response.status_code"] = exc.details["status"]
            else:
                span.error = "timeout" if isinstance(exc, trio.TooSlowError) else (
                    "cancelled" if isinstance(exc, trio.Cancelled) else type(exc).__name__)
            raise
        else:
            span.tag(status=200)
        finally:
            self.end(span)

    @staticmethod
    def tokens(span: Span | None, usage: Usage) -> None:
        """Record an upstream call's token counts on its span."""
        if span is not None:
            span.attributes["gen_ai.usage.input_tokens"] = usage.prompt_tokens
            span.attributes["gen_ai.usage.output_tokens"] = usage.completion_tokens

    def end(self, span: Span) -> None:
        """Hand a finished span to the batch processor (once); never blocks."""
        if self._provider is None or span.ended:
            return
        span.ended = True
        api, trace = self._sdk.trace, span.trace
        context = self._sdk.Context()  # a root span: no parent, whatever the current context
        if span.parent_id:
            state = api.TraceState.from_header([trace.state]) if trace.state else None
            parent = api.SpanContext(int(trace.trace_id, 16), int(span.parent_id, 16),
                                     is_remote=True, trace_flags=api.TraceFlags(int(trace.flags, 16)),
                                     trace_state=state)
            context = api.set_span_in_context(api.NonRecordingSpan(parent))
        # start_span asks the generator for the new span's ids, synchronously, right here
        # (spans end only on the process's trio thread, so nothing else sets `chosen` now).
        self._ids.chosen = (int(trace.trace_id, 16), int(span.span_id, 16))
        kind = api.SpanKind.SERVER if span.kind == "server" else api.SpanKind.CLIENT
        otel = self._tracer.start_span(span.name, context, kind, span.attributes,
                                       start_time=span.start_ns)
        if span.error:
            otel.set_attribute("error.type", span.error)
        if span.failed:
            otel.set_status(api.Status(api.StatusCode.ERROR))
        otel.end()

    async def aclose(self) -> None:
        """Export what is still queued and stop; bounded by `timeout_s` (after it, what is
        left is dropped: a process that is stopping must not hang on its collector)."""
        provider, self._provider = self._provider, None
        if provider is None:
            return
        with trio.CancelScope(shield=True), trio.move_on_after(self.timeout_s + 0.5):
            await trio.to_thread.run_sync(provider.shutdown, abandon_on_cancel=True)


def _genai_provider(kind: str) -> str:
    """The kind's `gen_ai.provider.name` (a well-known value where the conventions have one)."""
    row = KINDS.get(kind)
    return row.genai if row is not None and row.genai else kind


def check(settings: Tracing | None) -> None:
    """Fail at start (ConfigError) when `[tracing]` is set but the SDK is not installed."""
    if settings is not None:
        _sdk()


def _sdk() -> SimpleNamespace:
    """The OpenTelemetry names this module uses, imported now (only with tracing on)."""
    try:
        from opentelemetry import trace
        from opentelemetry.context import Context
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.id_generator import IdGenerator
        from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
    except ImportError as exc:
        raise ConfigError(f"the config sets [tracing], but the OpenTelemetry SDK is not installed "
                          f"({exc.name} is missing): install the extra, {INSTALL}") from None
    return SimpleNamespace(trace=trace, Context=Context, OTLPSpanExporter=OTLPSpanExporter,
                           Resource=Resource, TracerProvider=TracerProvider,
                           BatchSpanProcessor=BatchSpanProcessor, IdGenerator=IdGenerator,
                           ALWAYS_ON=ALWAYS_ON, ParentBased=ParentBased)


def _start(settings: Tracing, role: str) -> tuple[Any, Any, Any, SimpleNamespace]:
    """A tracer provider of our own (never the global one) exporting over OTLP/HTTP."""
    sdk = _sdk()

    class ChosenIds(sdk.IdGenerator):  # type: ignore[misc,name-defined]
        """The ids of the span being recorded, chosen (and sent on) before it existed."""

        chosen = (0, 0)

        def generate_trace_id(self) -> int:
            return self.chosen[0]

        def generate_span_id(self) -> int:
            return self.chosen[1]

    base = settings.otlp_endpoint.rstrip("/")
    endpoint = base if base.endswith("/v1/traces") else base + "/v1/traces"
    ids = ChosenIds()
    resource = sdk.Resource.create({"service.name": settings.service_name,
                                    "switchboard.role": role})
    # Parent-based: a client's unsampled trace stays unrecorded; a new trace is recorded.
    provider = sdk.TracerProvider(sampler=sdk.ParentBased(sdk.ALWAYS_ON), id_generator=ids,
                                  resource=resource, shutdown_on_exit=False)  # aclose flushes
    # The exporter reads OTEL_EXPORTER_OTLP_HEADERS (a collector's token) from the
    # environment, and the processor its OTEL_BSP_* knobs (queue size, delay).
    provider.add_span_processor(sdk.BatchSpanProcessor(
        sdk.OTLPSpanExporter(endpoint=endpoint, timeout=settings.timeout_s)))
    return provider, provider.get_tracer("switchboard"), ids, sdk
