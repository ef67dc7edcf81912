"""A fake Azure OpenAI resource: `POST /openai/deployments/{deployment}/chat/completions`
and `.../embeddings`, plain and streamed, in Azure's real wire format (the REST reference
and inference spec 2024-10-21, and the content-filtering guide:
https://learn.microsoft.com/azure/ai-services/openai/reference,
https://learn.microsoft.com/azure/ai-services/openai/concepts/content-filter).

Like the service it answers `{"error": {"code", "message"}}` with 404 "Resource not
found" for another path or a missing `api-version`, 401 without the `api-key` header (or
with another key than `api_key`, when set), 400 "API version not supported" for a version
it does not know, 404 DeploymentNotFound for a deployment outside `deployments` (when set)
and 400 when `stream_options` comes without `stream`. It reports the deployed model's name
(`MODEL`), never the deployment's. Answers carry `prompt_filter_results` and per-choice
`content_filter_results`; a stream opens with the prompt's annotations (empty `choices`),
carries `content_filter_results` on its chunks, honours `stream_options.include_usage`
(`usage: null` on every chunk, then a usage chunk) and ends with `data: [DONE]`. With
`async_filter` it streams as the Asynchronous Filter does (annotation events without
`delta`, the cut of a `filtered` completion among them). By default it echoes the last
user message (the first piece carries the role, as FakeOpenAI does) with usage counted in
words; embeddings are `[0.5] * dimensions` (4 by default), as floats or base64 float32.

Tests queue `Behavior`s to script errors (`content_filter_error()` is the 400 of a refused
prompt), delays, tool calls, filtered completions and dropped streams. Every request is
recorded (path, query, headers, JSON body), and so is every answer (`answers`: a plain
body, or each event's data of a stream, byte for byte).
"""

from __future__ import annotations

import base64
import json
import struct
import time
from dataclasses import dataclass
from typing import Any

import trio

from tests.fakes.openai_upstream import Behavior as OpenAIBehavior
from tests.fakes.server import DropConnection, Received, ScriptedUpstream, send_json, start_sse

API_VERSIONS = frozenset({"2024-02-01", "2024-06-01", "2024-10-21", "2024-12-01-preview",
                          "2025-01-01-preview"})
MODEL = "gpt-4o-2024-08-06"  # what Azure reports as `model`: the deployed model's name
OPERATIONS = ("chat/completions", "embeddings")
SAFE = {category: {"filtered": False, "severity": "safe"}
        for category in ("hate", "self_harm", "sexual", "violence")}
PROMPT_SAFE = {**SAFE, "jailbreak": {"filtered": False, "detected": False}}
NOT_FOUND = {"error": {"code": "404", "message": "Resource not found"}}
ACCESS_DENIED = {"error": {"code": "401", "message": (
    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide "
    "a valid key for an active subscription and use a correct regional API endpoint for your "
    "resource.")}}
BAD_VERSION = {"error": {"code": "BadRequest", "message": "API version not supported"}}
NO_DEPLOYMENT = {"error": {"code": "DeploymentNotFound", "message": (
    "The API deployment for this resource does not exist. If you created the deployment "
    "within the last 5 minutes, please wait a moment and try again.")}}


@dataclass
class Behavior(OpenAIBehavior):
    """FakeOpenAI's behaviours, and Azure's content filters."""

    filtered: str | None = None  # the output filter cuts the completion for this category
    async_filter: bool = False  # stream as the Asynchronous Filter does


def error_body(code: str, message: str) -> dict[str, Any]:
    """Azure's own error shape (the inference spec's errorResponse)."""
    return {"error": {"code": code, "message": message}}


def content_filter_error(*categories: str) -> dict[str, Any]:
    """The 400 body of a prompt the content filter refused (the content-filtering guide)."""
    results = {**SAFE, **{c: {"filtered": True, "severity": "high"} for c in categories}}
    return {"error": {
        "message": "The response was filtered due to the prompt triggering Azure OpenAI's content "
                   "management policy. Please modify your prompt and retry. To learn more about "
                   "our content filtering policies please read our documentation: "
                   "https://go.microsoft.com/fwlink/?linkid=2198766",
        "type": None, "param": "prompt", "code": "content_filter", "status": 400,
        "innererror": {"code": "ResponsibleAIPolicyViolation", "content_filter_result": results}}}


def deployment_of(request: Received) -> str:
    """The deployment a request named: /openai/deployments/{deployment}/{operation}."""
    return request.path.removeprefix("/openai/deployments/").partition("/")[0]


# Scripts for the conformance suite (tests/kinds.py).
def server_error(message: str) -> Behavior:
    return Behavior(status=500, error=error_body("InternalServerError", message))


def client_error(message: str) -> Behavior:
    """A 400 the model answers (Azure relays OpenAI's error shape for those)."""
    return Behavior(status=400, error={"error": {
        "message": message, "type": "invalid_request_error", "param": "messages",
        "code": "context_length_exceeded"}})


def rate_limited(seconds: int = 1) -> Behavior:
    return Behavior(status=429, error=error_body("429", (
        "Requests to the ChatCompletions_Create Operation under Azure OpenAI API version "
        f"2024-10-21 have exceeded token rate limit of your current OpenAI S0 pricing tier. "
        f"Please retry after {seconds} second.")))


def cut_stream(pieces: list[str], after: int, delay_s: float = 0.05) -> Behavior:
    return Behavior(chunks=pieces, break_after=after, chunk_delay_s=delay_s)


def tool_call(name: str, args: dict[str, Any]) -> Behavior:
    return Behavior(tool_calls=[{"id": "call_azure", "type": "function",
                                 "function": {"name": name, "arguments": json.dumps(args)}}])


class FakeAzure(ScriptedUpstream[Behavior]):
    """The ASGI app: the resource's origin is its `base_url`."""

    base_path = ""

    def __init__(self) -> None:
        super().__init__(Behavior)
        self.api_key: str | None = None  # the only key accepted (None: any non-empty key)
        self.deployments: set[str] | None = None  # the deployments that exist (None: any)

    async def answer(self, received: Received, receive: Any, send: Any) -> None:
        rejection = self._reject(received)
        if rejection is not None:
            status, body = rejection
            await send_json(send, status, body)
            return
        request, behavior = received.body, self.next_behavior()
        await trio.sleep(behavior.delay_s)
        if behavior.status != 200:
            await send_json(send, behavior.status, behavior.error or server_error("trouble").error)
        elif received.path.endswith("/embeddings"):
            self.answers.append(await send_json(send, 200, _embeddings(request)))
        elif request.get("stream"):
            await self._stream(request, behavior, receive, send)
        else:
            self.answers.append(await send_json(send, 200, _completion(request, behavior)))

    def _reject(self, received: Received) -> tuple[int, dict[str, Any]] | None:
        """Azure's answer to a request it refuses before any model sees it, if any."""
        deployment = deployment_of(received)
        operation = received.path.removeprefix(f"/openai/deployments/{deployment}/")
        versions = received.query.get("api-version", [])
        if received.method != "POST" or not deployment or operation not in OPERATIONS or not versions:
            return 404, NOT_FOUND
        key = received.headers.get("api-key")
        if not key or (self.api_key is not None and key != self.api_key):
            return 401, ACCESS_DENIED
        if versions[-1] not in API_VERSIONS:
            return 400, BAD_VERSION
        if self.deployments is not None and deployment not in self.deployments:
            return 404, NO_DEPLOYMENT
        body = received.body
        if "stream_options" in body and not body.get("stream"):
            return 400, {"error": {"message": "The 'stream_options' parameter is only allowed when "
                                              "'stream' is enabled.", "type": "invalid_request_error",
                                   "param": "stream_options", "code": None}}
        return None

    async def _stream(self, request: dict[str, Any], behavior: Behavior, receive: Any,
                      send: Any) -> None:
        answer = _echo(request)
        pieces = behavior.chunks if behavior.chunks is not None else [
            w if i == 0 else " " + w for i, w in enumerate(answer.split(" "))]
        include_usage = (request.get("stream_options") or {}).get("include_usage", False)
        base: dict[str, Any] = {"id": "chatcmpl-AzFake", "object": "chat.completion.chunk",
                                "created": int(time.time()), "model": MODEL,
                                "system_fingerprint": "fp_azure"}
        if include_usage:
            base["usage"] = None
        annotation = {"id": "", "object": "", "created": 0, "model": "", **_usage_null(include_usage)}

        async def event(payload: dict[str, Any] | str) -> None:
            data = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
            self.answers.append(data)
            await send({"type": "http.response.body", "body": b"data: " + data + b"\n\n",
                        "more_body": True})

        def choice(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            made: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            if not behavior.async_filter:  # the default filter annotates every chunk it vetted
                made["content_filter_results"] = SAFE if delta.get("content") else {}
            return made

        await start_sse(send)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch_disconnect, receive, nursery.cancel_scope)
            # Older versions and the Asynchronous Filter's samples name it prompt_annotations.
            prompt = "prompt_annotations" if behavior.async_filter else "prompt_filter_results"
            await event({**annotation, "choices": [],
                         prompt: [{"prompt_index": 0, "content_filter_results": PROMPT_SAFE}]})
            for i, delta in enumerate(_deltas(pieces, behavior)):
                if i:
                    await trio.sleep(behavior.chunk_delay_s)
                if behavior.break_after is not None and i == behavior.break_after:
                    raise DropConnection  # when the next chunk was due
                await event({**base, "choices": [choice(delta)]})
                if behavior.async_filter and i == 0:
                    await event({**annotation, "choices": [_annotation(None)]})
            if behavior.filtered and behavior.async_filter:
                await event({**annotation, "choices": [_annotation("content_filter", behavior.filtered)]})
            elif behavior.filtered:
                finished = choice({}, "content_filter")
                finished["content_filter_results"] = _filtered(behavior.filtered)
                await event({**base, "choices": [finished]})
            else:
                finish = "tool_calls" if behavior.tool_calls else "stop"
                await event({**base, "choices": [choice({}, finish)]})
                if behavior.async_filter:
                    await event({**annotation, "choices": [_annotation(None)]})
            if include_usage:
                await event({**base, "choices": [], "usage": _usage(request, "".join(pieces))})
            await event("[DONE]")
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            nursery.cancel_scope.cancel()


def _usage_null(include_usage: bool) -> dict[str, Any]:
    return {"usage": None} if include_usage else {}


def _annotation(finish: str | None, category: str | None = None) -> dict[str, Any]:
    """A choice of the Asynchronous Filter's annotation event: no delta, offsets instead."""
    return {"index": 0, "finish_reason": finish,
            "content_filter_results": _filtered(category) if category else SAFE,
            "content_filter_offsets": {"check_offset": 44, "start_offset": 44, "end_offset": 198}}


def _filtered(category: str) -> dict[str, Any]:
    return {**SAFE, category: {"filtered": True, "severity": "high"}}


def _deltas(pieces: list[str], behavior: Behavior) -> list[dict[str, Any]]:
    if not behavior.tool_calls:
        return [({"role": "assistant", "content": p} if i == 0 else {"content": p})
                for i, p in enumerate(pieces)]
    deltas: list[dict[str, Any]] = []
    for i, call in enumerate(behavior.tool_calls):
        deltas.append({"role": "assistant", "content": None, "tool_calls": [
            {"index": i, "id": call["id"], "type": "function",
             "function": {"name": call["function"]["name"], "arguments": ""}}]})
        deltas.append({"tool_calls": [{"index": i, "function": {
            "arguments": call["function"]["arguments"]}}]})
    return deltas


def _echo(request: dict[str, Any]) -> str:
    for message in reversed(request.get("messages", [])):
        if message.get("role") == "user" and isinstance(message.get("content"), str):
            return str(message["content"])
    return "hello"


def _usage(request: dict[str, Any], answer: str) -> dict[str, int]:
    prompt = sum(len(str(m.get("content", "")).split()) for m in request.get("messages", []))
    completion = len(answer.split())
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _completion(request: dict[str, Any], behavior: Behavior) -> dict[str, Any]:
    answer = _echo(request)
    message: dict[str, Any] = {"role": "assistant", "content": answer, "refusal": None}
    finish, results = "stop", SAFE
    if behavior.tool_calls:
        message = {"role": "assistant", "content": None, "refusal": None,
                   "tool_calls": behavior.tool_calls}
        finish, results = "tool_calls", {}
    elif behavior.filtered:
        message = {"role": "assistant", "content": None, "refusal": None}
        finish, results = "content_filter", _filtered(behavior.filtered)
    return {"id": "chatcmpl-AzFake", "object": "chat.completion", "created": int(time.time()),
            "model": MODEL, "system_fingerprint": "fp_azure",
            "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": PROMPT_SAFE}],
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish,
                         "content_filter_results": results}],
            "usage": _usage(request, answer)}


def _embeddings(request: dict[str, Any]) -> dict[str, Any]:
    inputs = request["input"] if isinstance(request["input"], list) else [request["input"]]
    vector = [0.5] * request.get("dimensions", 4)
    encoded: Any = vector
    if request.get("encoding_format") == "base64":
        encoded = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    data = [{"object": "embedding", "index": i, "embedding": encoded} for i, _ in enumerate(inputs)]
    tokens = 3 * len(inputs)
    return {"object": "list", "data": data, "model": "text-embedding-3-small",
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


async def _watch_disconnect(receive: Any, scope: trio.CancelScope) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            scope.cancel()
            return
