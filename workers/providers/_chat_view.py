"""The detailed view of an OpenAI chat request that translating kinds decode, and its helpers.

    job body ──decode_chat──> ChatView (+ the harmless fields set, screened out)
                                 │  a shape violation anywhere in it: 422 `validation_error`,
                                 │  `details.field` the JSON path (as the ingress's decode_body)
    data:[<mediatype>][;base64],<data> ──parse_data_url──> InlineData(mime_type, base64 data)
    harmless fields set ──log_not_forwarded──> one `fields_not_forwarded` log line

The ingress validates only the fields every kind needs (`schemas.chat.ChatRequest`); kinds
that translate the request (anthropic, gemini) read the parts it leaves opaque: content parts
(text, refusal, image_url, file, input_audio), tool calls, tool results, tools, tool_choice,
response_format. Each kind says which top-level fields it translates and which are harmless
(never change the answer, dropped and logged); any other field that is set is refused by
`screen_fields` as an `unsupported_parameter` 400.
"""

from __future__ import annotations

import base64
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, Generic, NamedTuple, TypeVar
from urllib.parse import unquote_to_bytes

import msgspec
from msgspec import Struct

from schemas.chat import FunctionCall, FunctionDef, ResponseFormat, ToolChoice, raw_object_decoder
from schemas.errors import GatewayError
from workers.logs import log_event
from workers.providers._base import Call, screen_fields

T = TypeVar("T")

# Fields that never change the answer: accepted, not forwarded, logged (`log_not_forwarded`).
HARMLESS = frozenset({"metadata", "store", "service_tier", "safety_identifier",
                      "prompt_cache_key", "prediction"})


# ── the view ─────────────────────────────────────────────────────────────────────
class ImageURL(Struct):
    url: str
    detail: str | None = None


class File(Struct):
    file_data: str | None = None
    file_id: str | None = None
    filename: str | None = None


class InputAudio(Struct):
    data: str
    format: str


class Part(Struct):
    """One content part; which field is set depends on `type`."""

    type: str
    text: str | None = None
    refusal: str | None = None
    image_url: ImageURL | None = None
    file: File | None = None
    input_audio: InputAudio | None = None


class GoogleExtra(Struct):
    thought_signature: str | None = None


class ExtraContent(Struct):
    google: GoogleExtra | None = None


class ToolCall(Struct):
    """An assistant's tool call; `extra_content` carries what Gemini asked to get back."""

    id: str
    function: FunctionCall
    type: str = "function"
    extra_content: ExtraContent | None = None


class Message(Struct):
    role: str
    content: str | list[Part] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class Tool(Struct):
    function: FunctionDef | None = None  # absent for tool types other than "function"
    type: str = "function"


class ChatView(Struct):
    """Every field of an OpenAI chat request some translating kind reads or refuses."""

    messages: list[Message]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    stop: str | list[str] | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None  # not OpenAI's; Anthropic's and Gemini's own sampling knob
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    n: int | None = None
    tools: list[Tool] | None = None
    tool_choice: str | ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    user: str | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    logit_bias: dict[str, Any] | None = None
    functions: Any = None
    function_call: Any = None
    audio: Any = None
    modalities: list[str] | None = None
    reasoning_effort: Any = None
    web_search_options: Any = None


_decode_view = msgspec.json.Decoder(ChatView).decode


@dataclass
class Translation(Generic[T]):
    """A kind's upstream request and the names of accepted fields that were not forwarded."""

    request: T
    ignored: list[str] = field(default_factory=list)


# ── decoding ─────────────────────────────────────────────────────────────────────
def invalid_field(path: str, reason: str) -> GatewayError:
    """The 422 for a value of the request at `path` (`$` or `$.a[0].b`) that has the wrong shape."""
    at = f" - at `{path}`" if path != "$" else ""
    return GatewayError(422, "validation_error", f"invalid request: {reason}{at}",
                        param=path.removeprefix("$.") if path != "$" else None,
                        details={"field": path, "reason": reason})


def _shape_error(exc: msgspec.DecodeError) -> GatewayError:
    reason, _, where = str(exc).partition(" - at `")
    return invalid_field(where.rstrip("`") or "$", reason)


def decode_chat(body: bytes, kind: str, *, translated: Collection[str],
                harmless: Collection[str]) -> tuple[ChatView, list[str]]:
    """The view of a chat request body and the `harmless` fields it sets (to log, not forward).

    Fields neither `translated` nor `harmless` are refused first (`screen_fields`, 400); a
    body that does not fit the view is a 422 `validation_error` naming the field (the
    ingress checked it is JSON: what fails here is the shape of a detailed part).
    """
    try:
        raw = raw_object_decoder.decode(body)
        ignored = screen_fields(raw, kind, translated=translated, harmless=harmless)
        return _decode_view(body), ignored
    except msgspec.DecodeError as exc:  # ValidationError included
        raise _shape_error(exc) from None


def dropped_details(view: ChatView) -> list[str]:
    """Harmless details inside messages that no translating kind forwards, in request order:
    a message's `name` and an image's `detail` other than "auto"."""
    dropped: list[str] = []
    for message in view.messages:
        if message.name and "messages[].name" not in dropped:
            dropped.append("messages[].name")
        for part in message.content if isinstance(message.content, list) else ():
            image = part.image_url
            if (part.type == "image_url" and image is not None and image.detail not in (None, "auto")
                    and "image_url.detail" not in dropped):
                dropped.append("image_url.detail")
    return dropped


def log_not_forwarded(call: Call, provider: str, fields: list[str]) -> None:
    """The one log line for accepted fields a provider was not sent (none: no line)."""
    if fields:
        log_event("fields_not_forwarded", request_id=call.job.request_id, provider=provider,
                  fields=fields)


# ── data URLs (RFC 2397) ─────────────────────────────────────────────────────────
class InlineData(NamedTuple):
    """The media type (parameters dropped) and the base64 payload of a data URL."""

    mime_type: str
    data: str


_FORM = "not a data URL of the form data:[<mediatype>][;base64],<data>"


def parse_data_url(url: str, param: str) -> InlineData | None:
    """The inline data of a `data:` URL; None for any other URL. `param` locates it in the
    request (`messages[0].content[1].image_url.url`).

    RFC 2397: `data:[<mediatype>][;base64],<data>`. The media type defaults to text/plain
    (also when only parameters such as `;charset=` are given); parameters must be
    `attribute=value`, and a bare `base64` only last. Base64 data is passed on as sent (the
    provider judges it); percent-encoded data is decoded and base64-encoded. Anything else
    (no comma, a bare parameter) is a 422 `validation_error` at `param`.
    """
    if url[:5].lower() != "data:":  # schemes are case-insensitive
        return None
    header, comma, payload = url[5:].partition(",")
    mime, *params = header.split(";")
    encoded = bool(params) and params[-1].strip().lower() == "base64"
    if encoded:
        params.pop()
    if not comma or any("=" not in attribute for attribute in params):
        raise invalid_field(f"$.{param}", _FORM)
    mime = mime.strip() or "text/plain"
    if encoded:
        return InlineData(mime, payload)
    return InlineData(mime, base64.b64encode(unquote_to_bytes(payload)).decode())
