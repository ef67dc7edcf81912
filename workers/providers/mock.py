"""Provider kind `mock`: deterministic answers with no network.

It echoes the last user message, split into `chunks` pieces, after `latency_ms`, with
`chunk_delay_ms` between chunks, and reports usage counted in whitespace-separated
words. `make run` serves it and the benchmarks measure the gateway against it.
"""

from __future__ import annotations

import base64
import hashlib
import math
import struct
import time
import uuid

import httpx
import msgspec
import trio

from schemas.chat import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatRequest,
    Choice,
    ChunkChoice,
    Delta,
    Embedding,
    EmbeddingList,
    EmbeddingUsage,
    Usage,
    embedding_decoder,
    request_decoder,
)
from schemas.providers import MockProvider
from workers.providers._base import AdapterBase, Answer, Call, Emit
from workers.providers.mock_media import MockMedia

_encode = msgspec.json.Encoder().encode


def _text_of(request: ChatRequest) -> tuple[str, int]:
    """The reply text (the last user message's text) and the prompt's word count."""
    prompt_words, reply = 0, ""
    for message in request.messages:
        text = message.content if isinstance(message.content, str) else ""
        prompt_words += len(text.split())
        if message.role == "user" and text:
            reply = text
    return reply or "Hello from the Switchboard mock provider.", max(prompt_words, 1)


def _pieces(text: str, count: int) -> list[str]:
    """`text` cut into at most `count` consecutive pieces that join back to it."""
    words = text.split(" ")
    count = max(1, min(count, len(words)))
    size, extra = divmod(len(words), count)
    out, start = [], 0
    for i in range(count):
        end = start + size + (1 if i < extra else 0)
        piece = " ".join(words[start:end])
        out.append(piece if i == 0 else " " + piece)
        start = end
    return out


class MockAdapter(MockMedia, AdapterBase):  # images and audio: mock_media.py
    """Answers locally; the route's upstream model is ignored."""

    kind = "mock"

    def __init__(self, name: str, config: MockProvider, http: httpx.AsyncClient) -> None:
        self.name = name
        self.config = config

    async def complete(self, call: Call) -> Answer:
        """The whole echo after `latency_ms`."""
        reply, prompt = _text_of(request_decoder.decode(call.job.body))
        await trio.sleep(self.config.latency_ms / 1000)
        usage = Usage(prompt, len(reply.split()), prompt + len(reply.split()))
        body = ChatCompletion(
            id="chatcmpl-" + uuid.uuid4().hex, created=int(time.time()), model=call.job.model,
            choices=[Choice(0, AssistantMessage(reply), "stop")], usage=usage,
        )
        return Answer(_encode(body), usage)

    async def stream(self, call: Call, emit: Emit) -> Usage:
        """The echo in `chunks` pieces, then a finish chunk (and usage if asked)."""
        reply, prompt = _text_of(request_decoder.decode(call.job.body))
        usage = Usage(prompt, len(reply.split()), prompt + len(reply.split()))
        chunk_id, created = "chatcmpl-" + uuid.uuid4().hex, int(time.time())

        def chunk(delta: Delta, finish: str | None = None) -> bytes:
            choice = ChunkChoice(0, delta, finish)
            return _encode(ChatCompletionChunk(chunk_id, created, call.job.model, [choice]))

        call.meter.report(Usage(prompt, 0, prompt))
        await trio.sleep(self.config.latency_ms / 1000)
        for i, piece in enumerate(_pieces(reply, self.config.chunks)):
            if i:
                await trio.sleep(self.config.chunk_delay_ms / 1000)
            call.meter.add_text(len(piece))
            emit(chunk(Delta(role="assistant", content=piece) if i == 0 else Delta(content=piece)))
        emit(chunk(Delta(), "stop"))
        if call.job.include_usage:
            emit(_encode(ChatCompletionChunk(chunk_id, created, call.job.model, [], usage=usage)))
        return usage

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


def _vector(text: str, size: int) -> list[float]:
    seed = hashlib.sha256(text.encode()).digest()
    raw = [(seed[i % 32] - 127.5) / 127.5 + i * 1e-3 for i in range(size)]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [x / norm for x in raw]
