"""The OpenAI legacy completions wire shapes (`POST /v1/completions`).

The request is decoded only to validate what the gateway reads; the body travels as
received (unknown fields pass through), so nothing here forbids unknown fields. Answers
and stream chunks share one shape, a `text_completion` object (OpenAI's reference).
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from schemas.chat import StreamOptions, Usage
from schemas.tracking import EndUser, Thread

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for this endpoint when `max_tokens` is absent


class CompletionRequest(Struct):
    """The fields of a completions request that the gateway type-checks."""

    model: str
    # A string, a list of strings, a list of token ids, or a list of lists of them.
    prompt: str | Annotated[list[str | int | list[int]], Meta(min_length=1)]
    stream: bool = False
    max_tokens: Annotated[int, Meta(ge=0)] | None = None
    n: Annotated[int, Meta(ge=1)] | None = None
    best_of: Annotated[int, Meta(ge=0)] | None = None
    echo: bool | None = None
    suffix: str | None = None
    logprobs: Annotated[int, Meta(ge=0)] | None = None
    stop: str | list[str] | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    stream_options: StreamOptions | None = None
    user: str | None = None
    identity: EndUser | None = None  # Switchboard's own: recorded, never sent upstream
    thread: Thread | None = None

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    @property
    def prompts(self) -> int:
        """How many prompts the request holds (token ids make one prompt)."""
        if isinstance(self.prompt, str) or isinstance(self.prompt[0], int):
            return 1
        return len(self.prompt)


class TextChoice(Struct):
    text: str
    index: int
    finish_reason: str | None = None
    logprobs: None = None


class TextCompletion(Struct):
    """A whole answer, and (with `usage` unset) each chunk of a stream."""

    id: str
    created: int
    model: str
    choices: list[TextChoice]
    object: str = "text_completion"
    system_fingerprint: str | UnsetType = UNSET
    usage: Usage | UnsetType = UNSET


completion_decoder = msgspec.json.Decoder(CompletionRequest)
