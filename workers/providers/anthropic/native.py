"""Anthropic's own Messages API relayed as it is, for `POST /anthropic/v1/messages`.

    client body   --native_request-->  the same JSON object, `model` = the route's upstream model
    Message body  --native_answer--->  the same JSON object, `model` = the client's slug
    SSE events    --NativeRelay----->  the same events in order (ping included), only
                                       message_start's `message.model` set to the slug; the
                                       preamble is released when content begins

Top-level keys are decoded as `msgspec.Raw`, so every value but the model keeps its
bytes; unknown parameters, beta fields and new event types pass through. Usage is read
from the answer's `usage` (cache reads and writes count as prompt tokens), or in a
stream from message_start and message_delta's running totals.

The client's `anthropic-version` and `anthropic-beta` headers travel in the job
(`Job.headers`) and override the provider's configured `anthropic_version`.
"""

from __future__ import annotations

import msgspec

from schemas.anthropic import (
    AnthropicUsage,
    block_delta_decoder,
    message_delta_decoder,
    usage_decoder,
)
from schemas.chat import Usage, raw_object_decoder
from schemas.errors import GatewayError
from workers.providers._base import malformed
from workers.providers._meter import UsageMeter
from workers.providers.anthropic.response import UsageCounter, event_failure, to_usage

_encode = msgspec.json.Encoder().encode


def _with_model(fields: dict[str, msgspec.Raw], model: str) -> bytes:
    """The object re-encoded with `model` replaced (in place: key order is kept)."""
    fields["model"] = msgspec.Raw(_encode(model))
    return _encode(fields)


def native_request(body: bytes, model: str) -> bytes:
    """The client's Messages request for upstream: untouched but for the model."""
    try:
        fields = raw_object_decoder.decode(body)
    except msgspec.DecodeError:
        raise GatewayError(400, "invalid_json", "the body is not a JSON object") from None
    return _with_model(fields, model)


def native_answer(content: bytes, slug: str, provider: str) -> tuple[bytes, Usage]:
    """The upstream Message for the client, `model` set to the slug, and its usage."""
    try:
        fields = raw_object_decoder.decode(content)
        raw_usage = fields.get("usage")
        counts = usage_decoder.decode(raw_usage) if raw_usage is not None else AnthropicUsage()
    except msgspec.DecodeError as exc:
        raise malformed(provider, "message", retryable=True) from exc
    return _with_model(fields, slug), to_usage(counts)


def _generated_chars(data: bytes) -> int:
    """Generated characters in a content_block_delta (0 for a shape we do not know: it is
    relayed as it is all the same)."""
    try:
        return block_delta_decoder.decode(data).delta.chars
    except msgspec.DecodeError:
        return 0


# Events that may come before any content; held back until content begins (see NativeRelay).
_PREAMBLE = frozenset({"message_start", "ping", "content_block_start"})


class NativeRelay:
    """Relays one stream's events in order; `done` once message_stop went by.

    The preamble (message_start, pings, a content block's start) is held back and released
    with the first event after it, as the chat translation emits nothing before content:
    an `error` event that comes before content (an overloaded_error can) leaves nothing
    published, so the runner may still retry (invariant 2). An `error`
    event is never relayed but raised as UpstreamFailure, classified like an error status;
    after output began the ingress ends the client's stream with its own error event.
    """

    def __init__(self, provider: str, slug: str, secret: str | None = None,
                 meter: UsageMeter | None = None) -> None:
        self.provider, self.slug, self.secret = provider, slug, secret
        self.counter = UsageCounter()
        self.meter = meter or UsageMeter()  # the running count, should the stream be cut
        self.done = False
        self._held: list[tuple[str, bytes]] = []
        self._began = False

    @property
    def usage(self) -> Usage:
        return self.counter.usage

    def feed(self, event: str, data: bytes) -> list[tuple[str, bytes]]:
        """The (event name, data) pairs ready to relay after the SSE event `event`, in order.

        Raises UpstreamFailure for an `error` event or a malformed one the gateway reads.
        """
        try:
            match event:
                case "message_start":
                    data = self._start(data)
                    self.meter.report(self.usage)
                case "content_block_delta":
                    self.meter.add_text(_generated_chars(data))
                case "message_delta":
                    self.counter.add(message_delta_decoder.decode(data).usage)
                    self.meter.report(self.usage)
                case "message_stop":
                    self.done = True
                case "error":
                    raise event_failure(self.provider, data, self.secret)
                case _:
                    pass  # ping, content blocks, and event types Anthropic adds later: as they are
        except msgspec.DecodeError as exc:
            raise malformed(self.provider, f"{event} event") from exc
        self._held.append((event, data))
        self._began = self._began or event not in _PREAMBLE
        if not self._began:
            return []
        ready, self._held = self._held, []
        return ready

    def _start(self, data: bytes) -> bytes:
        fields = raw_object_decoder.decode(data)
        raw_message = fields.get("message")
        if raw_message is None:
            raise msgspec.DecodeError("message_start without a message")
        message = raw_object_decoder.decode(raw_message)
        raw_usage = message.get("usage")
        if raw_usage is not None:
            self.counter.add(usage_decoder.decode(raw_usage))
        fields["message"] = msgspec.Raw(_with_model(message, self.slug))
        return _encode(fields)
