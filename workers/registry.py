"""Provider kinds to adapters: one `case` per kind, typed by the kind's config Struct."""

from __future__ import annotations

from typing import assert_never

import httpx2

from schemas.providers import (
    AnthropicProvider,
    AzureProvider,
    GeminiProvider,
    MockProvider,
    OpenAIProvider,
    ProviderConfig,
)
from workers.providers._base import Adapter
from workers.providers.anthropic import AnthropicAdapter
from workers.providers.azure import AzureAdapter
from workers.providers.gemini import GeminiAdapter
from workers.providers.mock import MockAdapter
from workers.providers.openai import OpenAIAdapter


def build_adapter(name: str, config: ProviderConfig, http: httpx2.AsyncClient) -> Adapter:
    """The adapter for a configured provider (mypy checks that every kind has one)."""
    match config:
        case OpenAIProvider():
            return OpenAIAdapter(name, config, http)
        case AzureProvider():
            return AzureAdapter(name, config, http)
        case AnthropicProvider():
            return AnthropicAdapter(name, config, http)
        case GeminiProvider():
            return GeminiAdapter(name, config, http)
        case MockProvider():
            return MockAdapter(name, config, http)
        case _:
            assert_never(config)
