"""OpenAI chat-completion request → Anthropic Messages request, field by field.

A parameter that would change the answer and that Anthropic cannot honour is a 400
`unsupported_parameter` before any upstream call; only harmless ones (`store`,
`metadata`, `image_url.detail`, ...) are dropped. System and developer messages become
`system`; tool results become user turns of `tool_result` blocks; consecutive turns of
one role merge (Anthropic wants them alternating).
"""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import UNSET, Struct

from schemas.anthropic import (
    DocumentBlock,
    ImageBlock,
    InputBlock,
    MessagesRequest,
    Source,
    TextBlock,
    ToolChoiceParam,
    ToolParam,
    ToolResultBlock,
    ToolUseBlock,
    Turn,
)
from schemas.chat import ResponseFormat, Tool, ToolCall, ToolChoice, raw_object_decoder
from schemas.errors import GatewayError
from schemas.providers import AnthropicProvider
from workers.providers._base import screen_fields, unsupported_parameter

KIND = "anthropic"


# ── the OpenAI request, as far as this translation reads it ──────────────────────
class _ImageURL(Struct):
    url: str


class _File(Struct):
    file_data: str | None = None


class _Part(Struct):
    type: str
    text: str = ""
    refusal: str = ""
    image_url: _ImageURL | None = None
    file: _File | None = None


class _Message(Struct):
    role: str
    content: str | list[_Part] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str = ""


class _Request(Struct):
    messages: list[_Message]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    stop: str | list[str] | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None  # not OpenAI's, but Anthropic's own sampling knob
    tools: list[Tool] | None = None
    tool_choice: str | ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    user: str | None = None
    # Answer-changing parameters Anthropic has no equivalent for (see _UNSUPPORTED).
    n: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, Any] | None = None
    functions: Any = None
    function_call: Any = None
    audio: Any = None
    modalities: list[str] | None = None
    reasoning_effort: Any = None
    web_search_options: Any = None


# The values of those parameters that ask for nothing (clients send explicit defaults).
_UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "n": (None, 1), "logprobs": (None, False), "top_logprobs": (None, 0), "seed": (None,),
    "presence_penalty": (None, 0), "frequency_penalty": (None, 0), "logit_bias": (None, {}),
    "functions": (None,), "function_call": (None,), "audio": (None,),
    "modalities": (None, ["text"]), "reasoning_effort": (None,), "web_search_options": (None,),
}
_decode_request = msgspec.json.Decoder(_Request).decode
_HARMLESS = frozenset({"metadata", "store", "service_tier", "safety_identifier",
                       "prompt_cache_key", "prediction"})  # never change the answer: dropped
_decode_arguments = msgspec.json.Decoder(dict[str, Any]).decode
_encode = msgspec.json.Encoder().encode


def _unsupported(param: str, what: str = "") -> GatewayError:
    return unsupported_parameter(KIND, param, what)


def _reject(request: _Request) -> None:
    """Refuse parameters that change the answer and that Anthropic cannot honour."""
    for param, harmless in _UNSUPPORTED.items():
        if getattr(request, param) not in harmless:
            raise _unsupported(param)


def _data_url(url: str) -> tuple[str, str] | None:
    """(media type, base64 data) of a `data:` URL; None for any other URL."""
    if not url.startswith("data:"):
        return None
    header, comma, data = url[5:].partition(",")
    media_type, *params = header.split(";")
    if not comma or "base64" not in params:
        raise _unsupported("messages", "a data URL that is not base64")
    return media_type, data


def _block(part: _Part) -> InputBlock:
    match part.type:
        case "text":
            return TextBlock(part.text)
        case "refusal":
            return TextBlock(part.refusal)
        case "image_url" if part.image_url is not None:
            url = part.image_url.url
            inline = _data_url(url)
            if inline is None:
                return ImageBlock(Source("url", url=url))
            return ImageBlock(Source("base64", media_type=inline[0], data=inline[1]))
        case "file" if part.file is not None and part.file.file_data:
            inline = _data_url(part.file.file_data)
            if inline is not None and inline[0] == "application/pdf":
                return DocumentBlock(Source("base64", media_type=inline[0], data=inline[1]))
            raise _unsupported("messages", "a file part that is not base64 PDF data")
    raise _unsupported("messages", f"content part type {part.type!r}")


def _blocks(content: str | list[_Part] | None) -> list[InputBlock]:
    """Content blocks of a message; empty text is dropped (Anthropic refuses it)."""
    if isinstance(content, str):
        return [TextBlock(content)] if content else []
    blocks = [_block(part) for part in content or []]
    return [b for b in blocks if not (isinstance(b, TextBlock) and not b.text)]


def _tool_use(call: ToolCall) -> ToolUseBlock:
    try:
        arguments = _decode_arguments(call.function.arguments or "{}")
    except msgspec.DecodeError as exc:
        raise GatewayError(400, "invalid_tool_arguments",
                           f"tool call {call.id!r} has arguments that are not a JSON object",
                           param="messages") from exc
    return ToolUseBlock(call.id, call.function.name, arguments)


def _turns(messages: list[_Message]) -> tuple[list[TextBlock], list[Turn]]:
    """System text and the conversation; consecutive same-role turns merge into one."""
    system: list[TextBlock] = []
    turns: list[Turn] = []
    for message in messages:
        match message.role:
            case "system" | "developer":
                for block in _blocks(message.content):
                    if not isinstance(block, TextBlock):
                        raise _unsupported("messages", "a non-text system message part")
                    system.append(block)
                continue
            case "user":
                role, blocks = "user", _blocks(message.content)
            case "assistant":
                role = "assistant"
                blocks = _blocks(message.content)
                blocks += [_tool_use(call) for call in message.tool_calls or []]
            case "tool":
                content = message.content if isinstance(message.content, str) else [
                    b for b in _blocks(message.content) if isinstance(b, TextBlock)]
                role, blocks = "user", [ToolResultBlock(message.tool_call_id, content or "")]
            case other:
                raise _unsupported("messages", f"message role {other!r}")
        if turns and turns[-1].role == role:
            turns[-1].content.extend(blocks)
        else:
            turns.append(Turn(role, blocks))
    return system, turns


def _tools(request: _Request) -> tuple[list[ToolParam] | None, ToolChoiceParam | None]:
    if not request.tools:
        return None, None
    specs = []
    for tool in request.tools:
        if tool.type != "function":
            raise _unsupported("tools", f"tool type {tool.type!r}")
        fn = tool.function
        schema = fn.parameters or {"type": "object", "properties": {}}
        specs.append(ToolParam(fn.name, schema, fn.description, True if fn.strict else UNSET))
    match request.tool_choice:
        case None:
            choice = ToolChoiceParam("auto") if request.parallel_tool_calls is False else None
        case "auto":
            choice = ToolChoiceParam("auto")
        case "none":
            return specs, ToolChoiceParam("none")
        case "required":
            choice = ToolChoiceParam("any")
        case ToolChoice(function=function):
            choice = ToolChoiceParam("tool", function.name)
        case other:
            raise _unsupported("tool_choice", f"tool_choice {other!r}")
    if request.parallel_tool_calls is False and choice is not None:
        choice.disable_parallel_tool_use = True
    return specs, choice


def _output_config(response_format: ResponseFormat | None) -> dict[str, Any] | None:
    if response_format is None or response_format.type == "text":
        return None
    schema = (response_format.json_schema or {}).get("schema")
    if response_format.type != "json_schema" or not isinstance(schema, dict):
        raise _unsupported("response_format", f"response_format {response_format.type!r} "
                           "without a JSON schema")
    return {"format": {"type": "json_schema", "schema": schema}}


def to_messages_request(body: bytes, model: str, config: AnthropicProvider, *, stream: bool) -> bytes:
    """The Anthropic request body for an OpenAI chat-completion body; GatewayError if untranslatable."""
    try:
        request, raw = _decode_request(body), raw_object_decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise GatewayError(422, "validation_error", f"invalid request: {exc}") from None
    screen_fields(raw, KIND, translated=_Request.__struct_fields__, harmless=_HARMLESS)
    _reject(request)
    system, turns = _turns(request.messages)
    tools, tool_choice = _tools(request)
    stop = [request.stop] if isinstance(request.stop, str) else request.stop
    out = MessagesRequest(
        model=model,
        max_tokens=request.max_completion_tokens or request.max_tokens or config.default_max_tokens,
        messages=turns, system=system or None, stop_sequences=stop or None,
        temperature=request.temperature, top_p=request.top_p, top_k=request.top_k,
        tools=tools, tool_choice=tool_choice,
        metadata={"user_id": request.user} if request.user else None,
        output_config=_output_config(request.response_format), stream=stream,
    )
    return _encode(out)
