"""W3C Trace Context (https://www.w3.org/TR/trace-context/): the `traceparent` header.

    traceparent: 00-<trace-id: 32 hex>-<parent-id: 16 hex>-<trace-flags: 2 hex>

The ingress accepts a valid `traceparent` from the client (and its `tracestate`), or
starts a trace whose trace id is the request id's hex; either way the request gets a span
id of its own (the ingress's span, a child of the client's), which the Job carries as its
parent id, and the worker sends each upstream call a `traceparent` with the same trace id
and flags and a fresh parent id (the span of that call). So the spans exported with
tracing on (workers/tracing.py) line up: client -> ingress -> worker call -> upstream.
Parsing follows the spec's rules: lower-case hex only, version `ff` and all-zero ids are
invalid, version `00` is exactly 55 characters, a higher version is parsed by its first
four fields (and forwarded as `00`, the version this code speaks). An invalid header is
ignored, with its `tracestate`.
"""

from __future__ import annotations

import re
import secrets

from msgspec import Struct

_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
MAX_TRACESTATE_CHARS = 512  # the spec asks vendors to propagate at least this much


class TraceContext(Struct, frozen=True):
    """The trace a request belongs to, as the ingress received or started it."""

    trace_id: str
    parent_id: str  # the span the next hop is a child of (at the ingress: its own span)
    flags: str = "00"
    state: str = ""  # the client's `tracestate`, forwarded as it is
    caller: str = ""  # the client's span id, the ingress span's parent ("": a new trace)

    @property
    def sampled(self) -> bool:
        """The `sampled` trace flag: the caller records this trace (W3C: bit 0 of flags)."""
        return bool(int(self.flags, 16) & 1)

    def child(self, span_id: str | None = None) -> dict[str, str]:
        """The headers of one upstream call: same trace, a new span id (`span_id`, if given)."""
        headers = {"traceparent": f"00-{self.trace_id}-{span_id or new_span_id()}-{self.flags}"}
        if self.state:
            headers["tracestate"] = self.state
        return headers

    def header(self) -> str:
        """This context as a `traceparent` value (what the Job carries)."""
        return f"00-{self.trace_id}-{self.parent_id}-{self.flags}"


def new_span_id() -> str:
    """A random, non-zero 8-byte span id in hex."""
    while True:
        span = secrets.token_hex(8)
        if span != "0" * 16:
            return span


def parse_traceparent(value: str | None, state: str | None = None) -> TraceContext | None:
    """The context of a valid `traceparent` header, or None for a missing or invalid one."""
    if not value:
        return None
    value = value.strip(" \t")  # optional whitespace around a header value
    match = _TRACEPARENT.match(value)
    if match is None:
        return None
    version, trace_id, parent_id, flags = match.groups()
    if version == "ff" or trace_id == "0" * 32 or parent_id == "0" * 16:
        return None
    if version == "00" and len(value) != 55:
        return None
    if len(value) > 55 and value[55] != "-":  # a future version may only append fields
        return None
    state = (state or "").strip(" \t")
    if len(state) > MAX_TRACESTATE_CHARS:
        state = ""  # too long to propagate whole; the spec allows dropping it
    return TraceContext(trace_id, parent_id, flags, state)


def incoming(value: str | None, state: str | None, request_id: str,
             sampled: bool = False) -> TraceContext:
    """The request's trace, whose parent id is a new span: the ingress's own.

    It continues the client's trace (`caller` is the client's span), or starts one whose
    trace id derives from the request id (`req_<32 hex>` -> those 32 hex), flagged
    `sampled` when this ingress records its spans (the client's flags are kept as sent)."""
    found = parse_traceparent(value, state)
    if found is not None:
        return TraceContext(found.trace_id, new_span_id(), found.flags, found.state,
                            caller=found.parent_id)
    trace_id = request_id.removeprefix("req_")
    if not re.fullmatch(r"[0-9a-f]{32}", trace_id) or trace_id == "0" * 32:
        trace_id = secrets.token_hex(16)
    return TraceContext(trace_id, new_span_id(), "01" if sampled else "00")
