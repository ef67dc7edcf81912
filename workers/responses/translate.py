"""A resolved Responses request as a chat completions request, and a chat answer back.

Every provider kind serves chat completions, so a Responses job becomes the kind's chat
call (`workers/responses/run.py`); this module is the pure translation both ways.
"""

from __future__ import annotations

from typing import Any

import msgspec

from schemas.errors import GatewayError
from schemas.responses import (
    FunctionCallItem,
    Item,
    NamedTool,
    OutputItem,
    OutputMessage,
    OutputText,
    Part,
    Resolved,
    Tool,
)
from workers.responses.builtins import BUILTINS

_encode = msgspec.json.Encoder().encode


def _bad(message: str, param: str) -> GatewayError:
    return GatewayError(400, "invalid_request", message, param=param)


def _part(part: Part) -> dict[str, Any]:
    """A content part in the chat shape."""
    match part.type:
        case "input_text" | "output_text":
            return {"type": "text", "text": part.text if isinstance(part.text, str) else ""}
        case "refusal":
            return {"type": "text", "text": part.refusal if isinstance(part.refusal, str) else ""}
        case "input_image":
            if not isinstance(part.image_url, str):
                raise GatewayError(400, "unsupported_parameter", "an input_image needs "
                                   "`image_url` (a URL or data URL): file ids are not served",
                                   param="input")
            image: dict[str, Any] = {"url": part.image_url}
            if isinstance(part.detail, str):
                image["detail"] = part.detail
            return {"type": "image_url", "image_url": image}
        case "input_file":
            file = {k: v for k, v in (("file_data", part.file_data), ("file_id", part.file_id),
                                      ("filename", part.filename)) if isinstance(v, str)}
            if "file_data" not in file and "file_id" not in file:
                raise GatewayError(400, "unsupported_parameter", "an input_file needs "
                                   "`file_data` or `file_id`", param="input")
            return {"type": "file", "file": file}


def _content(content: str | list[Part], role: str) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    parts = [_part(p) for p in content]
    if role in ("assistant", "system") or all(p["type"] == "text" for p in parts):
        # Assistant and system turns are text in every kind's chat translation.
        return "".join(p.get("text", "") for p in parts)
    return parts


def messages(resolved: Resolved) -> list[dict[str, Any]]:
    """The conversation as chat messages: instructions first, then every context item."""
    out: list[dict[str, Any]] = []
    if resolved.instructions:
        out.append({"role": "system", "content": resolved.instructions})
    for item in resolved.context:
        match item.type:
            case "message":
                role = item.role if isinstance(item.role, str) else "user"
                role = "system" if role == "developer" else role
                content = item.content if not isinstance(item.content, msgspec.UnsetType) else ""
                out.append({"role": role, "content": _content(content, role)})
            case "function_call":
                if not (isinstance(item.call_id, str) and isinstance(item.name, str)):
                    raise _bad("a function_call item needs `call_id` and `name`", "input")
                call = {"id": item.call_id, "type": "function",
                        "function": {"name": item.name, "arguments": item.arguments or "{}"}}
                last = out[-1] if out else None
                if last and last["role"] == "assistant" and last.get("tool_calls"):
                    last["tool_calls"].append(call)  # parallel calls are one assistant turn
                else:
                    out.append({"role": "assistant", "content": None, "tool_calls": [call]})
            case "function_call_output":
                if not isinstance(item.call_id, str):
                    raise _bad("a function_call_output item needs `call_id`", "input")
                output = item.output if not isinstance(item.output, msgspec.UnsetType) else ""
                out.append({"role": "tool", "tool_call_id": item.call_id,
                            "content": _content(output, "tool") if isinstance(output, list)
                            else output})
    return out


def _tool(tool: Tool) -> dict[str, Any]:
    if tool.type in BUILTINS:
        return {"type": "function", "function": BUILTINS[tool.type].definition}
    if tool.type != "function" or not isinstance(tool.name, str):
        raise GatewayError(400, "unsupported_parameter",
                           f"tool type {tool.type!r} is not served by the gateway (function tools "
                           f"and the built-in {', '.join(sorted(BUILTINS))} are)", param="tools")
    function: dict[str, Any] = {"name": tool.name}
    for key in ("description", "parameters", "strict"):
        value = getattr(tool, key)
        if value is not None and not isinstance(value, msgspec.UnsetType):
            function[key] = value
    return {"type": "function", "function": function}


def chat_body(resolved: Resolved, chat: list[dict[str, Any]], stream: bool) -> bytes:
    """The chat completions request for one model call over `chat` (the messages so far)."""
    body: dict[str, Any] = {"model": resolved.model, "messages": chat, "stream": stream}
    if resolved.tools:
        body["tools"] = [_tool(t) for t in resolved.tools]
    choice = resolved.tool_choice
    if isinstance(choice, NamedTool):
        body["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
    elif choice is not None and resolved.tools:
        body["tool_choice"] = choice
    if resolved.parallel_tool_calls is not None and resolved.tools:
        body["parallel_tool_calls"] = resolved.parallel_tool_calls
    fmt = resolved.text.format if resolved.text is not None else None
    if fmt is not None and not isinstance(fmt, msgspec.UnsetType) and fmt.type != "text":
        if fmt.type == "json_object":
            body["response_format"] = {"type": "json_object"}
        else:
            schema: dict[str, Any] = {"name": fmt.name if isinstance(fmt.name, str) else "response"}
            for key in ("schema", "description", "strict"):
                value = getattr(fmt, key)
                if value is not None and not isinstance(value, msgspec.UnsetType):
                    schema[key] = value
            body["response_format"] = {"type": "json_schema", "json_schema": schema}
    for key, value in (("max_completion_tokens", resolved.max_output_tokens),
                       ("temperature", resolved.temperature), ("top_p", resolved.top_p)):
        if value is not None:
            body[key] = value
    if stream:
        body["stream_options"] = {"include_usage": True}
    return _encode(body)


class ChatCall(msgspec.Struct):
    id: str = ""
    function: dict[str, Any] = {}


class ChatMessage(msgspec.Struct):
    content: str | None = None
    tool_calls: list[ChatCall] | None = None


class ChatChoice(msgspec.Struct):
    message: ChatMessage = msgspec.field(default_factory=ChatMessage)
    finish_reason: str | None = None


class ChatUsage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class ChatAnswer(msgspec.Struct):
    choices: list[ChatChoice] = []
    usage: ChatUsage | None = None


chat_answer_decoder = msgspec.json.Decoder(ChatAnswer)


def output_of(answer: ChatAnswer, stem: str, turn: int) -> list[OutputItem]:
    """The output items of one chat answer: its text message, then its function calls."""
    items: list[OutputItem] = []
    if not answer.choices:
        return items
    message = answer.choices[0].message
    if message.content:
        items.append(OutputMessage(id=f"msg_{stem}_{turn}", content=[OutputText(message.content)]))
    for index, call in enumerate(message.tool_calls or []):
        items.append(FunctionCallItem(
            id=f"fc_{stem}_{turn}_{index}", call_id=call.id or f"call_{stem}_{turn}_{index}",
            name=str(call.function.get("name", "")),
            arguments=str(call.function.get("arguments") or "{}")))
    return items


def as_item(item: OutputItem) -> Item:
    """An output item as an input item (the context of a later model call or response)."""
    return msgspec.json.decode(_encode(item), type=Item)
