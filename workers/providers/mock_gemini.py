"""The mock in Gemini's generateContent dialect (`/gemini/.../models/{m}:generateContent`,
`:streamGenerateContent?alt=sse`).

The request is read into a `mock_reply.Prompt`, so the same rules pick text, JSON or a
function call: `maxOutputTokens` cuts (finishReason `MAX_TOKENS`), `stopSequences`,
`candidateCount`, `functionDeclarations` + `functionCallingConfig`, `responseMimeType`
application/json with `responseJsonSchema` or `responseSchema`. The answer is a
GenerateContentResponse {candidates, usageMetadata, modelVersion, responseId}; streamed,
one response per piece, the last piece of each candidate carrying its finishReason and
the last event the usage.
Reference: https://ai.google.dev/api/generate-content.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import msgspec
from msgspec import UNSET, Struct, UnsetType

from schemas.chat import Usage
from schemas.gemini import Content, GeminiFunctionCall, Part, UsageMetadata
from workers.providers.mock_reply import Prompt, Reply, ToolSpec, choices, pieces, reply

_encode = msgspec.json.Encoder().encode
Event = tuple[str, bytes, int]  # SSE event name ("": unnamed), its data, characters of output


# ── the request, as far as the mock reads it ─────────────────────────────────────
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


# ── the answer ───────────────────────────────────────────────────────────────────
class Candidate(Struct, rename="camel"):
    content: Content
    index: int
    finish_reason: str | UnsetType = UNSET  # set on a candidate's last piece only


class Response(Struct, rename="camel"):
    candidates: list[Candidate]
    model_version: str
    response_id: str
    usage_metadata: UsageMetadata | UnsetType = UNSET  # in the last event of a stream


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

    def _response(self, candidates: list[Candidate], last: bool) -> bytes:
        usage = self.usage
        metadata = UsageMetadata(usage.prompt_tokens, usage.completion_tokens, 0,
                                 usage.total_tokens) if last else UNSET
        return _encode(Response(candidates, self.model, self.id, metadata))

    def _candidate(self, index: int, text: str, end: bool) -> Candidate:
        if self.answer.tool:
            part = Part(function_call=GeminiFunctionCall(self.answer.tool, self.answer.args))
        else:
            part = Part(text=text)
        finish = ("MAX_TOKENS" if self.answer.finish == "length" else "STOP") if end else UNSET
        return Candidate(Content([part], "model"), index, finish)

    def body(self) -> bytes:
        text = self.answer.text or ""
        return self._response([self._candidate(i, text, True) for i in range(self.prompt.n)], True)

    def events(self, chunks: int) -> list[Event]:
        texts = [""] if self.answer.tool else pieces(self.answer.text or "", chunks)
        out: list[Event] = []
        for index in range(self.prompt.n):
            for at, text in enumerate(texts):
                end = at == len(texts) - 1
                last = end and index == self.prompt.n - 1
                out.append(("", self._response([self._candidate(index, text, end)], last), len(text)))
        return out


_decoder = msgspec.json.Decoder(_GenerateRequest)


def gemini_answer(body: bytes, model: str) -> GeminiAnswer:
    """The mock's answer to a generateContent request (raises msgspec errors for an
    unreadable one, GatewayError for too many candidates)."""
    prompt = gemini_prompt(_decoder.decode(body))
    return GeminiAnswer(prompt, reply(prompt), model)
