"""OpenAI chat-completion request → Anthropic Messages request, field by field.

A parameter that would change the answer and that Anthropic cannot honour is a 400
`unsupported_parameter` before any upstream call; only harmless ones (`store`,
`metadata`, `image_url.detail`, ...) are dropped, and reported for the adapter to log.
System and developer messages become `system` (with `response_format: json_object`, an
instruction to answer in JSON joins them); tool results become user turns of
`tool_result` blocks; consecutive turns of one role merge (Anthropic wants them
alternating). The request is read through the view shared with other translating kinds
(`workers.providers._chat_view`): one shape check, one data-URL parser.
"""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import UNSET

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
from schemas.chat import ResponseFormat, ToolChoice
from schemas.errors import GatewayError
from schemas.providers import AnthropicProvider
from workers.providers._base import unsupported_parameter
from workers.providers._chat_view import (
    HARMLESS,
    ChatView,
    Message,
    Part,
    ToolCall,
    Translation,
    decode_chat,
    dropped_details,
    parse_data_url,
)

KIND = "anthropic"


# The values of those parameters that ask for nothing (clients send explicit defaults).
_UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "n": (None, 1), "logprobs": (None, False), "top_logprobs": (None, 0), "seed": (None,),
    "presence_penalty": (None, 0), "frequency_penalty": (None, 0), "logit_bias": (None, {}),
    "functions": (None,), "function_call": (None,), "audio": (None,),
    "modalities": (None, ["text"]), "reasoning_effort": (None,), "web_search_options": (None,),
}
# What this translation reads of the view, those refused parameters included.
_TRANSLATED = frozenset({"messages", "max_tokens", "max_completion_tokens", "stop", "temperature",
                         "top_p", "top_k", "tools", "tool_choice", "parallel_tool_calls",
                         "response_format", "user", *_UNSUPPORTED})
_decode_arguments = msgspec.json.Decoder(dict[str, Any]).decode
_encode = msgspec.json.Encoder().encode


def _unsupported(param: str, what: str = "") -> GatewayError:
    return unsupported_parameter(KIND, param, what)


def _reject(request: ChatView) -> None:
    """Refuse parameters that change the answer and that Anthropic cannot honour."""
    for param, harmless in _UNSUPPORTED.items():
        if getattr(request, param) not in harmless:
            raise _unsupported(param)


def _block(part: Part, where: str) -> InputBlock:
    match part.type:
        case "text":
            return TextBlock(part.text or "")
        case "refusal":
            return TextBlock(part.refusal or "")
        case "image_url" if part.image_url is not None:
            url = part.image_url.url
            inline = parse_data_url(url, f"{where}.image_url.url")
            if inline is None:
                return ImageBlock(Source("url", url=url))
            return ImageBlock(Source("base64", media_type=inline.mime_type, data=inline.data))
        case "file" if part.file is not None and part.file.file_data:
            inline = parse_data_url(part.file.file_data, f"{where}.file.file_data")
            if inline is not None and inline.mime_type == "application/pdf":
                return DocumentBlock(Source("base64", media_type=inline.mime_type, data=inline.data))
            raise _unsupported("messages", "a file part that is not a data URL of PDF data")
    raise _unsupported("messages", f"content part type {part.type!r}")


def _blocks(message: Message, i: int) -> list[InputBlock]:
    """Content blocks of message `i`; empty text is dropped (Anthropic refuses it)."""
    content = message.content
    if isinstance(content, str):
        return [TextBlock(content)] if content else []
    blocks = [_block(part, f"messages[{i}].content[{j}]") for j, part in enumerate(content or [])]
    return [b for b in blocks if not (isinstance(b, TextBlock) and not b.text)]


def _tool_use(call: ToolCall) -> ToolUseBlock:
    try:
        arguments = _decode_arguments(call.function.arguments or "{}")
    except msgspec.DecodeError as exc:
        raise GatewayError(400, "invalid_tool_arguments",
                           f"tool call {call.id!r} has arguments that are not a JSON object",
                           param="messages") from exc
    return ToolUseBlock(call.id, call.function.name, arguments)


def _turns(messages: list[Message]) -> tuple[list[TextBlock], list[Turn]]:
    """System text and the conversation; consecutive same-role turns merge into one."""
    system: list[TextBlock] = []
    turns: list[Turn] = []
    for i, message in enumerate(messages):
        match message.role:
            case "system" | "developer":
                for block in _blocks(message, i):
                    if not isinstance(block, TextBlock):
                        raise _unsupported("messages", "a non-text system message part")
                    system.append(block)
                continue
            case "user":
                role, blocks = "user", _blocks(message, i)
            case "assistant":
                role = "assistant"
                blocks = _blocks(message, i)
                blocks += [_tool_use(call) for call in message.tool_calls or []]
            case "tool":
                content = message.content if isinstance(message.content, str) else [
                    b for b in _blocks(message, i) if isinstance(b, TextBlock)]
                role, blocks = "user", [ToolResultBlock(message.tool_call_id or "", content or "")]
            case other:
                raise _unsupported("messages", f"message role {other!r}")
        if turns and turns[-1].role == role:
            turns[-1].content.extend(blocks)
        else:
            turns.append(Turn(role, blocks))
    return system, turns


def _tools(request: ChatView) -> tuple[list[ToolParam] | None, ToolChoiceParam | None]:
    if not request.tools:
        return None, None
    specs = []
    for tool in request.tools:
        if tool.type != "function" or tool.function is None:
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


# `response_format: json_object` has no Anthropic switch (structured outputs need a schema
# and `{"type": "object"}` alone would allow only `{}` there): Anthropic's documented way
# to get JSON is to ask for it in the system prompt, which the answer then is (the client
# parses it, as it must with OpenAI's JSON mode too). No prefill: newer models refuse it.
JSON_OBJECT_INSTRUCTION = ("Respond with one valid JSON object and nothing else: no prose "
                           "before or after it, no Markdown code fences.")


def _output_config(response_format: ResponseFormat | None) -> dict[str, Any] | None:
    if response_format is None or response_format.type in ("text", "json_object"):
        return None
    schema = (response_format.json_schema or {}).get("schema")
    if response_format.type != "json_schema" or not isinstance(schema, dict):
        raise _unsupported("response_format", f"response_format {response_format.type!r} "
                           "without a JSON schema")
    return {"format": {"type": "json_schema", "schema": schema}}


def translate_request(body: bytes, model: str, config: AnthropicProvider, *,
                      stream: bool) -> Translation[MessagesRequest]:
    """The Anthropic request for an OpenAI chat-completion body, and the accepted fields it
    does not forward (the adapter logs them). GatewayError (400, 422) if untranslatable."""
    request, ignored = decode_chat(body, KIND, translated=_TRANSLATED, harmless=HARMLESS)
    _reject(request)
    system, turns = _turns(request.messages)
    if request.response_format is not None and request.response_format.type == "json_object":
        system.append(TextBlock(JSON_OBJECT_INSTRUCTION))
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
    return Translation(out, ignored + dropped_details(request))


def to_messages_request(body: bytes, model: str, config: AnthropicProvider, *, stream: bool) -> bytes:
    """The Anthropic request body alone (`translate_request`, encoded)."""
    return _encode(translate_request(body, model, config, stream=stream).request)
