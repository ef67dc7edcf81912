"""OpenAI embeddings <-> Gemini `embedContent` / `batchEmbedContents`: pure translation.

    input "a"         ──> models/{m}:embedContent        {"content": {"parts": [{"text": "a"}]}}
    input ["a", "b"]  ──> models/{m}:batchEmbedContents  {"requests": [{"model": "models/{m}",
                                                                       "content": ...}, ...]}
    {"embedding": {"values"}} | {"embeddings": [{"values"}, ...]} ──> OpenAI `list` of embeddings

`dimensions` becomes `outputDimensionality` (Gemini truncates the vector to it);
`encoding_format: "base64"` is answered as OpenAI does, with the base64 of the vector's
little-endian float32 bytes; `user` is accepted and not forwarded (logged). Token-id
inputs (lists of integers) have no Gemini equivalent and any other parameter that is set
is unknown here: both are a 400 `unsupported_parameter` before anything goes upstream.

Usage is an estimate. Gemini's embedding responses hold the vectors and nothing else (no
token counts: https://ai.google.dev/api/embeddings), so the usage reported to the client
and metered is ceil(characters / 4) per input, Google's own rule of thumb that a Gemini
token is about four characters (https://ai.google.dev/gemini-api/docs/tokens). It is
not the number Google bills.
"""

from __future__ import annotations

import base64
import math
import struct
from dataclasses import dataclass

import msgspec

from schemas.chat import (
    Embedding,
    EmbeddingList,
    EmbeddingRequest,
    EmbeddingUsage,
    Usage,
    embedding_decoder,
    raw_object_decoder,
)
from schemas.errors import GatewayError
from schemas.gemini import (
    BatchEmbedContentsRequest,
    Content,
    EmbedContentRequest,
    Part,
    batch_embed_decoder,
    embed_decoder,
    resource_name,
)
from workers.providers._base import Answer, UpstreamFailure, malformed, screen_fields
from workers.providers.gemini.request import unsupported

_encode = msgspec.json.Encoder().encode
_KNOWN = frozenset(EmbeddingRequest.__struct_fields__)
CHARS_PER_TOKEN = 4  # https://ai.google.dev/gemini-api/docs/tokens


@dataclass
class EmbeddingPlan:
    """The upstream call for one OpenAI embeddings request, and how to answer it."""

    method: str  # "embedContent" or "batchEmbedContents"
    body: bytes
    texts: list[str]
    base64: bool
    ignored: list[str]


def plan_embeddings(body: bytes, model: str) -> EmbeddingPlan:
    """The Gemini call for an OpenAI embeddings request body. Raises GatewayError (400)."""
    try:
        raw, request = raw_object_decoder.decode(body), embedding_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise GatewayError(400, "invalid_request",
                           f"cannot translate the request for provider kind 'gemini': {exc}") from None
    screen_fields(raw, "gemini", translated=_KNOWN)
    texts = _texts(request.input)
    size = request.dimensions
    if len(texts) == 1:
        method = "embedContent"
        upstream: EmbedContentRequest | BatchEmbedContentsRequest = EmbedContentRequest(
            _content(texts[0]), output_dimensionality=size)
    else:
        method, resource = "batchEmbedContents", resource_name(model)
        upstream = BatchEmbedContentsRequest(
            [EmbedContentRequest(_content(text), resource, size) for text in texts])
    return EmbeddingPlan(method, _encode(upstream), texts, request.encoding_format == "base64",
                         ["user"] if request.user else [])


def _texts(value: str | list[str | int | list[int]]) -> list[str]:
    if isinstance(value, str):
        return [value]
    texts = [item for item in value if isinstance(item, str)]
    if len(texts) != len(value):
        raise unsupported("input", "token-id input (integers instead of text)")
    return texts


def _content(text: str) -> Content:
    return Content([Part(text=text)])


def estimate_tokens(texts: list[str]) -> int:
    """Estimated input tokens (Gemini reports none for embeddings): ~4 characters each."""
    return sum(max(1, math.ceil(len(text) / CHARS_PER_TOKEN)) for text in texts)


def embedding_answer(content: bytes, plan: EmbeddingPlan, slug: str, provider: str) -> Answer:
    """The OpenAI embedding list for Gemini's answer; `slug` is the model the client sent."""
    try:
        if plan.method == "embedContent":
            vectors = [embed_decoder.decode(content).embedding.values]
        else:
            vectors = [e.values for e in batch_embed_decoder.decode(content).embeddings]
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise malformed(provider, retryable=True) from exc
    if len(vectors) != len(plan.texts):
        raise UpstreamFailure(502, "upstream_error",
                              f"provider {provider!r} sent {len(vectors)} embeddings "
                              f"for {len(plan.texts)} inputs", provider=provider, retryable=True)
    data = [Embedding(i, _packed(vector) if plan.base64 else vector)
            for i, vector in enumerate(vectors)]
    tokens = estimate_tokens(plan.texts)  # an estimate: see the module docstring
    body = EmbeddingList(data, slug, EmbeddingUsage(tokens, tokens))
    return Answer(_encode(body), Usage(tokens, 0, tokens))


def _packed(vector: list[float]) -> str:
    """OpenAI's base64 encoding: the vector as little-endian float32 bytes."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
