"""Provider kind `mock`: deterministic answers with no network.

It echoes the last user message, split into `chunks` pieces, after `latency_ms`, with
`chunk_delay_ms` between chunks, and reports usage counted in whitespace-separated
words. `make run` serves it and the benchmarks measure the gateway against it.

It honours what shapes an answer (`n`, `stop`, `max_tokens`, tools, structured output:
the rules are in `mock_reply`), in OpenAI chat completions and in the native Anthropic
Messages and Gemini generateContent APIs (`mock_anthropic`, `mock_gemini`), streamed and
not, and Gemini's embedContent / batchEmbedContents.
"""

from __future__ import annotations

import base64
import hashlib
import math
import struct
import time
import uuid

import httpx2
import msgspec
import trio
from msgspec import UNSET

from schemas.chat import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    Choice,
    ChunkChoice,
    Delta,
    Embedding,
    EmbeddingList,
    EmbeddingUsage,
    FunctionCall,
    ToolCall,
    Usage,
    embedding_decoder,
    raw_object_decoder,
)
from schemas.errors import GatewayError
from schemas.gemini import (
    BatchEmbedContentsRequest,
    BatchEmbedContentsResponse,
    ContentEmbedding,
    EmbedContentRequest,
    EmbedContentResponse,
)
from schemas.providers import MockProvider
from workers.providers._base import AdapterBase, Answer, Call, Emit
from workers.providers.mock_anthropic import AnthropicAnswer, anthropic_answer
from workers.providers.mock_gemini import GeminiAnswer, gemini_answer
from workers.providers.mock_media import MockMedia
from workers.providers.mock_reply import Prompt, Reply, chat_prompt, pieces, reply, slices

_encode = msgspec.json.Encoder().encode
_embed_decoder = msgspec.json.Decoder(EmbedContentRequest)
_batch_decoder = msgspec.json.Decoder(BatchEmbedContentsRequest)


def _usage(prompt: Prompt, answer: Reply) -> Usage:
    completion = answer.words * prompt.n
    return Usage(prompt.words, completion, prompt.words + completion)


def _message(answer: Reply) -> AssistantMessage:
    if not answer.tool:
        return AssistantMessage(answer.text)
    call = ToolCall("call_" + uuid.uuid4().hex[:24], FunctionCall(answer.tool, answer.arguments))
    return AssistantMessage(None, tool_calls=[call])


def native_answer(endpoint: str, body: bytes, model: str) -> AnthropicAnswer | GeminiAnswer | None:
    """The mock's answer to a native request (None: an endpoint the mock does not speak)."""
    try:
        match endpoint:
            case "anthropic_messages":
                return anthropic_answer(body, model)
            case "gemini_generate":
                return gemini_answer(body, model)
            case _:
                return None
    except (msgspec.DecodeError, msgspec.ValidationError, IndexError) as exc:
        raise GatewayError(400, "invalid_request", f"the mock cannot read this request: {exc}") from None


def _chars(delta: Delta) -> int:
    """Output characters in a delta: text, or a tool call's argument slice."""
    if delta.tool_calls is UNSET:
        return len(delta.content or "")
    return sum(len(c["function"].get("arguments", "")) for c in delta.tool_calls)


_pieces = pieces  # the name tests/test_units.py imports


class MockAdapter(MockMedia, AdapterBase):  # images and audio: mock_media.py
    """Answers locally; the route's upstream model is ignored."""

    kind = "mock"

    def __init__(self, name: str, config: MockProvider, http: httpx2.AsyncClient) -> None:
        self.name = name
        self.config = config

    async def complete(self, call: Call) -> Answer:
        """The whole answer after `latency_ms`: `n` equal choices."""
        prompt = chat_prompt(call.job.body)
        answer = reply(prompt)
        await trio.sleep(self.config.latency_ms / 1000)
        usage = _usage(prompt, answer)
        message = _message(answer)
        body = ChatCompletion(
            id="chatcmpl-" + uuid.uuid4().hex, created=int(time.time()), model=call.job.model,
            choices=[Choice(i, message, answer.finish) for i in range(prompt.n)], usage=usage,
        )
        return Answer(_encode(body), usage)

    async def stream(self, call: Call, emit: Emit) -> Usage:
        """Each choice in `chunks` pieces, then its finish chunk (and usage if asked)."""
        prompt = chat_prompt(call.job.body)
        answer = reply(prompt)
        usage = _usage(prompt, answer)
        chunk_id, created = "chatcmpl-" + uuid.uuid4().hex, int(time.time())

        def chunk(index: int, delta: Delta, finish: str | None = None) -> bytes:
            choice = ChunkChoice(index, delta, finish)
            return _encode(ChatCompletionChunk(chunk_id, created, call.job.model, [choice]))

        call.meter.report(Usage(prompt.words, 0, prompt.words))
        await trio.sleep(self.config.latency_ms / 1000)
        for index in range(prompt.n):
            for i, delta in enumerate(self._deltas(answer)):
                if i or index:
                    await trio.sleep(self.config.chunk_delay_ms / 1000)
                call.meter.add_text(_chars(delta))
                emit(chunk(index, delta))
            emit(chunk(index, Delta(), answer.finish))
        if call.job.include_usage:
            emit(_encode(ChatCompletionChunk(chunk_id, created, call.job.model, [], usage=usage)))
        return usage

    def _deltas(self, answer: Reply) -> list[Delta]:
        """One choice's deltas: the text in pieces, or a tool call's arguments in slices."""
        if not answer.tool:
            return [Delta(role="assistant", content=piece) if i == 0 else Delta(content=piece)
                    for i, piece in enumerate(pieces(answer.text or "", self.config.chunks))]
        head = {"index": 0, "id": "call_" + uuid.uuid4().hex[:24], "type": "function",
                "function": {"name": answer.tool, "arguments": ""}}
        return [Delta(role="assistant", content=None, tool_calls=[head]),
                *(Delta(tool_calls=[{"index": 0, "function": {"arguments": part}}])
                  for part in slices(answer.arguments, self.config.chunks))]

    async def native(self, call: Call) -> Answer:
        """An Anthropic Message, a Gemini GenerateContentResponse or Gemini embeddings,
        after `latency_ms`."""
        if call.job.endpoint == "gemini_embed":
            await trio.sleep(self.config.latency_ms / 1000)
            return _gemini_embeddings(call.job.body)
        native = native_answer(call.job.endpoint, call.job.body, call.job.model)
        if native is None:
            raise self._unsupported(f"the native endpoint {call.job.endpoint!r}")
        await trio.sleep(self.config.latency_ms / 1000)
        return Answer(native.body(), native.usage)

    async def native_stream(self, call: Call, emit: Emit) -> Usage:
        """The same answer as the dialect's own stream: Anthropic's named SSE events, or
        Gemini's `alt=sse` chunks, each text in `chunks` pieces."""
        native = native_answer(call.job.endpoint, call.job.body, call.job.model)
        if native is None:
            raise self._unsupported(f"the native endpoint {call.job.endpoint!r}")
        call.meter.report(Usage(native.usage.prompt_tokens, 0, native.usage.prompt_tokens))
        await trio.sleep(self.config.latency_ms / 1000)
        for i, (event, data, chars) in enumerate(native.events(self.config.chunks)):
            if i and event in ("content_block_delta", ""):
                await trio.sleep(self.config.chunk_delay_ms / 1000)
            call.meter.add_text(chars)
            emit(data, event)
        return native.usage

    async def embed(self, call: Call) -> Answer:
        """A deterministic unit vector per input (SHA-256 seeded), `dimensions` long (default 8)."""
        request = embedding_decoder.decode(call.job.body)
        raw = request.input
        # One string, one pre-tokenized input (a list of ints), or a list of either.
        inputs: list[object] = [raw] if isinstance(raw, str) or (raw and isinstance(raw[0], int)) \
            else list(raw)
        size = request.dimensions or 8
        data, tokens = [], 0
        for index, item in enumerate(inputs):
            text = item if isinstance(item, str) else " ".join(map(str, item))  # type: ignore[call-overload]
            tokens += max(len(text.split()), 1)
            vector = _vector(text, size)
            if request.encoding_format == "base64":
                data.append(Embedding(index, base64.b64encode(struct.pack(f"<{size}f", *vector)).decode()))
            else:
                data.append(Embedding(index, vector))
        await trio.sleep(self.config.latency_ms / 1000)
        body = EmbeddingList(data, call.job.model, EmbeddingUsage(tokens, tokens))
        return Answer(_encode(body), Usage(tokens, 0, tokens))


def _gemini_embeddings(body: bytes) -> Answer:
    """embedContent's answer, or batchEmbedContents' when the body holds `requests` (as the
    Gemini relay tells them apart): the same vectors as OpenAI embeddings, 8 long unless
    `outputDimensionality` says otherwise."""
    try:
        batch = _batch_decoder.decode(body) if "requests" in raw_object_decoder.decode(body) \
            else None
        requests = batch.requests if batch else [_embed_decoder.decode(body)]
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise GatewayError(400, "invalid_request", f"the mock cannot read this request: {exc}") from None
    out, tokens = [], 0
    for request in requests:
        text = " ".join(part.text or "" for part in request.content.parts)
        tokens += max(len(text.split()), 1)
        size = min(max(request.output_dimensionality or 8, 1), 8192)
        out.append(ContentEmbedding(_vector(text, size)))
    answer = BatchEmbedContentsResponse(out) if batch else EmbedContentResponse(out[0])
    return Answer(_encode(answer), Usage(tokens, 0, tokens))


def _vector(text: str, size: int) -> list[float]:
    seed = hashlib.sha256(text.encode()).digest()
    raw = [(seed[i % 32] - 127.5) / 127.5 + i * 1e-3 for i in range(size)]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [x / norm for x in raw]
