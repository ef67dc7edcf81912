"""Anthropic's Messages API wire shapes (`POST /v1/messages`).

    MessagesRequest ──> POST /v1/messages              (what the chat translation sends)
    AnthropicMessage <── one body                      (the fields the translation reads)
    MessageStart, BlockStart, BlockDelta, MessageDelta <── SSE events, named by their `type`
    ErrorBody <── any non-200 answer (and the data of an `error` event inside a stream)

Request blocks are a tagged union on `type`; absent optional fields are omitted when
encoding. Answer shapes hold only what the gateway reads and ignore the rest, so new
block and event kinds pass through. Native relays read even less: the top-level keys as
`msgspec.Raw` (`schemas.chat.raw_object_decoder`), to set the model and leave every other byte alone.

References: https://docs.anthropic.com/en/api/messages,
https://docs.anthropic.com/en/api/messages-streaming, https://docs.anthropic.com/en/api/errors.
"""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import UNSET, Struct, UnsetType

from schemas.errors import detail_of

# The HTTP status each error `type` has outside a stream (an `error` event carries none).
ERROR_STATUS = {
    "invalid_request_error": 400, "authentication_error": 401, "billing_error": 402,
    "permission_error": 403, "not_found_error": 404, "request_too_large": 413,
    "rate_limit_error": 429, "api_error": 500, "overloaded_error": 529,
}


# ── request content blocks ───────────────────────────────────────────────────────
class Source(Struct, omit_defaults=True):
    type: str  # base64 | url
    media_type: str | None = None
    data: str | None = None
    url: str | None = None


class TextBlock(Struct, tag="text"):
    text: str


class ImageBlock(Struct, tag="image"):
    source: Source


class DocumentBlock(Struct, tag="document"):
    source: Source


class ToolUseBlock(Struct, tag="tool_use"):
    id: str
    name: str
    input: dict[str, Any]


class ToolResultBlock(Struct, tag="tool_result"):
    tool_use_id: str
    content: str | list[TextBlock]


InputBlock = TextBlock | ImageBlock | DocumentBlock | ToolUseBlock | ToolResultBlock


# ── request ──────────────────────────────────────────────────────────────────────
class Turn(Struct):
    """One entry of `messages`: a role and its content blocks."""

    role: str
    content: list[InputBlock]


class ToolParam(Struct, omit_defaults=True):
    name: str
    input_schema: dict[str, Any]
    description: str | UnsetType = UNSET
    strict: bool | UnsetType = UNSET


class ToolChoiceParam(Struct, omit_defaults=True):
    type: str  # auto | any | tool | none
    name: str | UnsetType = UNSET
    disable_parallel_tool_use: bool | UnsetType = UNSET


class MessagesRequest(Struct, omit_defaults=True):
    model: str
    max_tokens: int
    messages: list[Turn]
    system: list[TextBlock] | None = None
    stop_sequences: list[str] | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    tools: list[ToolParam] | None = None
    tool_choice: ToolChoiceParam | None = None
    metadata: dict[str, str] | None = None
    output_config: dict[str, Any] | None = None
    stream: bool = False


# ── answer ───────────────────────────────────────────────────────────────────────
class AnthropicUsage(Struct):
    """Token counts; in stream events each field, when present, is the running total."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None

    def prompt_tokens(self) -> int | None:
        """Every prompt token, cached or not (OpenAI counts cached ones in prompt_tokens)."""
        if self.input_tokens is None:
            return None
        return (self.input_tokens + (self.cache_creation_input_tokens or 0)
                + (self.cache_read_input_tokens or 0))


class ContentBlock(Struct):
    type: str  # text | tool_use | thinking | ... (kinds not asked for are ignored)
    text: str = ""
    id: str = ""
    name: str = ""
    input: msgspec.Raw = msgspec.Raw(b"{}")


class AnthropicMessage(Struct):
    id: str
    content: list[ContentBlock]
    usage: AnthropicUsage
    stop_reason: str | None = None


# ── stream events (each event's data; its `type` is also the SSE event name) ─────
class MessageStart(Struct):
    message: AnthropicMessage


class BlockStart(Struct):
    index: int
    content_block: ContentBlock


class BlockDeltaBody(Struct):
    type: str  # text_delta | input_json_delta | thinking_delta | ...
    text: str = ""
    partial_json: str = ""
    thinking: str = ""

    @property
    def chars(self) -> int:
        """Characters of generated text (for the running usage estimate of a cut stream)."""
        return len(self.text) + len(self.partial_json) + len(self.thinking)


class BlockDelta(Struct):
    index: int
    delta: BlockDeltaBody


class StopReason(Struct):
    stop_reason: str | None = None


class MessageDelta(Struct):
    delta: StopReason = msgspec.field(default_factory=StopReason)
    usage: AnthropicUsage = msgspec.field(default_factory=AnthropicUsage)


# ── errors ───────────────────────────────────────────────────────────────────────
class AnthropicError(Struct):
    type: str = ""
    message: str = ""


class ErrorBody(Struct):
    error: AnthropicError | None = None


message_decoder = msgspec.json.Decoder(AnthropicMessage)
message_start_decoder = msgspec.json.Decoder(MessageStart)
block_start_decoder = msgspec.json.Decoder(BlockStart)
block_delta_decoder = msgspec.json.Decoder(BlockDelta)
message_delta_decoder = msgspec.json.Decoder(MessageDelta)
usage_decoder = msgspec.json.Decoder(AnthropicUsage)
error_decoder = msgspec.json.Decoder(ErrorBody)


# ── the gateway's own errors, in Anthropic's shape (for the native endpoint's clients) ──
class GatewayErrorDetail(Struct, omit_defaults=True):
    type: str
    message: str
    code: str
    param: str | None = None
    details: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET


class GatewayErrorBody(Struct):
    error: GatewayErrorDetail
    type: str = "error"


# Anthropic's error type by HTTP status (https://docs.anthropic.com/en/api/errors): any
# 4xx not listed there is an invalid_request_error; 5xx an api_error, but for the ones
# that say "try again later" (503 from the gateway, 529 from Anthropic): overloaded_error.
GATEWAY_TYPES = {401: "authentication_error", 402: "billing_error", 403: "permission_error",
                 404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
                 503: "overloaded_error", 529: "overloaded_error"}


def error_type(status: int) -> str:
    """Anthropic's error `type` for an HTTP status."""
    return GATEWAY_TYPES.get(status, "invalid_request_error" if 400 <= status < 500 else "api_error")


_encode = msgspec.json.Encoder().encode


def error_dialect(body: bytes, status: int) -> bytes:
    """A gateway error body in Anthropic's shape: {"type": "error", "error": {...}}; the
    gateway's code travels along, so the Anthropic SDK reads the error and users see why."""
    detail = detail_of(body)
    kind = error_type(status)
    return _encode(GatewayErrorBody(GatewayErrorDetail(
        kind, detail.message, detail.code, detail.param, detail.details)))
