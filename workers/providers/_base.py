"""What every provider adapter is: one small interface, one failure type.

An adapter translates a job into its provider's request, calls upstream with httpx,
and translates the answer back into client-ready OpenAI bytes whose `model` is the
slug the client sent. It knows nothing of Redis, frames, retries or failover: the
runner owns those.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx2
import msgspec

from schemas.chat import Usage
from schemas.envelopes import Job
from schemas.errors import GatewayError
from schemas.providers import ProviderBase
from schemas.trace import new_span_id, parse_traceparent
from workers.providers._meter import UsageMeter


class Emit(Protocol):
    """Hands one client-ready chunk to the publisher; never blocks.

    `event` names the SSE event for dialects that name them (Anthropic's native stream).
    """

    def __call__(self, payload: bytes, event: str = "") -> None: ...


class UpstreamFailure(GatewayError):
    """A provider call failed.

    `retryable`: the same route may succeed if tried again (timeouts, 5xx, 429).
    `failover`: another route may succeed (anything that is not the client's fault).
    `retry_after`: the seconds the upstream asked us to wait (its `Retry-After` or
    `retry-after-ms` header; set by `workers.providers._http`), None when it said nothing.
    The worker uses it (workers/pace.py); it is never relayed to the client.
    """

    def __init__(self, status: int, code: str, message: str, *, provider: str,
                 upstream_status: int | None = None, retryable: bool = False,
                 failover: bool = True, retry_after: float | None = None) -> None:
        details: dict[str, Any] = {"provider": provider}
        if upstream_status is not None:
            details["status"] = upstream_status
        super().__init__(status, code, message, details=details)
        self.retryable = retryable
        self.failover = failover
        self.retry_after = retry_after


@dataclass(slots=True)
class Call:
    """One upstream attempt: the job, the upstream model its route names, and the running
    usage count a streaming adapter keeps (`meter`), read by the runner if the stream ends
    early."""

    job: Job
    upstream_model: str
    meter: UsageMeter = field(init=False)
    trace: dict[str, str] = field(init=False)  # this call's trace headers: a new span id
    span_id: str = field(init=False)  # that span id ("" when the job carries no trace)

    def __post_init__(self) -> None:
        self.meter = UsageMeter(self.job.body)
        context = parse_traceparent(self.job.traceparent, self.job.tracestate)
        self.span_id = new_span_id() if context else ""
        self.trace = context.child(self.span_id) if context else {}


@dataclass(slots=True)
class Answer:
    """A complete non-streamed answer: client-ready body bytes and the usage to meter."""

    body: bytes
    usage: Usage


class Adapter(Protocol):
    """The interface of a provider kind. Construct with (name, config, http client).

    `complete`/`stream` serve OpenAI chat completions; `embed` OpenAI embeddings;
    `native`/`native_stream` relay the provider's own API (`call.job.endpoint` says
    which) with only the model replaced. Kinds lacking one inherit AdapterBase's answer.
    """

    async def complete(self, call: Call) -> Answer:
        """Call upstream once and return the whole answer."""
        ...

    async def stream(self, call: Call, emit: Emit) -> Usage:
        """Call upstream once, `emit` each client-ready chunk, return the usage."""
        ...

    async def embed(self, call: Call) -> Answer:
        """Create embeddings; the answer is an OpenAI `list` of embeddings."""
        ...

    async def native(self, call: Call) -> Answer:
        """Relay a native request; the answer is the provider's own body."""
        ...

    async def native_stream(self, call: Call, emit: Emit) -> Usage:
        """Relay a native streamed request, emitting the provider's own events."""
        ...

    async def completion(self, call: Call) -> Answer:
        """A legacy completion (`text_completion`): relayed, or through the chat call."""
        ...

    async def completion_stream(self, call: Call, emit: Emit) -> Usage:
        """A streamed legacy completion, emitting `text_completion` chunks."""
        ...

    async def media(self, call: Call) -> Answer:
        """Images and audio (`images`, `transcriptions`, `translations`): the answer's body."""
        ...


class AdapterBase:
    """Default answers for what a provider kind does not serve: an explicit 400."""

    kind = "provider"

    def _unsupported(self, what: str) -> GatewayError:
        return GatewayError(400, "unsupported_endpoint",
                            f"provider kind {self.kind!r} does not serve {what}")

    async def complete(self, call: Call) -> Answer:
        raise self._unsupported("chat completions")

    async def stream(self, call: Call, emit: Emit) -> Usage:
        raise self._unsupported("chat completions")

    async def embed(self, call: Call) -> Answer:
        raise self._unsupported("embeddings")

    async def native(self, call: Call) -> Answer:
        raise self._unsupported(f"the native endpoint {call.job.endpoint!r}")

    async def native_stream(self, call: Call, emit: Emit) -> Usage:
        raise self._unsupported(f"the native endpoint {call.job.endpoint!r}")

    # Legacy completions go through the kind's chat call unless the kind relays them.
    # (Imported here: the translation builds on this module's Call and Answer.)
    async def completion(self, call: Call) -> Answer:
        from workers.providers._completions import complete_via_chat

        return await complete_via_chat(self, call, self.kind)

    async def completion_stream(self, call: Call, emit: Emit) -> Usage:
        from workers.providers._completions import stream_via_chat

        return await stream_via_chat(self, call, emit, self.kind)

    async def media(self, call: Call) -> Answer:
        raise self._unsupported(f"the {call.job.endpoint} endpoint")


def read_credential(config: ProviderBase) -> str | None:
    """The provider's secret from its environment variable or secret file, if any."""
    if config.api_key_env:
        value = os.environ.get(config.api_key_env)
        if value:
            return value.strip()
    if config.api_key_file:
        try:
            return Path(config.api_key_file).read_text().strip()
        except OSError:
            return None
    return None


# Fields the ingress and runner handle for every kind, and JSON values that mean "not set".
ROUTED_FIELDS = frozenset({"model", "stream", "stream_options"})
ABSENT = frozenset({b"null", b"{}", b"[]"})


def unsupported_parameter(kind: str, param: str, what: str = "") -> GatewayError:
    """The 400 for an OpenAI parameter a provider kind cannot honour."""
    return GatewayError(400, "unsupported_parameter",
                        f"{what or f'`{param}`'} is not supported by provider kind {kind!r}",
                        param=param)


def screen_fields(raw: dict[str, msgspec.Raw], kind: str, *, translated: Collection[str],
                  harmless: Collection[str] = ()) -> list[str]:
    """Refuse every set field a translation does not know: it could change the answer.

    Returns the `harmless` fields that are set; they are not forwarded (callers log them).
    """
    for key in sorted(raw.keys() - ROUTED_FIELDS - set(harmless) - set(translated)):
        if bytes(raw[key]) not in ABSENT:
            raise unsupported_parameter(kind, key)
    return sorted(key for key in raw.keys() & set(harmless) if bytes(raw[key]) not in ABSENT)


# Upstream statuses that are the client's fault: relayed as they are, never retried.
CLIENT_FAULT = frozenset({400, 413, 422})
REDACTED = "[redacted]"


def redact(text: str, secret: str | None) -> str:
    """`text` with the provider's credential blotted out, should the provider echo it."""
    return text.replace(secret, REDACTED) if secret and secret in text else text


def status_failure(provider: str, status: int, message: str = "", code: str | None = None, *,
                   secret: str | None = None, ours: bool = False, label: str = "") -> UpstreamFailure:
    """Classify a provider's non-200 answer: the one rule every kind applies.

    400/413/422 are the client's own mistake (context too long, a bad parameter): relayed
    with the provider's status, code and message (the credential redacted from both), never
    retried or failed over — unless `ours` (the provider says our key or project is at
    fault). 408/409/429 and 5xx (Anthropic's 529 overloaded included) are retryable.
    Anything else (401, 403, 404: our credential or route is wrong) fails over without
    retrying. Outside client faults only the status and `label` (the provider's error
    type) are told, never the provider's message.
    """
    if status in CLIENT_FAULT and not ours:
        # The code is relayed and logged too: it gets the same redaction as the message.
        return UpstreamFailure(status, redact(code or "", secret) or "upstream_invalid_request",
                               redact(message, secret) or f"provider {provider!r} rejected the request",
                               provider=provider, upstream_status=status, failover=False)
    retryable = status in (408, 409, 429) or status >= 500
    answered = f"{status} {label}".strip() if label else str(status)
    return UpstreamFailure(502, "upstream_error", f"provider {provider!r} answered {answered}",
                           provider=provider, upstream_status=status, retryable=retryable)


def malformed(provider: str, what: str = "JSON", *, retryable: bool = False) -> UpstreamFailure:
    """The provider sent something the gateway cannot read."""
    return UpstreamFailure(502, "upstream_error", f"provider {provider!r} sent a malformed {what}",
                           provider=provider, retryable=retryable)


def cut_short(provider: str, before: str = "the answer was complete") -> UpstreamFailure:
    """The provider's stream ended before its end marker (retryable until output began)."""
    return UpstreamFailure(502, "upstream_error", f"provider {provider!r} ended the stream before {before}",
                           provider=provider, retryable=True)


def transport_failure(provider: str, exc: Exception) -> UpstreamFailure:
    """Map an httpx error to a failure; never includes request headers or URLs with secrets."""
    if isinstance(exc, httpx2.TimeoutException):
        return UpstreamFailure(504, "upstream_timeout", f"provider {provider!r} timed out",
                               provider=provider, retryable=True)
    return UpstreamFailure(502, "upstream_error",
                           f"provider {provider!r} could not be reached ({type(exc).__name__})",
                           provider=provider, retryable=True)
