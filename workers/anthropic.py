"""Provider kind `anthropic`: OpenAI chat completions served by Anthropic's Messages API.

    client body (OpenAI)  --to_messages_request-->  POST {base_url}/v1/messages
    Message JSON          --to_chat_completion--->  chat.completion
    SSE events            --StreamTranslator----->  chat.completion.chunk, ...

Both directions are translated field by field. A parameter that would change the
answer and that Anthropic cannot honour is a 400 `unsupported_parameter` before any
upstream call; only harmless ones (`store`, `metadata`, `image_url.detail`, ...) are
dropped. Wire format: https://docs.anthropic.com/en/api/messages,
https://docs.anthropic.com/en/api/messages-streaming, https://docs.anthropic.com/en/api/errors.
"""

from __future__ import annotations

import time
from typing import Any

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
    ResponseFormat,
    Tool,
    ToolCall,
    ToolChoice,
    Usage,
)
from schemas.config import ProviderConfig
from schemas.errors import GatewayError
from workers.base import Answer, Call, Emit, UpstreamFailure, read_credential, transport_failure
from workers.sse import iter_events

KIND = "anthropic"
CLIENT_FAULT = frozenset({400, 413, 422})  # relayed as they are, never retried
_ERROR_STATUS = {  # the HTTP status each error type has outside a stream
    "invalid_request_error": 400, "authentication_error": 401, "billing_error": 402,
    "permission_error": 403, "not_found_error": 404, "request_too_large": 413,
    "rate_limit_error": 429, "api_error": 500, "overloaded_error": 529,
}

# --- the OpenAI request, as far as this adapter reads it --------------------------------


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


# --- the Anthropic request ---------------------------------------------------------------


class _Source(Struct, omit_defaults=True):
    type: str
    media_type: str | None = None
    data: str | None = None
    url: str | None = None


class _Text(Struct, tag="text"):
    text: str


class _Image(Struct, tag="image"):
    source: _Source


class _Document(Struct, tag="document"):
    source: _Source


class _ToolUse(Struct, tag="tool_use"):
    id: str
    name: str
    input: dict[str, Any]


class _ToolResult(Struct, tag="tool_result"):
    tool_use_id: str
    content: str | list[_Text]


_Block = _Text | _Image | _Document | _ToolUse | _ToolResult


class _Turn(Struct):
    role: str
    content: list[_Block]


class _ToolSpec(Struct, omit_defaults=True):
    name: str
    input_schema: dict[str, Any]
    description: str | UnsetType = UNSET
    strict: bool | UnsetType = UNSET


class _ToolChoiceSpec(Struct, omit_defaults=True):
    type: str
    name: str | UnsetType = UNSET
    disable_parallel_tool_use: bool | UnsetType = UNSET


class _MessagesRequest(Struct, omit_defaults=True):
    model: str
    max_tokens: int
    messages: list[_Turn]
    system: list[_Text] | None = None
    stop_sequences: list[str] | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    tools: list[_ToolSpec] | None = None
    tool_choice: _ToolChoiceSpec | None = None
    metadata: dict[str, str] | None = None
    output_config: dict[str, Any] | None = None
    stream: bool = False


# The values of those parameters that ask for nothing (clients send explicit defaults).
_UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "n": (None, 1), "logprobs": (None, False), "top_logprobs": (None, 0), "seed": (None,),
    "presence_penalty": (None, 0), "frequency_penalty": (None, 0), "logit_bias": (None, {}),
    "functions": (None,), "function_call": (None,), "audio": (None,),
    "modalities": (None, ["text"]), "reasoning_effort": (None,), "web_search_options": (None,),
}
_decode_request = msgspec.json.Decoder(_Request).decode
_decode_arguments = msgspec.json.Decoder(dict[str, Any]).decode
_encode = msgspec.json.Encoder().encode


def _unsupported(param: str, what: str = "") -> GatewayError:
    return GatewayError(400, "unsupported_parameter",
                        f"{what or f'`{param}`'} is not supported by provider kind {KIND!r}",
                        param=param)


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


def _block(part: _Part) -> _Block:
    match part.type:
        case "text":
            return _Text(part.text)
        case "refusal":
            return _Text(part.refusal)
        case "image_url" if part.image_url is not None:
            url = part.image_url.url
            inline = _data_url(url)
            if inline is None:
                return _Image(_Source("url", url=url))
            return _Image(_Source("base64", media_type=inline[0], data=inline[1]))
        case "file" if part.file is not None and part.file.file_data:
            inline = _data_url(part.file.file_data)
            if inline is not None and inline[0] == "application/pdf":
                return _Document(_Source("base64", media_type=inline[0], data=inline[1]))
            raise _unsupported("messages", "a file part that is not base64 PDF data")
    raise _unsupported("messages", f"content part type {part.type!r}")


def _blocks(content: str | list[_Part] | None) -> list[_Block]:
    """Content blocks of a message; empty text is dropped (Anthropic refuses it)."""
    if isinstance(content, str):
        return [_Text(content)] if content else []
    blocks = [_block(part) for part in content or []]
    return [b for b in blocks if not (isinstance(b, _Text) and not b.text)]


def _tool_use(call: ToolCall) -> _ToolUse:
    try:
        arguments = _decode_arguments(call.function.arguments or "{}")
    except msgspec.DecodeError as exc:
        raise GatewayError(400, "invalid_tool_arguments",
                           f"tool call {call.id!r} has arguments that are not a JSON object",
                           param="messages") from exc
    return _ToolUse(call.id, call.function.name, arguments)


def _turns(messages: list[_Message]) -> tuple[list[_Text], list[_Turn]]:
    """System text and the conversation; consecutive same-role turns merge into one."""
    system: list[_Text] = []
    turns: list[_Turn] = []
    for message in messages:
        match message.role:
            case "system" | "developer":
                for block in _blocks(message.content):
                    if not isinstance(block, _Text):
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
                    b for b in _blocks(message.content) if isinstance(b, _Text)]
                role, blocks = "user", [_ToolResult(message.tool_call_id, content or "")]
            case other:
                raise _unsupported("messages", f"message role {other!r}")
        if turns and turns[-1].role == role:
            turns[-1].content.extend(blocks)
        else:
            turns.append(_Turn(role, blocks))
    return system, turns


def _tools(request: _Request) -> tuple[list[_ToolSpec] | None, _ToolChoiceSpec | None]:
    if not request.tools:
        return None, None
    specs = []
    for tool in request.tools:
        if tool.type != "function":
            raise _unsupported("tools", f"tool type {tool.type!r}")
        fn = tool.function
        schema = fn.parameters or {"type": "object", "properties": {}}
        specs.append(_ToolSpec(fn.name, schema, fn.description, True if fn.strict else UNSET))
    match request.tool_choice:
        case None:
            choice = _ToolChoiceSpec("auto") if request.parallel_tool_calls is False else None
        case "auto":
            choice = _ToolChoiceSpec("auto")
        case "none":
            return specs, _ToolChoiceSpec("none")
        case "required":
            choice = _ToolChoiceSpec("any")
        case ToolChoice(function=function):
            choice = _ToolChoiceSpec("tool", function.name)
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


def to_messages_request(body: bytes, model: str, config: ProviderConfig, *, stream: bool) -> bytes:
    """The Anthropic request body for an OpenAI chat-completion body; GatewayError if untranslatable."""
    try:
        request = _decode_request(body)
    except msgspec.DecodeError as exc:
        raise GatewayError(422, "validation_error", f"invalid request: {exc}") from None
    _reject(request)
    system, turns = _turns(request.messages)
    tools, tool_choice = _tools(request)
    stop = [request.stop] if isinstance(request.stop, str) else request.stop
    out = _MessagesRequest(
        model=model,
        max_tokens=request.max_completion_tokens or request.max_tokens or config.default_max_tokens,
        messages=turns, system=system or None, stop_sequences=stop or None,
        temperature=request.temperature, top_p=request.top_p, top_k=request.top_k,
        tools=tools, tool_choice=tool_choice,
        metadata={"user_id": request.user} if request.user else None,
        output_config=_output_config(request.response_format), stream=stream,
    )
    return _encode(out)


# --- the Anthropic answer ----------------------------------------------------------------


class _Usage(Struct):
    input_tokens: int | None = None
    output_tokens: int = 0
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None

    def prompt_tokens(self) -> int | None:
        """Every prompt token, cached or not (OpenAI counts cached ones in prompt_tokens)."""
        if self.input_tokens is None:
            return None
        return (self.input_tokens + (self.cache_creation_input_tokens or 0)
                + (self.cache_read_input_tokens or 0))


class _ContentBlock(Struct):
    type: str  # text | tool_use | thinking | ... (kinds not asked for are ignored)
    text: str = ""
    id: str = ""
    name: str = ""
    input: msgspec.Raw = msgspec.Raw(b"{}")


class _AnthropicMessage(Struct):
    id: str
    content: list[_ContentBlock]
    usage: _Usage
    stop_reason: str | None = None


class _MessageStart(Struct):
    message: _AnthropicMessage


class _BlockStart(Struct):
    index: int
    content_block: _ContentBlock


class _BlockDeltaBody(Struct):
    type: str  # text_delta | input_json_delta | thinking_delta | ...
    text: str = ""
    partial_json: str = ""


class _BlockDelta(Struct):
    index: int
    delta: _BlockDeltaBody


class _StopReason(Struct):
    stop_reason: str | None = None


class _MessageDelta(Struct):
    delta: _StopReason
    usage: _Usage = msgspec.field(default_factory=_Usage)


class _Error(Struct):
    type: str = ""
    message: str = ""


class _ErrorBody(Struct):
    error: _Error | None = None


_decode_message = msgspec.json.Decoder(_AnthropicMessage).decode
_decode_start = msgspec.json.Decoder(_MessageStart).decode
_decode_block_start = msgspec.json.Decoder(_BlockStart).decode
_decode_block_delta = msgspec.json.Decoder(_BlockDelta).decode
_decode_message_delta = msgspec.json.Decoder(_MessageDelta).decode
_decode_error = msgspec.json.Decoder(_ErrorBody).decode


def finish_reason(stop_reason: str | None) -> str:
    """OpenAI's finish_reason for Anthropic's stop_reason."""
    match stop_reason:
        case "end_turn" | "stop_sequence" | "pause_turn":
            return "stop"
        case "max_tokens" | "model_context_window_exceeded":
            return "length"
        case "tool_use":
            return "tool_calls"
        case "refusal":
            return "content_filter"
        case _:
            return "stop"


def to_chat_completion(body: bytes, slug: str) -> tuple[ChatCompletion, Usage]:
    """The chat.completion for an Anthropic Message body, `model` set to the client's slug."""
    message = _decode_message(body)
    text = "".join(b.text for b in message.content if b.type == "text")
    calls = [ToolCall(b.id, FunctionCall(b.name, bytes(b.input).decode()))
             for b in message.content if b.type == "tool_use"]
    prompt = message.usage.prompt_tokens() or 0
    usage = Usage(prompt, message.usage.output_tokens, prompt + message.usage.output_tokens)
    reply = AssistantMessage(text if text or not calls else None, tool_calls=calls or UNSET)
    completion = ChatCompletion(id=message.id, created=int(time.time()), model=slug,
                                choices=[Choice(0, reply, finish_reason(message.stop_reason))],
                                usage=usage)
    return completion, usage


class StreamTranslator:
    """Turns Anthropic stream events into client-ready chunks, one event at a time.

    The first chunk carries `role: assistant`; nothing is emitted before there is
    content, so an error event that comes first still lets the runner retry. The
    finish chunk waits for `message_stop`, so a cut stream never looks complete.
    """

    def __init__(self, provider: str, slug: str, include_usage: bool) -> None:
        self.provider, self.slug, self.include_usage = provider, slug, include_usage
        self.id, self.created = "", int(time.time())
        self.usage = Usage()
        self.finish = "stop"
        self.done = False
        self._tool_index: dict[int, int] = {}  # content block index -> OpenAI tool call index
        self._started = False

    def feed(self, event: str, data: bytes) -> list[bytes]:
        """The chunks for one SSE event (named as its `type`); raises UpstreamFailure."""
        try:
            return self._feed(event, data)
        except msgspec.DecodeError as exc:
            raise UpstreamFailure(502, "upstream_error", f"provider {self.provider!r} sent a "
                                  f"malformed {event} event", provider=self.provider) from exc

    def _feed(self, event: str, data: bytes) -> list[bytes]:
        match event:
            case "message_start":
                start = _decode_start(data).message
                self.id = start.id
                self._count(start.usage)
            case "content_block_start":
                block = _decode_block_start(data)
                if block.content_block.type == "tool_use":
                    index = self._tool_index[block.index] = len(self._tool_index)
                    call = {"index": index, "id": block.content_block.id, "type": "function",
                            "function": {"name": block.content_block.name, "arguments": ""}}
                    return [self._chunk(Delta(tool_calls=[call]))]
                if block.content_block.type == "text" and block.content_block.text:
                    return [self._chunk(Delta(content=block.content_block.text))]
            case "content_block_delta":
                delta = _decode_block_delta(data)
                if delta.delta.type == "text_delta" and delta.delta.text:
                    return [self._chunk(Delta(content=delta.delta.text))]
                if (delta.delta.type == "input_json_delta" and delta.delta.partial_json
                        and delta.index in self._tool_index):
                    call = {"index": self._tool_index[delta.index],
                            "function": {"arguments": delta.delta.partial_json}}
                    return [self._chunk(Delta(tool_calls=[call]))]
            case "message_delta":
                update = _decode_message_delta(data)
                self.finish = finish_reason(update.delta.stop_reason)
                self._count(update.usage)
            case "message_stop":
                self.done = True
                chunks = [self._chunk(Delta(), self.finish)]
                if self.include_usage:
                    chunks.append(_encode(ChatCompletionChunk(self.id, self.created, self.slug, [],
                                                              usage=self.usage)))
                return chunks
            case "error":
                error = _decode_error(data).error or _Error()
                raise upstream_failure(self.provider, _ERROR_STATUS.get(error.type, 500), error)
            case _:
                pass  # ping, content_block_stop, and event types Anthropic adds later
        return []

    def _count(self, usage: _Usage) -> None:
        """Usage in Anthropic events is cumulative: the latest count wins."""
        prompt = usage.prompt_tokens()
        if prompt is not None:
            self.usage.prompt_tokens = prompt
        self.usage.completion_tokens = max(self.usage.completion_tokens, usage.output_tokens)
        self.usage.total_tokens = self.usage.prompt_tokens + self.usage.completion_tokens

    def _chunk(self, delta: Delta, finish: str | None = None) -> bytes:
        if not self._started:
            delta.role, self._started = "assistant", True
        choice = ChunkChoice(0, delta, finish)
        return _encode(ChatCompletionChunk(self.id, self.created, self.slug, [choice]))


def upstream_failure(provider: str, status: int, error: _Error, secret: str | None = None) -> UpstreamFailure:
    """The failure for an Anthropic error status (or an error event's equivalent status)."""
    if status in CLIENT_FAULT:
        message = error.message or f"provider {provider!r} rejected the request"
        if secret:
            message = message.replace(secret, "[redacted]")
        return UpstreamFailure(status, error.type or "upstream_invalid_request", message,
                               provider=provider, upstream_status=status, failover=False)
    retryable = status in (408, 409, 429) or status >= 500
    kind = f" ({error.type})" if error.type else ""
    return UpstreamFailure(502, "upstream_error", f"provider {provider!r} answered {status}{kind}",
                           provider=provider, upstream_status=status, retryable=retryable)


class AnthropicAdapter:
    """Calls `POST {base_url}/v1/messages` with the provider's `x-api-key`."""

    def __init__(self, name: str, config: ProviderConfig, http: httpx.AsyncClient) -> None:
        self.name = name
        self.config = config
        self.url = (config.base_url or "https://api.anthropic.com").rstrip("/") + "/v1/messages"
        self.http = http
        self._secret = read_credential(name, config)
        self.headers = {"content-type": "application/json",
                        "anthropic-version": config.anthropic_version}
        if self._secret:
            self.headers["x-api-key"] = self._secret

    def _body(self, call: Call) -> bytes:
        return to_messages_request(call.job.body, call.upstream_model, self.config,
                                   stream=call.job.stream)

    async def complete(self, call: Call) -> Answer:
        """Non-streamed call: one Message back, translated to a chat.completion."""
        body = self._body(call)
        try:
            response = await self.http.post(self.url, content=body, headers=self.headers)
        except httpx.HTTPError as exc:
            raise transport_failure(self.name, exc) from exc
        if response.status_code != 200:
            raise self._failure(response.status_code, response.content)
        try:
            completion, usage = to_chat_completion(response.content, call.job.model)
        except msgspec.DecodeError as exc:
            raise UpstreamFailure(502, "upstream_error", f"provider {self.name!r} sent malformed JSON",
                                  provider=self.name, retryable=True) from exc
        return Answer(_encode(completion), usage)

    async def stream(self, call: Call, emit: Emit) -> Usage:
        """Streamed call: each event translated as it comes; complete only at message_stop."""
        translator = StreamTranslator(self.name, call.job.model, call.job.include_usage)
        request = self.http.build_request("POST", self.url, content=self._body(call),
                                          headers=self.headers)
        try:
            response = await self.http.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise transport_failure(self.name, exc) from exc
        try:
            if response.status_code != 200:
                raise self._failure(response.status_code, await response.aread())
            async for event in iter_events(response.aiter_bytes()):
                for chunk in translator.feed(event.event, event.data):
                    emit(chunk)
                if translator.done:
                    return translator.usage
        except httpx.HTTPError as exc:
            raise transport_failure(self.name, exc) from exc
        finally:
            await response.aclose()
        raise UpstreamFailure(502, "upstream_error",
                              f"provider {self.name!r} ended the stream before message_stop",
                              provider=self.name, retryable=True)

    def _failure(self, status: int, content: bytes) -> UpstreamFailure:
        try:
            error = _decode_error(content).error or _Error()
        except msgspec.DecodeError:
            error = _Error()
        return upstream_failure(self.name, status, error, self._secret)
