"""Provider kind `gemini`: see `adapter` (the kind and its native relay), `request` and
`response` (the chat translation by direction) and `embed` (embeddings)."""

from workers.providers.gemini.adapter import GeminiAdapter

__all__ = ["GeminiAdapter"]
