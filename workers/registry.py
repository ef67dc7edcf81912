"""Provider kinds: one line each. Adding a kind means one module and one line here."""

from __future__ import annotations

import httpx

from schemas.config import ProviderConfig
from workers.anthropic import AnthropicAdapter
from workers.base import Adapter
from workers.gemini import GeminiAdapter
from workers.mock import MockAdapter
from workers.openai import OpenAIAdapter

ADAPTERS: dict[str, type[Adapter]] = {
    "openai": OpenAIAdapter,
    "mock": MockAdapter,
    "gemini": GeminiAdapter,
    "anthropic": AnthropicAdapter,
}


def build_adapter(name: str, config: ProviderConfig, http: httpx.AsyncClient) -> Adapter:
    """The adapter for a configured provider."""
    return ADAPTERS[config.kind](name, config, http)  # type: ignore[call-arg]
