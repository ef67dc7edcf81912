"""A fake Gemini API: `POST /v1beta/models/{model}:generateContent`,
`:streamGenerateContent?alt=sse`, `:countTokens` (tokens counted in words),
`:embedContent` and `:batchEmbedContents`, in Gemini's
real wire format (https://ai.google.dev/api/generate-content, https://ai.google.dev/api/embeddings).

Like the real service it wants the key in `x-goog-api-key` (403 PERMISSION_DENIED
without), refuses unknown request fields, empty contents, roles other than user/model
and empty parts with 400 INVALID_ARGUMENT, and answers errors as
`{"error": {"code", "message", "status", "details"?}}`. By default it echoes the last
user text (or the last function response) once per `candidateCount`, with usageMetadata
counted in words. Embeddings are deterministic per text (`embedding_of`), as long as
`outputDimensionality` asks (8 by default), and like the real API they carry no usage;
every entry of a batch must name the model of the URL. Tests queue `Behavior`s to script
errors, function calls, finish reasons, blocked prompts, delays and dropped or unfinished
streams. Every request is recorded (path, query, headers and JSON body), and so is the
body of every answer, byte for byte (`answers`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import trio

from tests.fakes.server import DropConnection, Received, ScriptedUpstream, send_json, start_sse

REQUEST_FIELDS = {"contents", "systemInstruction", "tools", "toolConfig", "generationConfig",
                  "safetySettings", "cachedContent"}
GENERATION_FIELDS = {"temperature", "topP", "topK", "maxOutputTokens", "stopSequences", "seed",
                     "presencePenalty", "frequencyPenalty", "candidateCount", "responseMimeType",
                     "responseSchema", "responseJsonSchema", "responseLogprobs", "logprobs",
                     "thinkingConfig", "responseModalities", "mediaResolution"}
EMBED_FIELDS = {"model", "content", "taskType", "title", "outputDimensionality"}
DEFAULT_DIMENSIONS = 8
PART_FIELDS = {"text", "inlineData", "fileData", "functionCall", "functionResponse", "thought",
               "thoughtSignature", "executableCode", "codeExecutionResult"}


@dataclass
class Behavior:
    """How to answer one request. Unset fields mean: answer normally."""

    status: int = 200
    error_status: str = "INTERNAL"  # Google's canonical status name for a non-200 status
    message: str = "upstream trouble"
    error_reason: str | None = None  # an ErrorInfo reason in `details`, e.g. API_KEY_INVALID
    delay_s: float = 0.0
    text: str | None = None  # the answer instead of the echo
    chunks: list[str] | None = None  # pieces of a streamed answer
    chunk_delay_s: float = 0.0
    function_calls: list[dict[str, Any]] | None = None  # functionCall parts ({name, args, ...})
    thought_signature: str | None = None  # put on the first functionCall part
    finish_reason: str = "STOP"
    block_reason: str | None = None  # the prompt is blocked: no candidates
    break_after: int | None = None  # drop the connection after this many events
    unfinished: bool = False  # end the stream cleanly without a finishReason


def error_body(code: int, status: str, message: str, reason: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if reason:
        error["details"] = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason,
                             "domain": "googleapis.com"}]
    return {"error": error}


class FakeGemini(ScriptedUpstream[Behavior]):
    """The ASGI app, served under `/v1beta`."""

    base_path = "/v1beta"

    def __init__(self) -> None:
        super().__init__(Behavior)

    async def answer(self, received: Received, receive: Any, send: Any) -> None:
        request, query, path = received.body, received.query, received.path
        resource, _, method = path.removeprefix("/v1beta/").rpartition(":")
        if not received.headers.get("x-goog-api-key"):
            await send_json(send, 403, error_body(403, "PERMISSION_DENIED",
                                                  "Method doesn't allow unregistered callers."))
            return
        if received.method != "POST" or not path.startswith("/v1beta/models/") or \
                method not in ("generateContent", "streamGenerateContent", "embedContent",
                               "batchEmbedContents", "countTokens"):
            await send_json(send, 404, error_body(404, "NOT_FOUND", "not found"))
            return
        if method in ("embedContent", "batchEmbedContents"):
            problem = _validate_embed(request, method, resource)
        elif method == "countTokens":
            problem = _validate_count(request, resource)
        else:
            problem = _validate(request)
        if method == "streamGenerateContent" and query.get("alt") != ["sse"]:
            problem = problem or "the fake only streams with alt=sse"
        if problem:
            await send_json(send, 400, error_body(400, "INVALID_ARGUMENT", problem))
            return
        behavior = self.next_behavior()
        await trio.sleep(behavior.delay_s)
        if behavior.status != 200:
            await send_json(send, behavior.status, error_body(
                behavior.status, behavior.error_status, behavior.message, behavior.error_reason))
        elif method == "streamGenerateContent":
            await self._stream(request, behavior, send)
        elif method == "countTokens":
            counted = request.get("generateContentRequest") or request
            total = _usage(counted, "")["promptTokenCount"]
            self.answers.append(await send_json(send, 200, {
                "totalTokens": total,
                "promptTokensDetails": [{"modality": "TEXT", "tokenCount": total}]}))
        elif method == "embedContent":
            self.answers.append(await send_json(send, 200, {"embedding": _embedding(request)}))
        elif method == "batchEmbedContents":
            embeddings = [_embedding(r) for r in request["requests"]]
            self.answers.append(await send_json(send, 200, {"embeddings": embeddings}))
        else:
            self.answers.append(await send_json(send, 200, self._answer(request, behavior)))

    def _answer(self, request: dict[str, Any], behavior: Behavior) -> dict[str, Any]:
        text = behavior.text if behavior.text is not None else _echo(request)
        if behavior.block_reason:
            return {"promptFeedback": {"blockReason": behavior.block_reason},
                    "usageMetadata": _usage(request, "")}
        count = (request.get("generationConfig") or {}).get("candidateCount", 1)
        candidates: list[dict[str, Any]] = []
        for i in range(count):
            candidate: dict[str, Any] = {"finishReason": behavior.finish_reason, "index": i}
            if behavior.finish_reason != "SAFETY":  # a blocked candidate comes without content
                candidate["content"] = {"parts": self._parts(text, behavior), "role": "model"}
            candidates.append(candidate)
        return {"candidates": candidates, "usageMetadata": _usage(request, text, count),
                "modelVersion": "fake-gemini", "responseId": "fake-response-1"}

    def _parts(self, text: str, behavior: Behavior) -> list[dict[str, Any]]:
        if behavior.function_calls is None:
            return [{"text": text}]
        parts: list[dict[str, Any]] = [{"functionCall": call} for call in behavior.function_calls]
        if behavior.thought_signature and parts:
            parts[0]["thoughtSignature"] = behavior.thought_signature
        return parts

    async def _stream(self, request: dict[str, Any], behavior: Behavior, send: Any) -> None:
        text = behavior.text if behavior.text is not None else _echo(request)
        await start_sse(send)
        events: list[dict[str, Any]] = []
        base = {"modelVersion": "fake-gemini", "responseId": "fake-stream-1"}
        if behavior.block_reason:
            events.append({"promptFeedback": {"blockReason": behavior.block_reason},
                           "usageMetadata": _usage(request, ""), **base})
        elif behavior.function_calls is not None:
            for part in self._parts(text, behavior):
                events.append({"candidates": [{"content": {"parts": [part], "role": "model"},
                                               "index": 0}], **base})
        else:
            pieces = behavior.chunks if behavior.chunks is not None else [
                w if i == 0 else " " + w for i, w in enumerate(text.split(" "))]
            if behavior.finish_reason == "SAFETY" and behavior.chunks is None:
                pieces = []
            for piece in pieces:
                events.append({"candidates": [{"content": {"parts": [{"text": piece}], "role": "model"},
                                               "index": 0}], **base})
        if not behavior.block_reason and not behavior.unfinished:
            if events:  # like Gemini: the last piece carries the finish reason
                events[-1]["candidates"][0]["finishReason"] = behavior.finish_reason
            else:
                events.append({"candidates": [{"finishReason": behavior.finish_reason, "index": 0}],
                               **base})
        if events and not behavior.block_reason:
            events[-1]["usageMetadata"] = _usage(request, text)
        sent = b""
        for i, payload in enumerate(events):
            if i:
                await trio.sleep(behavior.chunk_delay_s)
            if behavior.break_after is not None and i == behavior.break_after:
                raise DropConnection  # when the next event was due
            event = f"data: {json.dumps(payload)}\r\n\r\n".encode()
            sent += event
            await send({"type": "http.response.body", "more_body": True, "body": event})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        self.answers.append(sent)


def _validate(request: dict[str, Any]) -> str | None:
    """What real Gemini would refuse with 400 INVALID_ARGUMENT, or None."""
    for key in request.keys() - REQUEST_FIELDS:
        return f'Invalid JSON payload received. Unknown name "{key}": Cannot find field.'
    for key in (request.get("generationConfig") or {}).keys() - GENERATION_FIELDS:
        return f'Invalid JSON payload received. Unknown name "{key}" at \'generation_config\'.'
    contents = request.get("contents") or []
    if not contents:
        return "* GenerateContentRequest.contents: contents is not specified"
    system = request.get("systemInstruction")
    for content in [*contents, *([system] if system else [])]:
        if content is not system and content.get("role") not in ("user", "model"):
            return f"Please use a valid role: user, model. Got {content.get('role')!r}"
        if not content.get("parts"):
            return "* GenerateContentRequest.contents.parts: contents.parts must not be empty."
        for part in content["parts"]:
            if part.keys() - PART_FIELDS or not part.keys() & (PART_FIELDS - {"thoughtSignature"}):
                return f"Invalid part {sorted(part)}"
    return None


def _validate_count(request: dict[str, Any], resource: str) -> str | None:
    """What real Gemini would refuse in a countTokens body, or None: `contents` or a whole
    `generateContentRequest` naming the model of the URL."""
    for key in request.keys() - {"contents", "generateContentRequest"}:
        return f'Invalid JSON payload received. Unknown name "{key}": Cannot find field.'
    inner = request.get("generateContentRequest")
    if inner is None:
        return _validate({"contents": request.get("contents")})
    if inner.get("model") != resource:
        return f"generateContentRequest.model must be {resource!r}, got {inner.get('model')!r}"
    return _validate({k: v for k, v in inner.items() if k != "model"})


def _validate_embed(request: dict[str, Any], method: str, resource: str) -> str | None:
    """What real Gemini would refuse in an embedContent / batchEmbedContents body, or None."""
    if method == "batchEmbedContents":
        for key in request.keys() - {"requests"}:
            return f'Invalid JSON payload received. Unknown name "{key}": Cannot find field.'
        entries = request.get("requests") or []
        if not entries:
            return "* BatchEmbedContentsRequest.requests: requests is not specified"
        for entry in entries:
            if entry.get("model") != resource:
                return (f"Model names should match. Expected {resource!r}, got "
                        f"{entry.get('model')!r} in the batch request")
    else:
        entries = [request]
    for entry in entries:
        for key in entry.keys() - EMBED_FIELDS:
            return f'Invalid JSON payload received. Unknown name "{key}": Cannot find field.'
        parts = (entry.get("content") or {}).get("parts") or []
        if not parts or not all(isinstance(p.get("text"), str) for p in parts):
            return "* EmbedContentRequest.content: content must have text parts"
    return None


def embedding_of(text: str, size: int = DEFAULT_DIMENSIONS) -> list[float]:
    """The fake's vector for a text: SHA-256 bytes scaled to [-1, 1) in steps of 1/128,
    so every value is exact in float32 (base64 round trips compare equal)."""
    digest = hashlib.sha256(text.encode()).digest()
    return [(digest[i % len(digest)] - 128) / 128 for i in range(size)]


def _embedding(entry: dict[str, Any]) -> dict[str, list[float]]:
    text = "".join(part["text"] for part in entry["content"]["parts"])
    return {"values": embedding_of(text, entry.get("outputDimensionality", DEFAULT_DIMENSIONS))}


def _echo(request: dict[str, Any]) -> str:
    for content in reversed(request.get("contents", [])):
        if content.get("role") != "user":
            continue
        for part in reversed(content["parts"]):
            if "text" in part:
                return part["text"]
            if "functionResponse" in part:
                return "tool said " + json.dumps(part["functionResponse"]["response"], sort_keys=True)
    return "hello"


def _usage(request: dict[str, Any], answer: str, count: int = 1) -> dict[str, int]:
    prompt = sum(len(part.get("text", "").split()) for content in request.get("contents", [])
                 for part in content.get("parts", []))
    candidates = len(answer.split()) * count
    return {"promptTokenCount": prompt, "candidatesTokenCount": candidates,
            "totalTokenCount": prompt + candidates}
