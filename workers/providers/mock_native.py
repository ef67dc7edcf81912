"""The mock in the providers' own dialects: Anthropic Messages and Gemini generateContent.

Each request is read into a `mock_reply.Prompt` (so the same rules pick text, JSON or a
tool call) and the answer is written in that API's wire shape:

    anthropic_messages  a Message {id, type, role, model, content, stop_reason, stop_sequence,
                        usage}; streamed as message_start, content_block_start, ping,
                        content_block_delta..., content_block_stop, message_delta, message_stop
    gemini_generate     a GenerateContentResponse {candidates, usageMetadata, modelVersion,
                        responseId}; streamed (`alt=sse`) as one response per piece, the last
                        piece of each candidate carrying its finishReason, the last event usage

Anthropic: `max_tokens` cuts (stop_reason `max_tokens`), `stop_sequences` (`stop_sequence`),
`tools` + `tool_choice` (`tool_use` blocks), `output_config.format` (or the beta
`output_format`) json_schema. Gemini: `maxOutputTokens` (`MAX_TOKENS`), `stopSequences`,
`candidateCount`, `functionDeclarations` + `functionCallingConfig`, `responseMimeType`
application/json with `responseJsonSchema` or `responseSchema`.
References: https://docs.anthropic.com/en/api/messages-streaming,
https://ai.google.dev/api/generate-content.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import msgspec
from msgspec import Struct

from schemas.chat import Usage
from schemas.errors import GatewayError
from workers.providers.mock_reply import Prompt, Reply, ToolSpec, choices, pieces, reply, slices

_encode = msgspec.json.Encoder().encode
Event = tuple[str, bytes, int]  # SSE event name ("" = unnamed), its data, characters of output


# ── Anthropic Messages ───────────────────────────────────────────────────────────
class _Block(Struct):
    type: str
    text: str = ""
    content: str | list[_Block] | None = None  # a tool_result's


class _Turn(Struct):
    role: str
    content: str | list[_Block]


class _Tool(Struct):
    name: str
    input_schema: dict[str, Any] = {}  # server tools have none


class _Choice(Struct):
    type: str  # auto | any | tool | none
    name: str = ""


class _Format(Struct):
    type: str = ""
    schema: dict[str, Any] | None = None


class _Output(Struct):
    format: _Format | None = None


class _MessagesRequest(Struct):
    messages: list[_Turn]
    max_tokens: int | None = None
    system: str | list[_Block] | None = None
    stop_sequences: list[str] | None = None
    tools: list[_Tool] | None = None
    tool_choice: _Choice | None = None
    output_config: _Output | None = None
    output_format: _Format | None = None


def _blocks_text(content: str | list[_Block] | None) -> str:
    if isinstance(content, str):
        return content
    return " ".join(b.text if b.type == "text" else _blocks_text(b.content)
                    for b in content or () if b.type in ("text", "tool_result"))


def anthropic_prompt(request: _MessagesRequest) -> Prompt:
    """A Messages request, read as a Prompt."""
    last = request.messages[-1]
    results = not isinstance(last.content, str) and any(b.type == "tool_result" for b in last.content)
    users = [t for t in request.messages if t.role == "user" and _blocks_text(t.content)]
    prompt = Prompt(text=_blocks_text(users[-1].content) if users else "",
                    asks=last.role == "user" and not results, max_words=request.max_tokens,
                    stop=list(request.stop_sequences or ()))
    prompt.words = max(sum(len(_blocks_text(t.content).split()) for t in request.messages)
                       + len(_blocks_text(request.system).split()), 1)
    prompt.tools = [ToolSpec(t.name, t.input_schema) for t in request.tools or ()]
    choice = request.tool_choice
    if choice is not None:
        prompt.tool_mode = {"any": "required", "none": "none"}.get(choice.type, "auto")  # type: ignore[assignment]
        prompt.forced = choice.name if choice.type == "tool" else ""
    form = request.output_config.format if request.output_config else request.output_format
    if form is not None and form.type == "json_schema":
        prompt.schema = form.schema or {}
    return prompt


@dataclass(slots=True)
class AnthropicAnswer:
    """One Message, whole or as its stream of events."""

    prompt: Prompt
    answer: Reply
    model: str
    id: str = ""

    def __post_init__(self) -> None:
        self.id = "msg_mock" + uuid.uuid4().hex[:20]

    @property
    def usage(self) -> Usage:
        return Usage(self.prompt.words, self.answer.words, self.prompt.words + self.answer.words)

    def _stop_reason(self) -> str:
        match self.answer.finish:
            case "tool_calls":
                return "tool_use"
            case "length":
                return "max_tokens"
            case _:
                return "stop_sequence" if self.answer.stop_sequence is not None else "end_turn"

    def _block(self, whole: bool) -> dict[str, Any]:
        if self.answer.tool:
            return {"type": "tool_use", "id": "toolu_mock" + self.id[8:], "name": self.answer.tool,
                    "input": self.answer.args if whole else {}}
        return {"type": "text", "text": (self.answer.text or "") if whole else ""}

    def _message(self, whole: bool) -> dict[str, Any]:
        return {"id": self.id, "type": "message", "role": "assistant", "model": self.model,
                "content": [self._block(True)] if whole else [],
                "stop_reason": self._stop_reason() if whole else None,
                "stop_sequence": self.answer.stop_sequence if whole else None,
                "usage": {"input_tokens": self.prompt.words,
                          "output_tokens": self.answer.words if whole else 0}}

    def body(self) -> bytes:
        return _encode(self._message(True))

    def events(self, chunks: int) -> list[Event]:
        if self.answer.tool:
            deltas = [{"type": "input_json_delta", "partial_json": part}
                      for part in slices(self.answer.arguments, chunks)]
        else:
            deltas = [{"type": "text_delta", "text": part}
                      for part in pieces(self.answer.text or "", chunks)]
        out: list[tuple[str, dict[str, Any]]] = [
            ("message_start", {"message": self._message(False)}),
            ("content_block_start", {"index": 0, "content_block": self._block(False)}),
            ("ping", {}),
            *(("content_block_delta", {"index": 0, "delta": delta}) for delta in deltas),
            ("content_block_stop", {"index": 0}),
            ("message_delta", {"delta": {"stop_reason": self._stop_reason(),
                                         "stop_sequence": self.answer.stop_sequence},
                               "usage": {"output_tokens": self.answer.words}}),
            ("message_stop", {}),
        ]
        return [(name, _encode({"type": name, **data}),
                 len(str(data.get("delta", {}).get("text", "")))) for name, data in out]


# ── Gemini generateContent ───────────────────────────────────────────────────────
class _Part(Struct, rename="camel"):
    text: str | None = None
    function_response: dict[str, Any] | None = None


class _Content(Struct):
    parts: list[_Part] = []
    role: str = "user"


class _Declaration(Struct, rename="camel"):
    name: str
    parameters: dict[str, Any] | None = None
    parameters_json_schema: dict[str, Any] | None = None
    # google-genai sends this one field in snake case (the API reads both spellings).
    snake_schema: dict[str, Any] | None = msgspec.field(name="parameters_json_schema", default=None)

    @property
    def schema(self) -> dict[str, Any]:
        return self.parameters_json_schema or self.snake_schema or self.parameters or {}


class _GeminiTool(Struct, rename="camel"):
    function_declarations: list[_Declaration] | None = None


class _Calling(Struct, rename="camel"):
    mode: str = "AUTO"
    allowed_function_names: list[str] | None = None


class _ToolConfig(Struct, rename="camel"):
    function_calling_config: _Calling | None = None


class _Config(Struct, rename="camel"):
    max_output_tokens: int | None = None
    stop_sequences: list[str] | None = None
    candidate_count: int | None = None
    response_mime_type: str | None = None
    response_schema: dict[str, Any] | None = None
    response_json_schema: dict[str, Any] | None = None


class _GenerateRequest(Struct, rename="camel"):
    contents: list[_Content]
    system_instruction: _Content | None = None
    tools: list[_GeminiTool] | None = None
    tool_config: _ToolConfig | None = None
    generation_config: _Config | None = None


def _parts_text(content: _Content | None) -> str:
    parts = content.parts if content else []
    return " ".join(p.text if p.text else _encode(p.function_response).decode()
                    for p in parts if p.text or p.function_response is not None)


def gemini_prompt(request: _GenerateRequest) -> Prompt:
    """A generateContent request, read as a Prompt."""
    last = request.contents[-1]
    results = any(p.function_response is not None for p in last.parts)
    users = [c for c in request.contents if c.role == "user" and _parts_text(c)]
    config = request.generation_config or _Config()
    prompt = Prompt(text=_parts_text(last if results else users[-1] if users else None),
                    asks=last.role == "user" and not results,
                    n=choices(config.candidate_count, "candidateCount"),
                    max_words=config.max_output_tokens, stop=list(config.stop_sequences or ()))
    prompt.words = max(sum(len(_parts_text(c).split()) for c in request.contents)
                       + len(_parts_text(request.system_instruction).split()), 1)
    prompt.tools = [ToolSpec(d.name, d.schema)
                    for t in request.tools or () for d in t.function_declarations or ()]
    calling = request.tool_config.function_calling_config if request.tool_config else None
    if calling is not None:
        mode = calling.mode.upper()
        prompt.tool_mode = "required" if mode == "ANY" else "none" if mode == "NONE" else "auto"
        allowed = calling.allowed_function_names or []
        if allowed:
            prompt.tools = [t for t in prompt.tools if t.name in allowed] or prompt.tools
        prompt.forced = allowed[0] if mode == "ANY" and len(allowed) == 1 else ""
    if config.response_mime_type == "application/json":
        schema = config.response_json_schema or config.response_schema
        prompt.schema, prompt.json_object = schema, schema is None
    return prompt


@dataclass(slots=True)
class GeminiAnswer:
    """One GenerateContentResponse with `n` candidates, whole or as `alt=sse` chunks."""

    prompt: Prompt
    answer: Reply
    model: str
    id: str = ""

    def __post_init__(self) -> None:
        self.id = "mock" + uuid.uuid4().hex[:20]

    @property
    def usage(self) -> Usage:
        completion = self.answer.words * self.prompt.n
        return Usage(self.prompt.words, completion, self.prompt.words + completion)

    def _response(self, candidates: list[dict[str, Any]], last: bool) -> bytes:
        body: dict[str, Any] = {"candidates": candidates}
        if last:
            usage = self.usage
            body["usageMetadata"] = {"promptTokenCount": usage.prompt_tokens,
                                     "candidatesTokenCount": usage.completion_tokens,
                                     "totalTokenCount": usage.total_tokens}
        return _encode({**body, "modelVersion": self.model, "responseId": self.id})

    def _candidate(self, index: int, parts: list[dict[str, Any]], end: bool) -> dict[str, Any]:
        candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": index}
        if end:
            candidate["finishReason"] = "MAX_TOKENS" if self.answer.finish == "length" else "STOP"
        return candidate

    def _parts(self, text: str) -> list[dict[str, Any]]:
        if self.answer.tool:
            return [{"functionCall": {"name": self.answer.tool, "args": self.answer.args}}]
        return [{"text": text}]

    def body(self) -> bytes:
        whole = self._parts(self.answer.text or "")
        return self._response([self._candidate(i, whole, True) for i in range(self.prompt.n)], True)

    def events(self, chunks: int) -> list[Event]:
        texts = [""] if self.answer.tool else pieces(self.answer.text or "", chunks)
        out: list[Event] = []
        for index in range(self.prompt.n):
            for at, text in enumerate(texts):
                end = at == len(texts) - 1
                candidate = self._candidate(index, self._parts(text), end)
                out.append(("", self._response([candidate], end and index == self.prompt.n - 1),
                            len(text)))
        return out


_anthropic_decoder = msgspec.json.Decoder(_MessagesRequest)
_gemini_decoder = msgspec.json.Decoder(_GenerateRequest)


def native_answer(endpoint: str, body: bytes, model: str) -> AnthropicAnswer | GeminiAnswer | None:
    """The mock's answer to a native request (None: an endpoint the mock does not speak)."""
    try:
        match endpoint:
            case "anthropic_messages":
                prompt = anthropic_prompt(_anthropic_decoder.decode(body))
                return AnthropicAnswer(prompt, reply(prompt), model)
            case "gemini_generate":
                prompt = gemini_prompt(_gemini_decoder.decode(body))
                return GeminiAnswer(prompt, reply(prompt), model)
            case _:
                return None
    except (msgspec.DecodeError, msgspec.ValidationError, IndexError) as exc:
        raise GatewayError(400, "invalid_request", f"the mock cannot read this request: {exc}") from None
