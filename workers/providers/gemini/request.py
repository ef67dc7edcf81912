"""OpenAI chat request -> Gemini GenerateContentRequest: pure translation, no I/O.

Every OpenAI field is either translated, ignored because it cannot change the answer
(`user`, `metadata`, ...; reported so the adapter logs it), or refused with a 400
`unsupported_parameter` before anything goes upstream: nothing that changes the answer is
dropped silently. JSON schemas (tool parameters, `response_format`) go as
`parametersJsonSchema` and `responseJsonSchema`, Gemini's fields that take JSON Schema as
OpenAI clients write it. Thought signatures come back on tool calls as
`extra_content.google.thought_signature` (see `workers.providers.gemini.response`) and go upstream
again on the functionCall part they belong to.

The OpenAI request is read through the view shared with other translating kinds
(`workers.providers._chat_view`: one shape check, a 422 naming the field; one data-URL
parser); Gemini's shapes live in `schemas.gemini`. Wire format:
https://ai.google.dev/api/generate-content.
"""

from __future__ import annotations

import mimetypes
from urllib.parse import urlsplit

import msgspec

from schemas.chat import ToolChoice
from schemas.errors import GatewayError
from schemas.gemini import (
    Blob,
    Content,
    FileData,
    FunctionCallingConfig,
    FunctionDeclaration,
    FunctionResponse,
    GeminiFunctionCall,
    GeminiTool,
    GenerateContentRequest,
    GenerationConfig,
    Part,
    ToolConfig,
)
from workers.providers._base import unsupported_parameter
from workers.providers._chat_view import (
    HARMLESS,
    ChatView,
    File,
    Message,
    Translation,
    decode_chat,
    dropped_details,
    parse_data_url,
)

# Accepted and not forwarded (logged): they never change the answer. Gemini has no field
# for the end user's id either.
IGNORED = HARMLESS | {"user"}
_MIME_BY_SUFFIX = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
                   ".webp": "image/webp", ".heic": "image/heic", ".heif": "image/heif",
                   ".gif": "image/gif", ".pdf": "application/pdf"}


# What this translation reads of the view; any other field that is set is refused.
_TRANSLATED = frozenset({"messages", "temperature", "top_p", "top_k", "max_tokens",
                         "max_completion_tokens", "stop", "seed", "presence_penalty",
                         "frequency_penalty", "n", "tools", "tool_choice", "response_format",
                         "logprobs", "parallel_tool_calls", "modalities"})


# ── translation ──────────────────────────────────────────────────────────────────
def unsupported(param: str, what: str = "") -> GatewayError:
    """The 400 for an OpenAI parameter Gemini cannot honour."""
    return unsupported_parameter("gemini", param, what)


def _invalid(message: str, param: str | None = None) -> GatewayError:
    return GatewayError(400, "invalid_request", message, param=param)


def translate_request(body: bytes) -> Translation[GenerateContentRequest]:
    """The Gemini request for an OpenAI chat request body. Raises GatewayError (400, 422)."""
    request, ignored = decode_chat(body, "gemini", translated=_TRANSLATED, harmless=IGNORED)
    ignored += dropped_details(request)
    if request.logprobs:
        raise unsupported("logprobs")
    if request.modalities not in (None, [], ["text"]):
        raise unsupported("modalities", "output modalities other than text")
    system, contents = _contents(request.messages)
    if not contents:
        raise _invalid("the conversation needs at least one user or assistant message", "messages")
    tools, tool_config = _tools(request, ignored)
    return Translation(GenerateContentRequest(contents, system, tools, tool_config,
                                              _generation_config(request)), ignored)


class _Parallel(msgspec.Struct):
    parallel_tool_calls: bool | None = None


_parallel_decoder = msgspec.json.Decoder(_Parallel)


def first_call_only(body: bytes) -> bool:
    """`parallel_tool_calls: false`: Gemini has no such switch, so the answer keeps only its
    first function call (`workers.providers.gemini.response`). With one function forced
    (`tool_choice` naming it) Gemini answers one call anyway."""
    try:
        return _parallel_decoder.decode(body).parallel_tool_calls is False
    except (msgspec.DecodeError, msgspec.ValidationError):
        return False  # translate_request has refused it already


def _contents(messages: list[Message]) -> tuple[Content | None, list[Content]]:
    system: list[Part] = []
    contents: list[Content] = []
    calls: dict[str, str] = {}  # tool call id -> function name (a later reuse of an id wins)
    for i, message in enumerate(messages):
        match message.role:
            case "system" | "developer":
                system.extend(_text_parts(message, i))
                continue
            case "user":
                role, parts = "user", _user_parts(message, i)
            case "assistant":
                role, parts = "model", _text_parts(message, i) + _call_parts(message, i, calls)
            case "tool":
                role, parts = "user", [_tool_result(message, i, calls)]
            case _:
                raise unsupported(f"messages[{i}].role", f"role {message.role!r}")
        if not parts:
            continue
        if contents and contents[-1].role == role:  # Gemini wants user and model turns to alternate
            contents[-1].parts.extend(parts)
        else:
            contents.append(Content(parts, role))
    return (Content(system) if system else None), contents


def _text_parts(message: Message, i: int) -> list[Part]:
    if isinstance(message.content, str):
        return [Part(text=message.content)] if message.content else []
    parts = []
    for j, part in enumerate(message.content or []):
        text = part.text if part.type == "text" else part.refusal if part.type == "refusal" else None
        if text is None:
            raise unsupported(f"messages[{i}].content[{j}].type",
                              f"content part {part.type!r} in a {message.role} message")
        if text:
            parts.append(Part(text=text))
    return parts


def _user_parts(message: Message, i: int) -> list[Part]:
    if not isinstance(message.content, list):
        return _text_parts(message, i)
    parts = []
    for j, part in enumerate(message.content):
        where = f"messages[{i}].content[{j}]"
        match part.type:
            case "text":
                if part.text:
                    parts.append(Part(text=part.text))
            case "image_url" if part.image_url is not None:
                parts.append(media_part(part.image_url.url, f"{where}.image_url.url"))
            case "file" if part.file is not None:
                parts.append(_file_part(part.file, where))
            case "input_audio" if part.input_audio is not None:
                mime = f"audio/{part.input_audio.format}"
                parts.append(Part(inline_data=Blob(mime, part.input_audio.data)))
            case _:
                raise unsupported(f"{where}.type", f"content part {part.type!r}")
    return parts


def media_part(url: str, param: str = "url") -> Part:
    """A data URL as inline data; any other URL as a file reference, typed by its suffix.
    `param` locates the URL in the request, for the 422 of a malformed data URL."""
    inline = parse_data_url(url, param)
    if inline is not None:
        return Part(inline_data=Blob(inline.mime_type, inline.data))
    return Part(file_data=FileData(url, _mime_of(urlsplit(url).path)))


def _mime_of(path: str) -> str | None:
    name = path.rsplit("/", 1)[-1]
    suffix = name[name.rfind("."):].lower() if "." in name else ""
    return _MIME_BY_SUFFIX.get(suffix) or (mimetypes.guess_type(name)[0] if suffix else None)


def _file_part(file: File, where: str) -> Part:
    if file.file_id:
        raise unsupported(f"{where}.file.file_id", "file_id (OpenAI uploaded files)")
    if not file.file_data:
        raise _invalid(f"{where}.file needs file_data", where)
    inline = parse_data_url(file.file_data, f"{where}.file.file_data")
    if inline is not None:
        return Part(inline_data=Blob(inline.mime_type, inline.data))
    mime = _mime_of(file.filename or "") or "application/pdf"
    return Part(inline_data=Blob(mime, file.file_data))


def _call_parts(message: Message, i: int, calls: dict[str, str]) -> list[Part]:
    parts = []
    for k, call in enumerate(message.tool_calls or []):
        where = f"messages[{i}].tool_calls[{k}].function.arguments"
        try:
            args = msgspec.json.decode(call.function.arguments or "{}")
        except msgspec.DecodeError:
            raise _invalid(f"{where} is not valid JSON", where) from None
        if not isinstance(args, dict):
            raise _invalid(f"{where} must be a JSON object", where)
        google = call.extra_content.google if call.extra_content else None
        calls[call.id] = call.function.name
        parts.append(Part(function_call=GeminiFunctionCall(call.function.name, args),
                          thought_signature=google.thought_signature if google else None))
    return parts


def _tool_result(message: Message, i: int, calls: dict[str, str]) -> Part:
    name = calls.get(message.tool_call_id or "")
    if name is None:
        raise _invalid(f"messages[{i}].tool_call_id does not match a tool call of an earlier "
                       "assistant message", f"messages[{i}].tool_call_id")
    if isinstance(message.content, list):
        text = "".join(p.text or "" for p in message.content if p.type == "text")
    else:
        text = message.content or ""
    try:
        value = msgspec.json.decode(text)
    except msgspec.DecodeError:
        value = None
    response = value if isinstance(value, dict) else {"content": text}
    return Part(function_response=FunctionResponse(name, response))


def _tools(request: ChatView, ignored: list[str]) -> tuple[list[GeminiTool] | None, ToolConfig | None]:
    declarations = []
    for k, tool in enumerate(request.tools or []):
        if tool.type != "function" or tool.function is None:
            raise unsupported(f"tools[{k}].type", f"tool type {tool.type!r}")
        function = tool.function
        if function.strict and "tools[].function.strict" not in ignored:
            ignored.append("tools[].function.strict")
        description = function.description if isinstance(function.description, str) else None
        parameters = function.parameters if isinstance(function.parameters, dict) else None
        declarations.append(FunctionDeclaration(function.name, description, parameters or None))
    choice = request.tool_choice
    if not declarations:
        if choice in (None, "none", "auto"):
            return None, None
        raise _invalid("tool_choice needs tools", "tool_choice")
    match choice:
        case None:
            config = None
        case "auto" | "none" | "required":
            mode = {"auto": "AUTO", "none": "NONE", "required": "ANY"}[choice]
            config = ToolConfig(FunctionCallingConfig(mode))
        case ToolChoice(function=named):
            config = ToolConfig(FunctionCallingConfig("ANY", [named.name]))
        case _:
            raise unsupported("tool_choice", f"tool_choice {choice!r}")
    return [GeminiTool(declarations)], config


def _generation_config(request: ChatView) -> GenerationConfig | None:
    mime, schema = None, None
    if request.response_format is not None:
        match request.response_format.type:
            case "text":
                pass
            case "json_object":
                mime = "application/json"
            case "json_schema":
                spec = request.response_format.json_schema
                schema = spec.get("schema") if isinstance(spec, dict) else None
                if not isinstance(schema, dict):
                    raise _invalid("response_format.json_schema.schema is required",
                                   "response_format")
                mime = "application/json"
            case other:
                raise unsupported("response_format", f"response_format {other!r}")
    stop = [request.stop] if isinstance(request.stop, str) else request.stop
    limit = request.max_completion_tokens if request.max_completion_tokens is not None \
        else request.max_tokens
    config = GenerationConfig(request.temperature, request.top_p, request.top_k, limit, stop or None,
                              request.seed, request.presence_penalty, request.frequency_penalty,
                              request.n, mime, schema)
    return None if config == GenerationConfig() else config
