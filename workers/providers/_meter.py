"""The running usage count of one upstream attempt, read however the attempt ends.

A stream cut short (the client left, the upstream broke off, the worker drained) has
cost the provider's tokens all the same (invariant 9), so adapters keep a count while
they stream: the provider's own figures whenever it sends them (`report`), and the
length of the text relayed since then (`add_text`), which becomes an estimate at
`CHARS_PER_TOKEN` characters a token. A complete answer is metered with the usage its
adapter returns; the runner reads `usage()` only when the attempt ended early.
"""

from __future__ import annotations

from typing import Any

import msgspec

from schemas.chat import Usage

CHARS_PER_TOKEN = 4  # the usual rule of thumb for English text with BPE tokenizers

_decode_any = msgspec.json.Decoder().decode


def estimate_tokens(chars: int) -> int:
    """Tokens for `chars` characters of text, rounded up."""
    return -(-chars // CHARS_PER_TOKEN)


def _text_chars(value: Any) -> int:
    """Characters of all strings in a decoded JSON value (the prompt's text, roughly)."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(_text_chars(v) for v in value.values())
    if isinstance(value, list):
        return sum(_text_chars(v) for v in value)
    return 0


class UsageMeter:
    """What one attempt has used so far."""

    def __init__(self, request_body: bytes = b"") -> None:
        self._body = request_body
        self._reported: Usage | None = None
        self._chars = 0  # text relayed since the provider's last report

    def report(self, usage: Usage) -> None:
        """The provider's own running totals (they cover all text relayed until now)."""
        self._reported = usage
        self._chars = 0

    def add_text(self, chars: int) -> None:
        """`chars` characters of generated text (content, reasoning, tool arguments) relayed."""
        self._chars += chars

    def usage(self) -> Usage:
        """The provider's last figures plus an estimate of what came after them; the prompt
        estimated from the request when the provider never said."""
        reported = self._reported or Usage()
        prompt = reported.prompt_tokens or self._prompt_estimate()
        completion = reported.completion_tokens + estimate_tokens(self._chars)
        return Usage(prompt, completion, prompt + completion)

    def _prompt_estimate(self) -> int:
        # Computed only for a cut stream whose provider never reported: off the hot path.
        try:
            return estimate_tokens(_text_chars(_decode_any(self._body)))
        except msgspec.DecodeError:
            return estimate_tokens(len(self._body))
