"""A fake OpenTelemetry collector: OTLP/HTTP `POST /v1/traces`, protobuf bodies.

Decodes each `ExportTraceServiceRequest` with the official protobuf classes
(opentelemetry-proto) and records every span, flattened, in `spans`; answers 200 with an
empty `ExportTraceServiceResponse`, as a collector does (or, with `hang`, never). Serve it
with `serve_asgi`; the origin it starts with is what `[tracing] otlp_endpoint` takes.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from typing import Any

import trio
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from tests.fakes.server import Received, ScriptedUpstream

KINDS = {Span.SPAN_KIND_SERVER: "server", Span.SPAN_KIND_CLIENT: "client",
         Span.SPAN_KIND_INTERNAL: "internal"}


@dataclass
class Recorded:
    """One exported span, ids in lower-case hex (`parent_id` "" for a root span)."""

    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, Any]
    resource: dict[str, Any]
    error: bool  # status code ERROR
    trace_state: str
    duration_ns: int


def _value(value: AnyValue) -> Any:
    field = value.WhichOneof("value")
    return getattr(value, field) if field else None


class FakeCollector(ScriptedUpstream[None]):
    """The ASGI app; every span of every export lands in `spans`."""

    def __init__(self, hang: bool = False) -> None:
        super().__init__(lambda: None)
        self.spans: list[Recorded] = []
        self.hang = hang  # a collector that takes each export and never answers

    async def answer(self, received: Received, receive: Any, send: Any) -> None:
        if self.hang:
            await trio.sleep_forever()
        if received.method != "POST" or received.path != "/v1/traces":
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        raw = received.raw
        if received.headers.get("content-encoding") == "gzip":
            raw = gzip.decompress(raw)
        export = ExportTraceServiceRequest.FromString(raw)
        for resource_spans in export.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(Recorded(
                        span.name, KINDS.get(span.kind, str(span.kind)), span.trace_id.hex(),
                        span.span_id.hex(), span.parent_span_id.hex(),
                        {a.key: _value(a.value) for a in span.attributes}, resource,
                        span.status.code == Status.STATUS_CODE_ERROR, span.trace_state,
                        span.end_time_unix_nano - span.start_time_unix_nano))
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/x-protobuf")]})
        await send({"type": "http.response.body",
                    "body": ExportTraceServiceResponse().SerializeToString()})
