"""The OpenAI Responses API wire shapes (`POST /v1/responses`), and the resolved request
the ingress hands the workers.

The client's request is decoded into `ResponsesRequest` at the edge; the ingress then
merges the agent, substitutes `{{variables}}` and prepends a previous response's items,
and encodes the outcome as a `Resolved` job body: the worker reads only that.
Output items and the response object are written with the Structs at the end.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from schemas.agents import Variable
from schemas.errors import detail_of
from schemas.tracking import EndUser, Thread

DEFAULT_MAX_TOOL_CALLS = 10  # built-in tool calls one response may make (no agent setting)


class Part(Struct, omit_defaults=True):
    """One part of a message's content: input_text, input_image, input_file, output_text."""

    type: Literal["input_text", "input_image", "input_file", "output_text", "refusal"]
    text: str | UnsetType = UNSET
    image_url: str | UnsetType | None = UNSET
    file_id: str | UnsetType | None = UNSET
    detail: str | UnsetType | None = UNSET
    file_data: str | UnsetType | None = UNSET
    file_url: str | UnsetType | None = UNSET
    filename: str | UnsetType | None = UNSET
    refusal: str | UnsetType = UNSET
    annotations: list[Any] | UnsetType = UNSET


class Item(Struct, omit_defaults=True):
    """One input item: a message (the `type` may be left out), a `function_call` the
    model made, or the `function_call_output` that answers it."""

    type: Literal["message", "function_call", "function_call_output"] = "message"
    role: Literal["user", "assistant", "system", "developer"] | UnsetType = UNSET
    content: str | list[Part] | UnsetType = UNSET
    id: str | UnsetType | None = UNSET
    status: str | UnsetType | None = UNSET
    call_id: str | UnsetType = UNSET
    name: str | UnsetType = UNSET
    arguments: str | UnsetType = UNSET
    output: str | list[Part] | UnsetType = UNSET


class Tool(Struct, omit_defaults=True):
    """A function tool (`type: function`), or a built-in tool the gateway runs itself."""

    type: str
    name: str | UnsetType = UNSET
    description: str | UnsetType | None = UNSET
    parameters: dict[str, Any] | UnsetType | None = UNSET
    strict: bool | UnsetType | None = UNSET


class NamedTool(Struct):
    type: Literal["function"]
    name: str


class TextFormat(Struct, omit_defaults=True):
    type: Literal["text", "json_object", "json_schema"]
    name: str | UnsetType = UNSET
    schema: dict[str, Any] | UnsetType = UNSET
    description: str | UnsetType = UNSET
    strict: bool | UnsetType | None = UNSET


class TextConfig(Struct, omit_defaults=True):
    format: TextFormat | UnsetType = UNSET
    verbosity: str | UnsetType | None = UNSET


ToolChoice = Literal["none", "auto", "required"] | NamedTool


class ResponsesRequest(Struct):
    """The fields of a Responses request the gateway reads (the others are screened)."""

    model: Annotated[str, Meta(min_length=1)]
    input: str | list[Item] = ""
    instructions: str | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    max_output_tokens: Annotated[int, Meta(ge=1)] | None = None
    max_tool_calls: Annotated[int, Meta(ge=0, le=100)] | None = None
    temperature: float | None = None
    top_p: float | None = None
    metadata: Annotated[dict[str, Annotated[str, Meta(max_length=512)]],
                        Meta(max_length=16)] | None = None
    store: bool | None = None
    previous_response_id: str | None = None
    stream: bool = False
    variables: dict[str, Variable] | None = None  # Switchboard's: `{{name}}` values
    identity: EndUser | None = None
    thread: Thread | None = None
    user: str | None = None


# The request fields the gateway honours; any other set field is a 400 (it could change
# the answer) unless it is harmless, listed here and dropped.
KNOWN_FIELDS = frozenset(f for f in ResponsesRequest.__struct_fields__)
HARMLESS_FIELDS = frozenset({"include", "safety_identifier", "prompt_cache_key", "service_tier",
                             "stream_options", "truncation", "background", "reasoning"})
# `background: false`, `truncation: "disabled"` and `reasoning: null/{}` are the defaults:
# only those values pass (see ingress/responses.py).


class Resolved(Struct, kw_only=True, omit_defaults=True):
    """The job body of a Responses job: the request with agent, variables and history
    resolved. `context` is every item the model sees (history first); `new_from` is where
    this request's own input begins in it."""

    model: str  # what the client sent (echoed): a slug, or agent/<name>
    context: list[Item]
    new_from: int = 0
    instructions: str | None = None
    tools: list[Tool] = []
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    max_output_tokens: int | None = None
    max_tool_calls: int = DEFAULT_MAX_TOOL_CALLS
    temperature: float | None = None
    top_p: float | None = None
    metadata: dict[str, str] = {}
    store: bool = True
    previous_response_id: str | None = None
    stream: bool = False
    secrets: dict[str, Variable] = {}  # the secret variables, to redact what is stored


class OutputText(Struct):
    text: str
    type: str = "output_text"
    annotations: list[Any] = []


class OutputMessage(Struct, tag_field="type", tag="message"):
    id: str
    content: list[OutputText]
    role: str = "assistant"
    status: str = "completed"


class FunctionCallItem(Struct, tag_field="type", tag="function_call"):
    id: str
    call_id: str
    name: str
    arguments: str
    status: str = "completed"


class FunctionCallOutputItem(Struct, tag_field="type", tag="function_call_output"):
    id: str
    call_id: str
    output: str
    status: str = "completed"


OutputItem = OutputMessage | FunctionCallItem | FunctionCallOutputItem


class TokenDetails(Struct):
    cached_tokens: int = 0


class OutputDetails(Struct):
    reasoning_tokens: int = 0


class ResponseUsage(Struct):
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    input_tokens_details: TokenDetails = msgspec.field(default_factory=TokenDetails)
    output_tokens_details: OutputDetails = msgspec.field(default_factory=OutputDetails)


class ResponseError(Struct):
    code: str
    message: str


class Incomplete(Struct):
    reason: str


class Response(Struct, kw_only=True):
    """The response object (`object: "response"`)."""

    id: str
    created_at: int
    model: str
    status: Literal["in_progress", "completed", "incomplete", "failed"]
    output: list[OutputItem] = []
    instructions: str | None = None
    tools: list[Tool] = []
    tool_choice: ToolChoice = "auto"
    parallel_tool_calls: bool = True
    text: TextConfig | None = None
    max_output_tokens: int | None = None
    max_tool_calls: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    metadata: dict[str, str] = {}
    previous_response_id: str | None = None
    store: bool = True
    usage: ResponseUsage | None = None
    error: ResponseError | None = None
    incomplete_details: Incomplete | None = None
    object: str = "response"


class ItemList(Struct):
    """`GET /v1/responses/{id}/input_items`: OpenAI's list shape."""

    data: list[Item]
    first_id: str | None
    last_id: str | None
    has_more: bool
    object: str = "list"


class Deleted(Struct):
    id: str
    deleted: bool = True
    object: str = "response.deleted"


request_decoder = msgspec.json.Decoder(ResponsesRequest)
resolved_decoder = msgspec.json.Decoder(Resolved)
response_decoder = msgspec.json.Decoder(Response)
items_decoder = msgspec.json.Decoder(list[Item])


class ErrorEvent(Struct):
    """The `error` event that ends a broken Responses stream (OpenAI's flat shape)."""

    code: str | None
    message: str
    param: str | None
    sequence_number: int
    type: str = "error"


def error_event_data(body: bytes, status: int, seq: int) -> bytes:
    """A gateway error body as the `error` event numbered `seq` (after the events relayed)."""
    detail = detail_of(body)
    return msgspec.json.encode(ErrorEvent(detail.code, detail.message, detail.param, seq))
