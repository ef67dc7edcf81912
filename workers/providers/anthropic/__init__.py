"""Provider kind `anthropic`: see `adapter` (the kind), `request` and `response` (the chat
translation by direction) and `native` (the untranslated Messages relay)."""

from workers.providers.anthropic.adapter import AnthropicAdapter

__all__ = ["AnthropicAdapter"]
