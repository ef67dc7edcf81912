"""Anthropic answers → OpenAI chat completions; usage counting and failures for both ways.

    Message body  --to_chat_completion-->  chat.completion
    SSE events    --StreamTranslator---->  chat.completion.chunk, ..., [usage chunk]
    error body or `error` event  --upstream_failure / event_failure-->  UpstreamFailure
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import msgspec
from msgspec import UNSET

from schemas.anthropic import (
    ERROR_STATUS,
    AnthropicError,
    AnthropicUsage,
    block_delta_decoder,
    block_start_decoder,
    error_decoder,
    message_decoder,
    message_delta_decoder,
    message_start_decoder,
)
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
from workers.providers._base import UpstreamFailure, malformed, status_failure
from workers.providers._meter import UsageMeter

_encode = msgspec.json.Encoder().encode


# ── failures ─────────────────────────────────────────────────────────────────────
def upstream_failure(provider: str, status: int, error: AnthropicError,
                     secret: str | None = None) -> UpstreamFailure:
    """The failure for an Anthropic error status (or an error event's equivalent status):
    `status_failure`'s rule, Anthropic's error type as the code or label."""
    return status_failure(provider, status, error.message, error.type or None, secret=secret,
                          label=f"({error.type})" if error.type else "")

def decode_error(content: bytes) -> AnthropicError:
    """The `error` of an error body or event; empty when the body is not Anthropic's."""
    try:
        return error_decoder.decode(content).error or AnthropicError()
    except msgspec.DecodeError:  # ValidationError included
        return AnthropicError()


def event_failure(provider: str, data: bytes, secret: str | None = None) -> UpstreamFailure:
    """The failure for an `error` event: classified by the status its type has outside a stream."""
    error = decode_error(data)
    return upstream_failure(provider, ERROR_STATUS.get(error.type, 500), error, secret)


# ── usage ────────────────────────────────────────────────────────────────────────
def to_usage(counts: AnthropicUsage) -> Usage:
    """OpenAI usage: cached and cache-writing prompt tokens count as prompt tokens."""
    prompt = counts.prompt_tokens() or 0
    completion = counts.output_tokens or 0
    return Usage(prompt, completion, prompt + completion)


@dataclass
class UsageCounter:
    """The usage of a stream: message_start's counts, then message_delta's running totals.

    Each field present in an event is the total so far, so the latest value wins.
    """

    counts: AnthropicUsage = field(default_factory=AnthropicUsage)

    def add(self, update: AnthropicUsage) -> None:
        counts = self.counts
        if update.input_tokens is not None:
            counts.input_tokens = update.input_tokens
        if update.output_tokens is not None:
            counts.output_tokens = update.output_tokens
        if update.cache_creation_input_tokens is not None:
            counts.cache_creation_input_tokens = update.cache_creation_input_tokens
        if update.cache_read_input_tokens is not None:
            counts.cache_read_input_tokens = update.cache_read_input_tokens

    @property
    def usage(self) -> Usage:
        return to_usage(self.counts)


# ── chat completions ─────────────────────────────────────────────────────────────
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
    message = message_decoder.decode(body)
    text = "".join(b.text for b in message.content if b.type == "text")
    calls = [ToolCall(b.id, FunctionCall(b.name, bytes(b.input).decode()))
             for b in message.content if b.type == "tool_use"]
    usage = to_usage(message.usage)
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

    def __init__(self, provider: str, slug: str, include_usage: bool,
                 secret: str | None = None, meter: UsageMeter | None = None) -> None:
        self.provider, self.slug, self.include_usage = provider, slug, include_usage
        self.secret = secret
        self.meter = meter or UsageMeter()  # the running count, should the stream be cut
        self.id, self.created = "", int(time.time())
        self.counter = UsageCounter()
        self.finish = "stop"
        self.done = False
        self._tool_index: dict[int, int] = {}  # content block index -> OpenAI tool call index
        self._started = False

    @property
    def usage(self) -> Usage:
        return self.counter.usage

    def feed(self, event: str, data: bytes) -> list[bytes]:
        """The chunks for one SSE event (named as its `type`); raises UpstreamFailure."""
        try:
            return self._feed(event, data)
        except msgspec.DecodeError as exc:
            raise malformed(self.provider, f"{event} event") from exc

    def _feed(self, event: str, data: bytes) -> list[bytes]:
        match event:
            case "message_start":
                start = message_start_decoder.decode(data).message
                self.id = start.id
                self.counter.add(start.usage)
                self.meter.report(self.usage)
            case "content_block_start":
                block = block_start_decoder.decode(data)
                if block.content_block.type == "tool_use":
                    index = self._tool_index[block.index] = len(self._tool_index)
                    call = {"index": index, "id": block.content_block.id, "type": "function",
                            "function": {"name": block.content_block.name, "arguments": ""}}
                    return [self._chunk(Delta(tool_calls=[call]))]
                if block.content_block.type == "text" and block.content_block.text:
                    self.meter.add_text(len(block.content_block.text))
                    return [self._chunk(Delta(content=block.content_block.text))]
            case "content_block_delta":
                delta = block_delta_decoder.decode(data)
                self.meter.add_text(delta.delta.chars)
                if delta.delta.type == "text_delta" and delta.delta.text:
                    return [self._chunk(Delta(content=delta.delta.text))]
                if (delta.delta.type == "input_json_delta" and delta.delta.partial_json
                        and delta.index in self._tool_index):
                    call = {"index": self._tool_index[delta.index],
                            "function": {"arguments": delta.delta.partial_json}}
                    return [self._chunk(Delta(tool_calls=[call]))]
            case "message_delta":
                update = message_delta_decoder.decode(data)
                self.finish = finish_reason(update.delta.stop_reason)
                self.counter.add(update.usage)
                self.meter.report(self.usage)
            case "message_stop":
                self.done = True
                chunks = [self._chunk(Delta(), self.finish)]
                if self.include_usage:
                    chunks.append(_encode(ChatCompletionChunk(self.id, self.created, self.slug, [],
                                                              usage=self.usage)))
                return chunks
            case "error":
                raise event_failure(self.provider, data, self.secret)
            case _:
                pass  # ping, content_block_stop, and event types Anthropic adds later
        return []

    def _chunk(self, delta: Delta, finish: str | None = None) -> bytes:
        if not self._started:
            delta.role, self._started = "assistant", True
        choice = ChunkChoice(0, delta, finish)
        return _encode(ChatCompletionChunk(self.id, self.created, self.slug, [choice]))
