"""The mock in Anthropic's Messages dialect (`POST /anthropic/v1/messages`).

The request is read into a `mock_reply.Prompt`, so the same rules pick text, JSON or a
tool call: `max_tokens` cuts (stop_reason `max_tokens`), `stop_sequences` (`stop_sequence`),
`tools` + `tool_choice` (a `tool_use` block), `output_config.format` (or the beta
`output_format`) json_schema. The answer is a Message {id, type, role, model, content,
stop_reason, stop_sequence, usage}, or its stream: message_start, content_block_start,
ping, content_block_delta..., content_block_stop, message_delta, message_stop, each SSE
event named as its data's `type`.
Reference: https://docs.anthropic.com/en/api/messages, .../messages-streaming.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import msgspec
from msgspec import Struct

from schemas.chat import Usage
from workers.providers.mock_reply import Prompt, Reply, ToolSpec, pieces, reply, slices

_encode = msgspec.json.Encoder().encode
Event = tuple[str, bytes, int]  # SSE event name, its data, characters of output in it


# ── the request, as far as the mock reads it ─────────────────────────────────────
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


# ── the answer ───────────────────────────────────────────────────────────────────
class TextBlock(Struct, tag="text", tag_field="type"):
    text: str


class ToolUseBlock(Struct, tag="tool_use", tag_field="type"):
    id: str
    name: str
    input: dict[str, Any]


Block = TextBlock | ToolUseBlock


class MessageUsage(Struct):
    input_tokens: int
    output_tokens: int


class Message(Struct, tag="message", tag_field="type"):
    id: str
    model: str
    content: list[Block]
    stop_reason: str | None
    stop_sequence: str | None
    usage: MessageUsage
    role: str = "assistant"


class MessageStart(Struct, tag="message_start", tag_field="type"):
    message: Message


class BlockStart(Struct, tag="content_block_start", tag_field="type"):
    index: int
    content_block: Block


class Ping(Struct, tag="ping", tag_field="type"):
    pass


class TextDelta(Struct, tag="text_delta", tag_field="type"):
    text: str


class JsonDelta(Struct, tag="input_json_delta", tag_field="type"):
    partial_json: str


class BlockDelta(Struct, tag="content_block_delta", tag_field="type"):
    index: int
    delta: TextDelta | JsonDelta


class BlockStop(Struct, tag="content_block_stop", tag_field="type"):
    index: int


class StopInfo(Struct):
    stop_reason: str
    stop_sequence: str | None


class OutputUsage(Struct):
    output_tokens: int


class MessageDelta(Struct, tag="message_delta", tag_field="type"):
    delta: StopInfo
    usage: OutputUsage


class MessageStop(Struct, tag="message_stop", tag_field="type"):
    pass


StreamEvent = MessageStart | BlockStart | Ping | BlockDelta | BlockStop | MessageDelta | MessageStop


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

    def _block(self, whole: bool) -> Block:
        if self.answer.tool:
            return ToolUseBlock("toolu_mock" + self.id[8:], self.answer.tool,
                                self.answer.args if whole else {})
        return TextBlock((self.answer.text or "") if whole else "")

    def _message(self, whole: bool) -> Message:
        if not whole:  # as message_start carries it: nothing generated yet
            return Message(self.id, self.model, [], None, None, MessageUsage(self.prompt.words, 0))
        return Message(self.id, self.model, [self._block(True)], self._stop_reason(),
                       self.answer.stop_sequence, MessageUsage(self.prompt.words, self.answer.words))

    def body(self) -> bytes:
        return _encode(self._message(True))

    def events(self, chunks: int) -> list[Event]:
        deltas: list[TextDelta | JsonDelta] = (
            [JsonDelta(part) for part in slices(self.answer.arguments, chunks)] if self.answer.tool
            else [TextDelta(part) for part in pieces(self.answer.text or "", chunks)])
        events: list[StreamEvent] = [
            MessageStart(self._message(False)), BlockStart(0, self._block(False)), Ping(),
            *(BlockDelta(0, delta) for delta in deltas), BlockStop(0),
            MessageDelta(StopInfo(self._stop_reason(), self.answer.stop_sequence),
                         OutputUsage(self.answer.words)),
            MessageStop(),
        ]
        return [(str(type(event).__struct_config__.tag), _encode(event),
                 len(event.delta.text) if isinstance(event, BlockDelta)
                 and isinstance(event.delta, TextDelta) else 0) for event in events]


_decoder = msgspec.json.Decoder(_MessagesRequest)


def anthropic_answer(body: bytes, model: str) -> AnthropicAnswer:
    """The mock's answer to a Messages request (raises msgspec errors for an unreadable one)."""
    prompt = anthropic_prompt(_decoder.decode(body))
    return AnthropicAnswer(prompt, reply(prompt), model)
