"""A fake OpenAI-compatible upstream: `POST .../chat/completions`, plain and streamed.

By default it echoes the last user message like OpenAI would answer, with usage, and
honours `stream_options.include_usage`. Tests queue `Behavior`s to script failures,
delays and tool calls (`then`, in arrival order; `when`, for the requests with a given last
user message, whatever order they arrive in; `slow`, for every request not scripted).
Every request is recorded (path, headers, JSON body), and so is every client disconnect.
"""

from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import trio

from tests.fakes.openai_responses import answer_responses
from tests.fakes.server import DropConnection, Received, ScriptedUpstream, send_json, start_sse


@dataclass
class Behavior:
    """How to answer one request. Unset fields mean: answer normally."""

    status: int = 200
    error: dict[str, Any] | None = None  # the error body for a non-200 status
    delay_s: float = 0.0  # before the response starts
    chunks: list[str] | None = None  # content pieces of a streamed answer
    chunk_delay_s: float = 0.0  # before each chunk but the first (and the drop)
    break_after: int | None = None  # drop the connection after this many chunks
    tool_calls: list[dict[str, Any]] | None = None
    extra_chunk_fields: dict[str, Any] = field(default_factory=dict)


class FakeOpenAI(ScriptedUpstream[Behavior]):
    """The ASGI app, served under `/v1`."""

    base_path = "/v1"

    def __init__(self) -> None:
        super().__init__(Behavior)
        self.disconnects: list[float] = []
        self.scripted: dict[str, deque[Behavior]] = {}
        self.default_delay_s = 0.0

    def when(self, content: str, *behaviors: Behavior) -> FakeOpenAI:
        """Answer the next requests whose last user message is `content` this way."""
        self.scripted.setdefault(content, deque()).extend(behaviors)
        return self

    def slow(self, delay_s: float) -> FakeOpenAI:
        """Answer every request that nothing scripted after `delay_s`."""
        self.default_delay_s = delay_s
        return self

    async def answer(self, received: Received, receive: Any, send: Any) -> None:
        request = received.body
        scripted = self.scripted.get(self._answer(request))
        behavior = scripted.popleft() if scripted else self.next_behavior()
        if behavior == Behavior() and self.default_delay_s:
            behavior = Behavior(delay_s=self.default_delay_s)
        if behavior.delay_s:  # a client that leaves meanwhile is recorded in `disconnects`
            left = len(self.disconnects)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_disconnect, receive, nursery.cancel_scope)
                await trio.sleep(behavior.delay_s)
                nursery.cancel_scope.cancel()
            if len(self.disconnects) > left:
                return
        if behavior.status != 200:
            error = behavior.error or {"error": {"message": "upstream trouble", "type": "server_error",
                                                 "code": None, "param": None}}
            await send_json(send, behavior.status, error)
            return
        if received.path.endswith("/responses"):  # the Responses API (a native relay)
            await answer_responses(request, behavior, send)
        elif received.path.endswith("/embeddings"):
            await send_json(send, 200, self._embeddings(request))
        elif request.get("stream"):
            await self._stream(request, behavior, receive, send)
        else:
            await send_json(send, 200, self._completion(request, behavior))

    def _embeddings(self, request: dict[str, Any]) -> dict[str, Any]:
        inputs = request["input"] if isinstance(request["input"], list) else [request["input"]]
        size = request.get("dimensions") or 4  # null means the default, as upstream
        data = [{"object": "embedding", "index": i, "embedding": [0.5] * size}
                for i, _ in enumerate(inputs)]
        return {"object": "list", "data": data, "model": request["model"],
                "usage": {"prompt_tokens": 3 * len(inputs), "total_tokens": 3 * len(inputs)}}

    def _answer(self, request: dict[str, Any]) -> str:
        for message in reversed(request.get("messages", [])):
            if message.get("role") == "user" and isinstance(message.get("content"), str):
                return message["content"]
        return "hello"

    def _usage(self, request: dict[str, Any], answer: str) -> dict[str, int]:
        prompt = sum(len(str(m.get("content", "")).split()) for m in request.get("messages", []))
        completion = len(answer.split())
        return {"prompt_tokens": prompt, "completion_tokens": completion,
                "total_tokens": prompt + completion}

    def _completion(self, request: dict[str, Any], behavior: Behavior) -> dict[str, Any]:
        answer = self._answer(request)
        message: dict[str, Any] = {"role": "assistant", "content": answer, "refusal": None}
        finish = "stop"
        if behavior.tool_calls:
            message = {"role": "assistant", "content": None, "tool_calls": behavior.tool_calls}
            finish = "tool_calls"
        return {"id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
                "model": request.get("model"), "system_fingerprint": "fp_fake",
                "choices": [{"index": 0, "message": message, "logprobs": None,
                             "finish_reason": finish}],
                "usage": self._usage(request, answer)}

    async def _stream(self, request: dict[str, Any], behavior: Behavior, receive: Any,
                      send: Any) -> None:
        answer = self._answer(request)
        pieces = behavior.chunks if behavior.chunks is not None else [
            w if i == 0 else " " + w for i, w in enumerate(answer.split(" "))]
        include_usage = (request.get("stream_options") or {}).get("include_usage", False)
        await start_sse(send)
        base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk",
                "created": int(time.time()), "model": request.get("model"),
                "system_fingerprint": "fp_fake", **behavior.extra_chunk_fields}
        if include_usage:
            base["usage"] = None

        async def event(payload: dict[str, Any] | str) -> None:
            data = payload if isinstance(payload, str) else json.dumps(payload)
            await send({"type": "http.response.body", "body": f"data: {data}\n\n".encode(),
                        "more_body": True})

        deltas: list[dict[str, Any]] = []
        if behavior.tool_calls:
            for i, call in enumerate(behavior.tool_calls):
                deltas.append({"role": "assistant", "content": None, "tool_calls": [
                    {"index": i, "id": call["id"], "type": "function",
                     "function": {"name": call["function"]["name"], "arguments": ""}}]})
                deltas.append({"tool_calls": [{"index": i, "function": {
                    "arguments": call["function"]["arguments"]}}]})
        else:
            deltas = [({"role": "assistant", "content": p} if i == 0 else {"content": p})
                      for i, p in enumerate(pieces)]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_disconnect, receive, nursery.cancel_scope)
            for i, delta in enumerate(deltas):
                if i:
                    await trio.sleep(behavior.chunk_delay_s)
                if behavior.break_after is not None and i == behavior.break_after:
                    raise DropConnection  # when the next chunk was due
                await event({**base, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                                  "finish_reason": None}]})
            finish = "tool_calls" if behavior.tool_calls else "stop"
            await event({**base, "choices": [{"index": 0, "delta": {}, "logprobs": None,
                                              "finish_reason": finish}]})
            if include_usage:
                await event({**base, "choices": [], "usage": self._usage(request, answer)})
            await event("[DONE]")
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            nursery.cancel_scope.cancel()

    async def _watch_disconnect(self, receive: Any, scope: trio.CancelScope) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.disconnects.append(time.monotonic())
                scope.cancel()
                return

