"""The Responses API's typed stream events, built from the chat chunks of model calls.

`EventWriter` numbers every event (`sequence_number`) and names its SSE event after its
`type`. Nothing is emitted before the first upstream output (`begin`), so a route that
fails before it can still be retried or failed over invisibly (invariant 2).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

from schemas.responses import FunctionCallItem, OutputItem, OutputMessage, OutputText, Response
from workers.providers._base import Emit

_encode = msgspec.json.Encoder().encode


class ToolDelta(msgspec.Struct):
    index: int = 0
    id: str | None = None
    function: dict[str, Any] | None = None


class ChunkDelta(msgspec.Struct):
    content: str | None = None
    tool_calls: list[ToolDelta] | None = None


class ChunkChoice(msgspec.Struct):
    delta: ChunkDelta = msgspec.field(default_factory=ChunkDelta)
    finish_reason: str | None = None


class ChunkUsage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class ChatChunk(msgspec.Struct):
    choices: list[ChunkChoice] | None = None
    usage: ChunkUsage | None = None


chunk_decoder = msgspec.json.Decoder(ChatChunk)


@dataclass
class EventWriter:
    """The events of one response, in order; `output` collects the finished items."""

    emit: Emit
    response: Response  # the in-progress response object (created / in_progress events)
    seq: int = 0
    began: bool = False
    output: list[OutputItem] = field(default_factory=list)
    _text: OutputMessage | None = None
    _text_index: int = 0
    _calls: dict[int, tuple[int, FunctionCallItem]] = field(default_factory=dict)

    def send(self, kind: str, **fields: Any) -> None:
        """One event: `type` and `sequence_number` first, as OpenAI writes them."""
        self.emit(_encode({"type": kind, "sequence_number": self.seq, **fields}), kind)
        self.seq += 1

    def begin(self) -> None:
        """`response.created` and `response.in_progress`, once, at the first output."""
        if not self.began:
            self.began = True
            self.send("response.created", response=self.response)
            self.send("response.in_progress", response=self.response)

    def _index(self) -> int:
        return len(self.output) + (self._text is not None) + len(self._calls)

    def text(self, stem: str, turn: int, delta: str) -> None:
        """A piece of the answer's text: opens the message item and its part first."""
        self.begin()
        if self._text is None:
            self._text_index = self._index()
            self._text = OutputMessage(id=f"msg_{stem}_{turn}", content=[], status="in_progress")
            self.send("response.output_item.added", output_index=self._text_index,
                      item=self._text)
            self.send("response.content_part.added", item_id=self._text.id,
                      output_index=self._text_index, content_index=0, part=OutputText(""))
            self._text.content.append(OutputText(""))
        self._text.content[0].text += delta
        self.send("response.output_text.delta", item_id=self._text.id,
                  output_index=self._text_index, content_index=0, delta=delta, logprobs=[])

    def call(self, stem: str, turn: int, delta: ToolDelta) -> None:
        """A piece of a function call: its name and id first, then its arguments."""
        self.begin()
        function = delta.function or {}
        if delta.index not in self._calls:
            self._close_text()
            index = self._index()
            item = FunctionCallItem(id=f"fc_{stem}_{turn}_{delta.index}",
                                    call_id=delta.id or f"call_{stem}_{turn}_{delta.index}",
                                    name=str(function.get("name") or ""), arguments="",
                                    status="in_progress")
            self._calls[delta.index] = (index, item)
            self.send("response.output_item.added", output_index=index, item=item)
        index, item = self._calls[delta.index]
        arguments = function.get("arguments")
        if arguments:
            item.arguments += str(arguments)
            self.send("response.function_call_arguments.delta", item_id=item.id,
                      output_index=index, delta=str(arguments))

    def _close_text(self) -> None:
        if self._text is None:
            return
        item, index, self._text = self._text, self._text_index, None
        text = item.content[0].text
        self.send("response.output_text.done", item_id=item.id, output_index=index,
                  content_index=0, text=text, logprobs=[])
        self.send("response.content_part.done", item_id=item.id, output_index=index,
                  content_index=0, part=item.content[0])
        item.status = "completed"
        self.send("response.output_item.done", output_index=index, item=item)
        self.output.append(item)

    def close_turn(self) -> list[FunctionCallItem]:
        """End one model call's items; returns its function calls, in order."""
        self._close_text()
        calls = []
        for index, item in sorted(self._calls.values(), key=lambda pair: pair[0]):
            if not item.arguments:
                item.arguments = "{}"
            self.send("response.function_call_arguments.done", item_id=item.id,
                      output_index=index, name=item.name, arguments=item.arguments)
            item.status = "completed"
            self.send("response.output_item.done", output_index=index, item=item)
            self.output.append(item)
            calls.append(item)
        self._calls = {}
        return calls

    def partial(self) -> list[OutputItem]:
        """Every item so far, the unfinished ones too (for `response.failed`)."""
        items = list(self.output)
        if self._text is not None:
            items.append(self._text)
        items.extend(item for _, item in sorted(self._calls.values(), key=lambda p: p[0]))
        return items

    def item(self, item: OutputItem) -> None:
        """A whole item at once (a built-in tool's result)."""
        index = len(self.output)
        self.send("response.output_item.added", output_index=index, item=item)
        self.send("response.output_item.done", output_index=index, item=item)
        self.output.append(item)
