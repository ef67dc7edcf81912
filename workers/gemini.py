"""Provider kind `gemini`: Google's Gemini API (`generateContent`, `streamGenerateContent`).

    OpenAI chat request ──translate_request──> GenerateContentRequest ──> upstream
    chat.completion(.chunk) <──translate_response / StreamTranslator── GenerateContentResponse

Every OpenAI field is either translated, ignored because it cannot change the answer
(`user`, `metadata`, ...; logged), or refused with a 400 `unsupported_parameter` before
anything goes upstream: nothing that changes the answer is dropped silently. JSON
schemas (tool parameters, `response_format`) go as `parametersJsonSchema` and
`responseJsonSchema`, Gemini's fields that take JSON Schema as OpenAI clients write it.
Gemini's thought signatures ride on tool calls as `extra_content.google.thought_signature`,
the convention of Google's own OpenAI-compatible endpoint, so multi-turn function
calling keeps working with models that require them.

Wire format: https://ai.google.dev/api/generate-content (errors:
https://ai.google.dev/gemini-api/docs/troubleshooting).
"""

from __future__ import annotations

import base64
import mimetypes
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_to_bytes, urlsplit

import httpx
import msgspec
from msgspec import UNSET, Struct, UnsetType

from schemas.chat import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    Choice,
    ChunkChoice,
    Delta,
    FunctionCall,
    FunctionDef,
    ResponseFormat,
    ToolCall,
    ToolChoice,
    Usage,
)
from schemas.config import ProviderConfig
from schemas.errors import GatewayError
from workers.base import (
    AdapterBase,
    Answer,
    Call,
    Emit,
    UpstreamFailure,
    read_credential,
    transport_failure,
)
from workers.logs import log_event
from workers.sse import iter_events

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com/v1beta"
CLIENT_FAULT = frozenset({400, 413, 422})  # relayed as they are, never retried
HANDLED = frozenset({"model", "stream", "stream_options"})  # read by the ingress and the runner
# Accepted and not forwarded (logged): they never change the answer.
IGNORED = frozenset({"user", "metadata", "store", "service_tier", "safety_identifier",
                     "prompt_cache_key", "prediction"})
CONTENT_FILTER = frozenset({"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII",
                            "IMAGE_SAFETY", "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION"})
_MIME_BY_SUFFIX = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
                   ".webp": "image/webp", ".heic": "image/heic", ".heif": "image/heif",
                   ".gif": "image/gif", ".pdf": "application/pdf"}


# ── the OpenAI request, as far as this adapter reads it ───────────────────────────
class _ImageURL(Struct):
    url: str
    detail: str | None = None


class _File(Struct):
    file_data: str | None = None
    file_id: str | None = None
    filename: str | None = None


class _InputAudio(Struct):
    data: str
    format: str


class _Part(Struct):
    type: str
    text: str | None = None
    refusal: str | None = None
    image_url: _ImageURL | None = None
    file: _File | None = None
    input_audio: _InputAudio | None = None


class _GoogleExtra(Struct):
    thought_signature: str | None = None


class _ExtraContent(Struct):
    google: _GoogleExtra | None = None


class _ToolCallIn(Struct):
    id: str
    function: FunctionCall
    type: str = "function"
    extra_content: _ExtraContent | None = None


class _Message(Struct):
    role: str
    content: str | list[_Part] | None = None
    name: str | None = None
    tool_calls: list[_ToolCallIn] | None = None
    tool_call_id: str | None = None


class _Tool(Struct):
    function: FunctionDef | None = None  # absent for tool types other than "function"
    type: str = "function"


class _Request(Struct):
    messages: list[_Message]
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    n: int | None = None
    tools: list[_Tool] | None = None
    tool_choice: str | ToolChoice | None = None
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    parallel_tool_calls: bool | None = None
    modalities: list[str] | None = None


# ── Gemini's wire shapes ─────────────────────────────────────────────────────────
class Blob(Struct, rename="camel"):
    mime_type: str
    data: str


class FileData(Struct, rename="camel", omit_defaults=True):
    file_uri: str
    mime_type: str | None = None


class GeminiFunctionCall(Struct, omit_defaults=True):
    name: str
    args: dict[str, Any] | None = None
    id: str | None = None


class FunctionResponse(Struct):
    name: str
    response: dict[str, Any]


class Part(Struct, rename="camel", omit_defaults=True):
    text: str | None = None
    inline_data: Blob | None = None
    file_data: FileData | None = None
    function_call: GeminiFunctionCall | None = None
    function_response: FunctionResponse | None = None
    thought: bool | None = None
    thought_signature: str | None = None


class Content(Struct, omit_defaults=True):
    parts: list[Part] = []
    role: str | None = None


class FunctionDeclaration(Struct, rename="camel", omit_defaults=True):
    name: str
    description: str | None = None
    parameters_json_schema: dict[str, Any] | None = None


class GeminiTool(Struct, rename="camel"):
    function_declarations: list[FunctionDeclaration]


class FunctionCallingConfig(Struct, rename="camel", omit_defaults=True):
    mode: str
    allowed_function_names: list[str] | None = None


class ToolConfig(Struct, rename="camel"):
    function_calling_config: FunctionCallingConfig


class GenerationConfig(Struct, rename="camel", omit_defaults=True):
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    max_output_tokens: int | None = None
    stop_sequences: list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    candidate_count: int | None = None
    response_mime_type: str | None = None
    response_json_schema: dict[str, Any] | None = None


class GenerateContentRequest(Struct, rename="camel", omit_defaults=True):
    contents: list[Content]
    system_instruction: Content | None = None
    tools: list[GeminiTool] | None = None
    tool_config: ToolConfig | None = None
    generation_config: GenerationConfig | None = None


class Candidate(Struct, rename="camel"):
    content: Content | None = None
    finish_reason: str | None = None
    index: int = 0


class UsageMetadata(Struct, rename="camel"):
    prompt_token_count: int = 0
    candidates_token_count: int = 0
    thoughts_token_count: int = 0
    total_token_count: int = 0


class PromptFeedback(Struct, rename="camel"):
    block_reason: str | None = None


class GeminiError(Struct):
    code: int = 0
    message: str = ""
    status: str = ""
    details: list[Any] = []


class GenerateContentResponse(Struct, rename="camel"):
    candidates: list[Candidate] = []
    usage_metadata: UsageMetadata | None = None
    prompt_feedback: PromptFeedback | None = None
    response_id: str = ""
    error: GeminiError | None = None  # an error event inside a stream


class _ErrorBody(Struct):
    error: GeminiError | None = None


class _SignedToolCall(ToolCall, kw_only=True):
    """An OpenAI tool call that may carry Gemini's thought signature."""

    extra_content: dict[str, Any] | UnsetType = UNSET


_decode_keys = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode
_decode_request = msgspec.json.Decoder(_Request).decode
_decode_response = msgspec.json.Decoder(GenerateContentResponse).decode
_decode_error = msgspec.json.Decoder(_ErrorBody).decode
_encode = msgspec.json.Encoder().encode
_ABSENT = frozenset({b"null", b"{}", b"[]"})


# ── request translation ──────────────────────────────────────────────────────────
def unsupported(param: str, what: str = "") -> GatewayError:
    """The 400 for an OpenAI parameter Gemini cannot honour."""
    return GatewayError(400, "unsupported_parameter",
                        f"{what or 'parameter ' + repr(param)} is not supported by provider kind 'gemini'",
                        param=param)


def _invalid(message: str, param: str | None = None) -> GatewayError:
    return GatewayError(400, "invalid_request", message, param=param)


@dataclass
class Translation:
    """The upstream request and the names of accepted fields that were not forwarded."""

    request: GenerateContentRequest
    ignored: list[str] = field(default_factory=list)


def translate_request(body: bytes) -> Translation:
    """The Gemini request for an OpenAI chat request body. Raises GatewayError (400)."""
    try:
        raw, request = _decode_keys(body), _decode_request(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise _invalid(f"cannot translate the request for provider kind 'gemini': {exc}") from None
    ignored = sorted(key for key in raw.keys() & IGNORED if bytes(raw[key]) not in _ABSENT)
    for key in sorted(raw.keys() - HANDLED - IGNORED - set(_Request.__struct_fields__)):
        if bytes(raw[key]) not in _ABSENT:
            raise unsupported(key)
    if request.logprobs:
        raise unsupported("logprobs")
    if request.parallel_tool_calls is False:
        raise unsupported("parallel_tool_calls", "parallel_tool_calls=false")
    if request.modalities not in (None, [], ["text"]):
        raise unsupported("modalities", "output modalities other than text")
    system, contents = _contents(request.messages, ignored)
    if not contents:
        raise _invalid("the conversation needs at least one user or assistant message", "messages")
    tools, tool_config = _tools(request, ignored)
    return Translation(GenerateContentRequest(contents, system, tools, tool_config,
                                              _generation_config(request)), ignored)


def _contents(messages: list[_Message], ignored: list[str]) -> tuple[Content | None, list[Content]]:
    system: list[Part] = []
    contents: list[Content] = []
    calls: dict[str, str] = {}  # tool call id -> function name (a later reuse of an id wins)
    for i, message in enumerate(messages):
        if message.name and "messages[].name" not in ignored:
            ignored.append("messages[].name")
        match message.role:
            case "system" | "developer":
                system.extend(_text_parts(message, i))
                continue
            case "user":
                role, parts = "user", _user_parts(message, i, ignored)
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


def _text_parts(message: _Message, i: int) -> list[Part]:
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


def _user_parts(message: _Message, i: int, ignored: list[str]) -> list[Part]:
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
                if part.image_url.detail not in (None, "auto") and "image_url.detail" not in ignored:
                    ignored.append("image_url.detail")
                parts.append(media_part(part.image_url.url, where))
            case "file" if part.file is not None:
                parts.append(_file_part(part.file, where))
            case "input_audio" if part.input_audio is not None:
                mime = f"audio/{part.input_audio.format}"
                parts.append(Part(inline_data=Blob(mime, part.input_audio.data)))
            case _:
                raise unsupported(f"{where}.type", f"content part {part.type!r}")
    return parts


def media_part(url: str, where: str = "url") -> Part:
    """A data URL as inline data; any other URL as a file reference, typed by its suffix."""
    if url.startswith("data:"):
        return Part(inline_data=_data_url(url, where))
    return Part(file_data=FileData(url, _mime_of(urlsplit(url).path)))


def _mime_of(path: str) -> str | None:
    name = path.rsplit("/", 1)[-1]
    suffix = name[name.rfind("."):].lower() if "." in name else ""
    return _MIME_BY_SUFFIX.get(suffix) or (mimetypes.guess_type(name)[0] if suffix else None)


def _data_url(url: str, where: str) -> Blob:
    header, comma, payload = url[len("data:"):].partition(",")
    if not comma:
        raise _invalid(f"{where} is not a valid data URL", where)
    mime, *params = header.split(";")
    if "base64" in params:
        return Blob(mime or "text/plain", payload)
    return Blob(mime or "text/plain", base64.b64encode(unquote_to_bytes(payload)).decode())


def _file_part(file: _File, where: str) -> Part:
    if file.file_id:
        raise unsupported(f"{where}.file.file_id", "file_id (OpenAI uploaded files)")
    if not file.file_data:
        raise _invalid(f"{where}.file needs file_data", where)
    if file.file_data.startswith("data:"):
        return Part(inline_data=_data_url(file.file_data, where))
    mime = _mime_of(file.filename or "") or "application/pdf"
    return Part(inline_data=Blob(mime, file.file_data))


def _call_parts(message: _Message, i: int, calls: dict[str, str]) -> list[Part]:
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


def _tool_result(message: _Message, i: int, calls: dict[str, str]) -> Part:
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


def _tools(request: _Request, ignored: list[str]) -> tuple[list[GeminiTool] | None, ToolConfig | None]:
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


def _generation_config(request: _Request) -> GenerationConfig | None:
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


# ── response translation ─────────────────────────────────────────────────────────
def finish_reason(reason: str | None, has_tool_calls: bool) -> str:
    """OpenAI's finish_reason for Gemini's finishReason."""
    match reason:
        case "STOP":
            mapped = "stop"
        case "MAX_TOKENS":
            mapped = "length"
        case str() if reason in CONTENT_FILTER:
            mapped = "content_filter"
        case _:  # OTHER, MALFORMED_FUNCTION_CALL, FINISH_REASON_UNSPECIFIED, newer values
            mapped = "stop"
    return "tool_calls" if has_tool_calls and mapped == "stop" else mapped


def usage_of(metadata: UsageMetadata | None) -> Usage:
    """OpenAI usage; thinking tokens count as completion tokens, as OpenAI's reasoning tokens do."""
    if metadata is None:
        return Usage()
    completion = metadata.candidates_token_count + metadata.thoughts_token_count
    return Usage(metadata.prompt_token_count, completion, metadata.prompt_token_count + completion)


def _split(content: Content | None) -> tuple[str | None, list[Part]]:
    """The answer text (None when there is none) and the functionCall parts; thoughts skipped."""
    texts, calls = [], []
    for part in content.parts if content else []:
        if part.thought:
            continue
        if part.function_call is not None:
            calls.append(part)
        elif part.text is not None:
            texts.append(part.text)
    return ("".join(texts) if texts else None), calls


def _tool_call(part: Part) -> _SignedToolCall:
    call = part.function_call
    assert call is not None
    signature = {"google": {"thought_signature": part.thought_signature}} \
        if part.thought_signature else UNSET
    return _SignedToolCall(id=call.id or "call_" + uuid.uuid4().hex[:24],
                           function=FunctionCall(call.name, _encode(call.args or {}).decode()),
                           extra_content=signature)


def _blocked(response: GenerateContentResponse) -> bool:
    return response.prompt_feedback is not None and response.prompt_feedback.block_reason is not None


def translate_response(response: GenerateContentResponse, model: str, provider: str) -> ChatCompletion:
    """The chat.completion for a whole GenerateContentResponse; `model` is the client's slug."""
    choices = []
    for candidate in sorted(response.candidates, key=lambda c: c.index):
        text, calls = _split(candidate.content)
        tool_calls: list[ToolCall] = [_tool_call(part) for part in calls]
        message = AssistantMessage(text, tool_calls=tool_calls or UNSET)
        choices.append(Choice(candidate.index, message,
                              finish_reason(candidate.finish_reason, bool(tool_calls))))
    if not choices:
        if not _blocked(response):
            raise UpstreamFailure(502, "upstream_error", f"provider {provider!r} sent no candidates",
                                  provider=provider, retryable=True)
        choices = [Choice(0, AssistantMessage(None), "content_filter")]
    return ChatCompletion(id="chatcmpl-" + (response.response_id or uuid.uuid4().hex),
                          created=int(time.time()), model=model, choices=choices,
                          usage=usage_of(response.usage_metadata))


@dataclass
class _ChoiceState:
    started: bool = False
    tool_calls: int = 0
    finished: bool = False


class StreamTranslator:
    """Turns the stream's GenerateContentResponse events into chat.completion.chunk bytes."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.id = "chatcmpl-" + uuid.uuid4().hex
        self.created = int(time.time())
        self.usage = Usage()
        self.choices: dict[int, _ChoiceState] = {}

    @property
    def finished(self) -> bool:
        """Every choice that began got its finish reason: the stream is complete."""
        return bool(self.choices) and all(state.finished for state in self.choices.values())

    def feed(self, response: GenerateContentResponse) -> list[bytes]:
        """The chunks for one upstream event (usage is kept, not emitted)."""
        if response.usage_metadata is not None:
            self.usage = usage_of(response.usage_metadata)
        out = []
        if not response.candidates and _blocked(response):
            state = self.choices.setdefault(0, _ChoiceState())
            if not state.finished:
                state.started = state.finished = True
                out.append(self._chunk(0, Delta(role="assistant", content=None), "content_filter"))
        for candidate in response.candidates:
            state = self.choices.setdefault(candidate.index, _ChoiceState())
            if state.finished:
                continue
            text, calls = _split(candidate.content)
            if text or calls:
                tool_calls = [{"index": state.tool_calls + k, **msgspec.to_builtins(_tool_call(part))}
                              for k, part in enumerate(calls)]
                state.tool_calls += len(calls)
                delta = Delta(content=text or (UNSET if state.started else None),
                              tool_calls=tool_calls or UNSET)
                if not state.started:
                    delta.role, state.started = "assistant", True
                out.append(self._chunk(candidate.index, delta))
            if candidate.finish_reason:
                delta = Delta() if state.started else Delta(role="assistant", content=None)
                state.started = state.finished = True
                reason = finish_reason(candidate.finish_reason, state.tool_calls > 0)
                out.append(self._chunk(candidate.index, delta, reason))
        return out

    def usage_chunk(self) -> bytes:
        """The usage-only final chunk (`choices: []`)."""
        return _encode(ChatCompletionChunk(self.id, self.created, self.model, [], usage=self.usage))

    def _chunk(self, index: int, delta: Delta, finish: str | None = None) -> bytes:
        return _encode(ChatCompletionChunk(self.id, self.created, self.model,
                                           [ChunkChoice(index, delta, finish)]))


# ── failures ─────────────────────────────────────────────────────────────────────
def upstream_failure(provider: str, status: int, error: GeminiError,
                     secret: str | None = None) -> UpstreamFailure:
    """Map a Gemini error to a failure; the credential never appears in what is relayed."""
    reasons = {d.get("reason") for d in error.details if isinstance(d, dict)}
    ours = "API_KEY_INVALID" in reasons or error.status == "FAILED_PRECONDITION"
    if status in CLIENT_FAULT and not ours:
        message = error.message or f"provider {provider!r} rejected the request"
        if secret:
            message = message.replace(secret, "[redacted]")
        return UpstreamFailure(status, error.status.lower() or "upstream_invalid_request", message,
                               provider=provider, upstream_status=status, failover=False)
    retryable = status in (408, 409, 429) or status >= 500
    answered = f"{status} {error.status}".strip()
    return UpstreamFailure(502, "upstream_error", f"provider {provider!r} answered {answered}",
                           provider=provider, upstream_status=status, retryable=retryable)


# ── the adapter ──────────────────────────────────────────────────────────────────
class GeminiAdapter(AdapterBase):
    """Calls `{base_url}/models/{model}:generateContent` with the key in `x-goog-api-key`.

    Chat completions only; embeddings and native relays get AdapterBase's explicit 400.
    """

    kind = "gemini"

    def __init__(self, name: str, config: ProviderConfig, http: httpx.AsyncClient) -> None:
        self.name = name
        self.base_url = (config.base_url or DEFAULT_BASE_URL).rstrip("/")
        self.http = http
        self.credential = read_credential(name, config)
        self.headers = {"content-type": "application/json"}
        if self.credential:
            self.headers["x-goog-api-key"] = self.credential

    def _url(self, model: str, method: str) -> str:
        resource = model if "/" in model else f"models/{model}"  # e.g. tunedModels/x as is
        return f"{self.base_url}/{resource}:{method}"

    def _body(self, call: Call) -> bytes:
        translation = translate_request(call.job.body)
        if translation.ignored:
            log_event("fields_not_forwarded", request_id=call.job.request_id, provider=self.name,
                      fields=translation.ignored)
        return _encode(translation.request)

    async def complete(self, call: Call) -> Answer:
        """Non-streamed call: one GenerateContentResponse, one chat.completion."""
        body = self._body(call)
        try:
            response = await self.http.post(self._url(call.upstream_model, "generateContent"),
                                            content=body, headers=self.headers)
        except httpx.HTTPError as exc:
            raise transport_failure(self.name, exc) from exc
        if response.status_code != 200:
            raise self._failure(response.status_code, response.content)
        answer = self._decode(response.content, retryable=True)
        completion = translate_response(answer, call.job.model, self.name)
        return Answer(_encode(completion), completion.usage or Usage())

    async def stream(self, call: Call, emit: Emit) -> Usage:
        """Streamed call over SSE; each event becomes zero or more chunks."""
        body = self._body(call)
        translator = StreamTranslator(call.job.model)
        request = self.http.build_request(
            "POST", self._url(call.upstream_model, "streamGenerateContent"),
            params={"alt": "sse"}, content=body, headers=self.headers)
        try:
            response = await self.http.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise transport_failure(self.name, exc) from exc
        try:
            if response.status_code != 200:
                raise self._failure(response.status_code, await response.aread())
            async for event in iter_events(response.aiter_bytes()):
                answer = self._decode(event.data, retryable=False)
                if answer.error is not None:
                    raise upstream_failure(self.name, answer.error.code or 502, answer.error,
                                           self.credential)
                for chunk in translator.feed(answer):
                    emit(chunk)
        except httpx.HTTPError as exc:
            raise transport_failure(self.name, exc) from exc
        finally:
            await response.aclose()
        if not translator.finished:
            raise UpstreamFailure(502, "upstream_error",
                                  f"provider {self.name!r} ended the stream before the answer was complete",
                                  provider=self.name, retryable=True)
        if call.job.include_usage:
            emit(translator.usage_chunk())
        return translator.usage

    def _decode(self, data: bytes, *, retryable: bool) -> GenerateContentResponse:
        try:
            return _decode_response(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise UpstreamFailure(502, "upstream_error", f"provider {self.name!r} sent malformed JSON",
                                  provider=self.name, retryable=retryable) from exc

    def _failure(self, status: int, content: bytes) -> UpstreamFailure:
        try:
            error = _decode_error(content).error or GeminiError()
        except (msgspec.DecodeError, msgspec.ValidationError):
            error = GeminiError()
        return upstream_failure(self.name, status, error, self.credential)
