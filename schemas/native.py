"""The few fields of the providers' native APIs that the gateway reads at the edge.

Native bodies are relayed as received (only the model is set per route), so these
Structs only validate what the gateway needs: the model, the stream flag, the shape.
The answers the gateway gives itself on native paths (its catalog as Gemini's and
Anthropic's model lists, token-count estimates) are here too, in each API's own shape.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta, Struct


class AnthropicMessagesRequest(Struct):
    """`POST /v1/messages` of the Anthropic API."""

    model: str
    messages: Annotated[list[dict[str, Any]], Meta(min_length=1)]
    max_tokens: Annotated[int, Meta(ge=1)]
    stream: bool = False
    tools: list[msgspec.Raw] | None = None  # counted only (limits.max_tools)


class GeminiGenerationConfig(Struct):
    """The output limits admission reserves against (the rest is relayed unread)."""

    maxOutputTokens: Annotated[int, Meta(ge=1)] | None = None
    candidateCount: Annotated[int, Meta(ge=1)] | None = None


class GeminiGenerateRequest(Struct):
    """`models/{model}:generateContent` of the Gemini API (the model is in the path)."""

    contents: Annotated[list[dict[str, Any]], Meta(min_length=1)]
    generationConfig: GeminiGenerationConfig | None = None
    tools: list[msgspec.Raw] | None = None  # counted only (limits.max_tools)


anthropic_decoder = msgspec.json.Decoder(AnthropicMessagesRequest)
gemini_decoder = msgspec.json.Decoder(GeminiGenerateRequest)


class AnthropicCountTokensRequest(Struct):
    """`POST /v1/messages/count_tokens`: a Messages request without `max_tokens`."""

    model: str
    messages: Annotated[list[dict[str, Any]], Meta(min_length=1)]
    tools: list[msgspec.Raw] | None = None  # counted only (limits.max_tools)


class GeminiCountTokensRequest(Struct):
    """`models/{model}:countTokens`: `contents`, or a whole `generateContentRequest`
    (whose `model` the relay sets to the route's)."""

    contents: list[dict[str, Any]] | None = None
    generateContentRequest: dict[str, Any] | None = None


class GeminiEmbedRequest(Struct):
    """`models/{model}:embedContent`: one content to embed."""

    content: dict[str, Any]


class GeminiBatchEmbedRequest(Struct):
    """`models/{model}:batchEmbedContents`: several EmbedContentRequests (each names the
    model of the URL; the relay sets them to the route's)."""

    requests: Annotated[list[GeminiEmbedRequest], Meta(min_length=1)]


anthropic_count_decoder = msgspec.json.Decoder(AnthropicCountTokensRequest)
gemini_count_decoder = msgspec.json.Decoder(GeminiCountTokensRequest)
gemini_embed_decoder = msgspec.json.Decoder(GeminiEmbedRequest)
gemini_batch_embed_decoder = msgspec.json.Decoder(GeminiBatchEmbedRequest)


# ── answers the gateway gives itself on native paths (ingress/native_local.py) ──
class GeminiModel(Struct, rename="camel", omit_defaults=True):
    """Gemini's `Model` resource (https://ai.google.dev/api/models#Model), for a catalog slug."""

    name: str  # models/{slug}
    base_model_id: str
    version: str
    display_name: str
    description: str
    supported_generation_methods: list[str]
    input_token_limit: int | None = None
    output_token_limit: int | None = None


class GeminiModelList(Struct, rename="camel", omit_defaults=True):
    """`GET models` (https://ai.google.dev/api/models#method:-models.list)."""

    models: list[GeminiModel]
    next_page_token: str = ""


class GeminiTokenCount(Struct, rename="camel"):
    """A CountTokensResponse (the gateway's estimate on kinds without a token counter)."""

    total_tokens: int


class AnthropicModelInfo(Struct):
    """Anthropic's ModelInfo (https://docs.anthropic.com/en/api/models)."""

    id: str
    created_at: str  # RFC 3339
    display_name: str
    type: str = "model"


class AnthropicModelList(Struct):
    """`GET /v1/models` (https://docs.anthropic.com/en/api/models-list)."""

    data: list[AnthropicModelInfo]
    has_more: bool
    first_id: str | None
    last_id: str | None


class AnthropicTokenCount(Struct):
    """A MessageTokensCount (the gateway's estimate on kinds without a token counter)."""

    input_tokens: int
