"""The few fields of the providers' native APIs that the gateway reads at the edge.

Native bodies are relayed as received (only the model is set per route), so these
Structs only validate what the gateway needs: the model, the stream flag, the shape.
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
