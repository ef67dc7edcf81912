"""Gemini GenerateContentResponse -> OpenAI chat.completion and chat.completion.chunk.

Pure translation, no I/O. Candidates become choices (by `index`), thoughts are skipped,
with `parallel_tool_calls: false` only a choice's first function call is kept,
functionCall parts become tool calls that carry Gemini's thought signature as
`extra_content.google.thought_signature` (the convention of Google's own OpenAI-compatible
endpoint), and thinking tokens count as completion tokens. Wire format:
https://ai.google.dev/api/generate-content.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import msgspec
from msgspec import UNSET, UnsetType

from schemas.chat import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    Choice,
    ChunkChoice,
    Delta,
    FunctionCall,
    ToolCall,
    Usage,
)
from schemas.gemini import Content, GenerateContentResponse, Part, UsageMetadata
from workers.providers._base import UpstreamFailure
from workers.providers._meter import UsageMeter

CONTENT_FILTER = frozenset({"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII",
                            "IMAGE_SAFETY", "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION"})


class _SignedToolCall(ToolCall, kw_only=True):
    """An OpenAI tool call that may carry Gemini's thought signature."""

    extra_content: dict[str, Any] | UnsetType = UNSET


_encode = msgspec.json.Encoder().encode


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


def translate_response(response: GenerateContentResponse, model: str, provider: str, *,
                       first_call_only: bool = False) -> ChatCompletion:
    """The chat.completion for a whole GenerateContentResponse; `model` is the client's slug.
    `first_call_only` (parallel_tool_calls false) keeps each choice's first function call."""
    choices = []
    for candidate in sorted(response.candidates, key=lambda c: c.index):
        text, calls = _split(candidate.content)
        if first_call_only:
            calls = calls[:1]
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

    def __init__(self, model: str, meter: UsageMeter | None = None, *,
                 first_call_only: bool = False) -> None:
        self.model = model
        self.first_call_only = first_call_only  # parallel_tool_calls false: later calls dropped
        self.meter = meter or UsageMeter()  # the running count, should the stream be cut
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
            if self.first_call_only:
                calls = calls[:max(0, 1 - state.tool_calls)]
            self.meter.add_text(len(text or "") + sum(len(_encode(p.function_call.args or {}))
                                                     for p in calls if p.function_call))
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
        if response.usage_metadata is not None:
            self.meter.report(self.usage)  # Gemini's running totals cover this event's text
        return out

    def usage_chunk(self) -> bytes:
        """The usage-only final chunk (`choices: []`)."""
        return _encode(ChatCompletionChunk(self.id, self.created, self.model, [], usage=self.usage))

    def _chunk(self, index: int, delta: Delta, finish: str | None = None) -> bytes:
        return _encode(ChatCompletionChunk(self.id, self.created, self.model,
                                           [ChunkChoice(index, delta, finish)]))
