"""The Responses API relayed to an upstream that serves it natively (`responses = "native"`
on an `openai` provider): `POST {base_url}/responses`.

The resolved request goes up as a Responses request with the route's upstream model and
`store: false` (the gateway keeps the state: agents, variables and history are resolved
already); the answer comes back with the gateway's response id and the client's `model`,
and is stored like a translated one. Built-in tools are served by translation only.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import msgspec

from schemas.chat import Usage
from schemas.errors import GatewayError
from schemas.responses import Item, Resolved
from workers.providers._base import Answer, Call, Emit, UpstreamFailure, cut_short, malformed
from workers.providers._http import Upstream
from workers.responses.builtins import BUILTINS

RawObject = dict[str, msgspec.Raw]
_decode_object = msgspec.json.Decoder(RawObject).decode
_encode = msgspec.json.Encoder().encode
Store = Callable[[bytes, list[Item]], Awaitable[None]]  # (response JSON, output items)


class NativeUpstream(Protocol):
    """What the relay needs of the route's adapter (the openai kind's has both)."""

    base: str
    upstream: Upstream


class _Usage(msgspec.Struct):
    input_tokens: int = 0
    output_tokens: int = 0


class _Head(msgspec.Struct):
    output: list[dict[str, Any]] = []
    usage: _Usage | None = None


_decode_head = msgspec.json.Decoder(_Head).decode
_KEPT = ("message", "function_call", "function_call_output")


def request_body(resolved: Resolved, upstream_model: str) -> bytes:
    """The upstream's Responses request."""
    if any(tool.type in BUILTINS for tool in resolved.tools):
        raise GatewayError(400, "unsupported_parameter", "built-in tools are not served on a "
                           "route that relays the Responses API natively", param="tools")
    body: dict[str, Any] = {"model": upstream_model, "input": resolved.context, "store": False,
                            "stream": resolved.stream}
    for key in ("instructions", "tool_choice", "parallel_tool_calls", "text",
                "max_output_tokens", "temperature", "top_p"):
        value = getattr(resolved, key)
        if value is not None:
            body[key] = value
    if resolved.tools:
        body["tools"] = resolved.tools
    if resolved.metadata:
        body["metadata"] = resolved.metadata
    return _encode(body)


def _ours(response: msgspec.Raw, resolved: Resolved, response_id: str,
          provider: str) -> tuple[bytes, _Head]:
    """The upstream's response object with the gateway's id, model and state fields."""
    try:
        fields = _decode_object(response)
        head = _decode_head(response)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise malformed(provider, "response") from exc
    fields["id"] = msgspec.Raw(_encode(response_id))
    fields["model"] = msgspec.Raw(_encode(resolved.model))
    fields["store"] = msgspec.Raw(_encode(resolved.store))
    fields["previous_response_id"] = msgspec.Raw(_encode(resolved.previous_response_id))
    return _encode(fields), head


def _items(head: _Head) -> list[Item]:
    """The output items a continuation can send again (reasoning items are not kept)."""
    kept = [item for item in head.output if item.get("type") in _KEPT]
    return msgspec.convert(kept, list[Item], strict=False)


def _usage(head: _Head) -> Usage:
    usage = head.usage or _Usage()
    return Usage(usage.input_tokens, usage.output_tokens, usage.input_tokens + usage.output_tokens)


async def complete(adapter: NativeUpstream, call: Call, resolved: Resolved, response_id: str,
                   store: Store) -> Answer:
    """One upstream call; the answer relayed with the gateway's id."""
    content = await adapter.upstream.post(f"{adapter.base}/responses",
                                          request_body(resolved, call.upstream_model))
    body, head = _ours(msgspec.Raw(content), resolved, response_id,
                       adapter.upstream.provider)
    await store(body, _items(head))
    return Answer(body, _usage(head))


async def stream(adapter: NativeUpstream, call: Call, resolved: Resolved, response_id: str,
                 emit: Emit, store: Store) -> Usage:
    """The upstream's events relayed in order (the response objects in them made ours)."""
    url = f"{adapter.base}/responses"
    async with adapter.upstream.events(url, request_body(resolved, call.upstream_model)) as events:
        async for event in events:
            try:
                fields = _decode_object(event.data)
                kind = msgspec.json.decode(fields.get("type", msgspec.Raw(b'""')), type=str)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                raise malformed(adapter.upstream.provider, "event") from exc
            head: _Head | None = None
            body = b""
            if "response" in fields:
                body, head = _ours(fields["response"], resolved, response_id,
                                  adapter.upstream.provider)
                fields["response"] = msgspec.Raw(body)
                call.meter.report(_usage(head))
            if kind in ("response.completed", "response.incomplete") and head is not None:
                await store(body, _items(head))
            emit(_encode(fields), kind)
            if kind in ("response.completed", "response.incomplete") and head is not None:
                return _usage(head)
            if kind in ("response.failed", "error"):
                raise UpstreamFailure(502, "upstream_error",
                                      f"provider {adapter.upstream.provider!r} failed the response",
                                      provider=adapter.upstream.provider, failover=False)
    raise cut_short(adapter.upstream.provider, "response.completed")
