"""A fake Anthropic upstream: `POST /v1/messages`, plain and streamed, in Anthropic's wire format,
and `POST /v1/messages/count_tokens` (`{"input_tokens"}`, counted as a message's usage).

By default it answers with the text of the last user message, as a `Message` body or
as the event stream (message_start, ping, content_block_start/delta/stop,
message_delta, message_stop). Tests queue `Behavior`s to script errors (with
Anthropic's error body), tool_use answers, stop reasons, delays and broken streams.
Every request is recorded (path, headers, JSON body, raw bytes), and so is every body
answered (`answers`: the JSON bytes, or the whole SSE byte stream as sent).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import trio

from tests.fakes.server import DropConnection, Received, ScriptedUpstream, send_json, start_sse


@dataclass
class Behavior:
    """How to answer one request. Unset fields mean: answer normally."""

    status: int = 200
    error_type: str = "api_error"  # the `error.type` of a non-200 answer
    error_message: str = "Internal server error"
    delay_s: float = 0.0  # before the response starts
    text: str | None = None  # the answer text (default: the last user message's text)
    chunks: list[str] | None = None  # text pieces of a streamed answer
    chunk_delay_s: float = 0.0  # before each delta but the first (and a scripted failure)
    tool_uses: list[dict[str, Any]] = field(default_factory=list)  # {id, name, input}
    stop_reason: str | None = None  # default: end_turn, or tool_use when tool_uses are given
    stop_sequence: str | None = None
    stream_error_after: int | None = None  # send an `error` event after this many deltas
    stream_error_type: str = "overloaded_error"
    end_early_after: int | None = None  # end the body after this many deltas, no message_stop
    break_after: int | None = None  # drop the connection after this many deltas
    usage_extra: dict[str, int] = field(default_factory=dict)  # e.g. cache_read_input_tokens


class FakeAnthropic(ScriptedUpstream[Behavior]):
    """The ASGI app, served at the origin (the adapter appends `/v1/messages`)."""

    def __init__(self) -> None:
        super().__init__(Behavior)

    async def answer(self, received: Received, receive: Any, send: Any) -> None:
        request = received.body
        if received.method != "POST" or received.path not in ("/v1/messages",
                                                               "/v1/messages/count_tokens"):
            await _send_json(send, 404, _error("not_found_error", "Not found"))
            return
        behavior = self.next_behavior()
        if received.path.endswith("/count_tokens") and behavior.status == 200:
            if "max_tokens" in request or "stream" in request:  # not count_tokens fields
                await _send_json(send, 400, _error("invalid_request_error",
                                                   "max_tokens: Extra inputs are not permitted"))
                return
            answer = json.dumps({"input_tokens": self._usage(request, "")["input_tokens"]}).encode()
            self.answers.append(answer)
            await _send_json(send, 200, answer)
            return
        await trio.sleep(behavior.delay_s)
        if behavior.status != 200:
            await _send_json(send, behavior.status,
                             _error(behavior.error_type, behavior.error_message))
        elif request.get("stream"):
            await self._stream(request, behavior, send)
        else:
            answer = json.dumps(self._message(request, behavior)).encode()
            self.answers.append(answer)
            await _send_json(send, 200, answer)

    def _text(self, request: dict[str, Any], behavior: Behavior) -> str:
        if behavior.text is not None:
            return behavior.text
        for message in reversed(request.get("messages", [])):
            if message.get("role") != "user":
                continue
            content = message.get("content")
            if isinstance(content, str):
                return content
            texts = [b["text"] for b in content if b.get("type") == "text"]
            if texts:
                return texts[-1]
        return "hello"

    def _usage(self, request: dict[str, Any], answer: str) -> dict[str, int]:
        words = len(json.dumps(request.get("messages", [])).split())
        return {"input_tokens": words + len(json.dumps(request.get("system", "")).split()),
                "output_tokens": max(len(answer.split()), 1)}

    def _counts(self, request: dict[str, Any], behavior: Behavior, answer: str) -> dict[str, int]:
        return {**self._usage(request, answer), **behavior.usage_extra}

    def _stop_reason(self, behavior: Behavior) -> str:
        return behavior.stop_reason or ("tool_use" if behavior.tool_uses else "end_turn")

    def _message(self, request: dict[str, Any], behavior: Behavior) -> dict[str, Any]:
        answer = self._text(request, behavior)
        content: list[dict[str, Any]] = [{"type": "text", "text": answer}] if answer else []
        content += [{"type": "tool_use", **tool} for tool in behavior.tool_uses]
        return {"id": "msg_fake01", "type": "message", "role": "assistant",
                "model": request.get("model"), "content": content,
                "stop_reason": self._stop_reason(behavior), "stop_sequence": behavior.stop_sequence,
                "usage": self._counts(request, behavior, answer)}

    def _events(self, request: dict[str, Any], behavior: Behavior) -> list[tuple[str, dict[str, Any]]]:
        """The whole event stream, in order; each delta is counted for scripted failures."""
        answer = self._text(request, behavior)
        usage = self._usage(request, answer)
        start = {**self._message(request, behavior), "content": [], "stop_reason": None,
                 "stop_sequence": None, "usage": {**self._counts(request, behavior, answer),
                                                  "output_tokens": 1}}
        events: list[tuple[str, dict[str, Any]]] = [("message_start", {"message": start}),
                                                     ("ping", {})]
        index = 0
        pieces = behavior.chunks if behavior.chunks is not None else [
            w if i == 0 else " " + w for i, w in enumerate(answer.split(" "))] if answer else []
        if pieces:
            events.append(("content_block_start", {"index": 0,
                                                   "content_block": {"type": "text", "text": ""}}))
            for piece in pieces:
                events.append(("content_block_delta", {"index": 0, "delta": {"type": "text_delta",
                                                                             "text": piece}}))
            events.append(("content_block_stop", {"index": 0}))
            index = 1
        for tool in behavior.tool_uses:
            block = {"type": "tool_use", "id": tool["id"], "name": tool["name"], "input": {}}
            events.append(("content_block_start", {"index": index, "content_block": block}))
            arguments = json.dumps(tool["input"])
            middle = len(arguments) // 2
            for partial in ("", arguments[:middle], arguments[middle:]):
                events.append(("content_block_delta", {"index": index, "delta": {
                    "type": "input_json_delta", "partial_json": partial}}))
            events.append(("content_block_stop", {"index": index}))
            index += 1
        events.append(("ping", {}))
        events.append(("message_delta", {"delta": {"stop_reason": self._stop_reason(behavior),
                                                   "stop_sequence": behavior.stop_sequence},
                                         "usage": {"output_tokens": usage["output_tokens"]}}))
        events.append(("message_stop", {}))
        return events

    async def _stream(self, request: dict[str, Any], behavior: Behavior, send: Any) -> None:
        await start_sse(send, b"text/event-stream; charset=utf-8")
        sent = bytearray()
        self.answers.append(b"")
        deltas = 0
        for name, payload in self._events(request, behavior):
            if name == "content_block_delta":
                if deltas:
                    await trio.sleep(behavior.chunk_delay_s)
                if deltas == behavior.stream_error_after:
                    sent += await _event(send, "error", _error(behavior.stream_error_type, "Overloaded"))
                    break
                if deltas == behavior.end_early_after:
                    break
                if deltas == behavior.break_after:
                    raise DropConnection
                deltas += 1
            sent += await _event(send, name, {"type": name, **payload})
            self.answers[-1] = bytes(sent)
        self.answers[-1] = bytes(sent)
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _error(error_type: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type, "message": message},
            "request_id": "req_fake01"}


async def _event(send: Any, name: str, payload: dict[str, Any]) -> bytes:
    data = f"event: {name}\ndata: {json.dumps(payload)}\n\n".encode()
    await send({"type": "http.response.body", "body": data, "more_body": True})
    return data



async def _send_json(send: Any, status: int, payload: Any) -> None:
    await send_json(send, status, payload, [(b"request-id", b"req_fake01")])
