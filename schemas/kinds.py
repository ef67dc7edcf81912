"""What each provider kind serves, as pure data: the shared code reads this table
instead of naming kinds.

    families   model-name prefixes that open routing sends to providers of the kind
    endpoints  the gateway endpoints (job `endpoint` names) the kind's adapter serves
    natives    the kind's own APIs that the gateway serves untranslated: the job endpoint,
               the path prefix that answers in its dialect, and the dialect itself
    genai      the kind's `gen_ai.provider.name` in OpenTelemetry's GenAI conventions, for
               the spans of upstream calls ("": the kind's own name)

A dialect says how a good stream of that API ends, how the gateway's error body is
reshaped for that API's SDKs (in an answer and in a stream's error event) and which
header a 401 tells the caller to send the key in. Adding a kind
adds one row here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from schemas import anthropic, gemini, responses
from schemas.native import (
    AnthropicCountTokensRequest,
    AnthropicMessagesRequest,
    GeminiCountTokensRequest,
    GeminiEmbedRequest,
    GeminiGenerateRequest,
)


def _as_is(body: bytes, status: int) -> bytes:
    return body


@dataclass(frozen=True, slots=True)
class Dialect:
    """How one API ends a good stream and shapes its errors."""

    done: bytes | None  # the data of the event after the last chunk (None: the stream just ends)
    error_event: str  # the SSE event name of an error ("": unnamed)
    shape: Callable[[bytes, int], bytes] = _as_is  # the gateway's error body, reshaped
    key_hint: str = "'Authorization: Bearer <key>'"  # where this API's SDKs send the key
    # The data of a stream's error event, from the error body, its status and the number of
    # events relayed before it (None: `shape`'s). Responses numbers its events.
    event: Callable[[bytes, int, int], bytes] | None = None


OPENAI = Dialect(b"[DONE]", "")
# The Responses API's typed events end with `response.completed` (no [DONE]); a failure
# after the stream began is an `error` event in OpenAI's flat shape, numbered after the
# events relayed (every relayed payload is one event, numbered from 0 by the worker).
RESPONSES = Dialect(None, "error", event=responses.error_event_data)
TRANSLATED = frozenset({"responses"})  # served by every kind, through its chat call


@dataclass(frozen=True, slots=True)
class NativeAPI:
    """A provider's own API, relayed untranslated at `prefix`; `path`, `request` and
    `summary` describe its route in the OpenAPI document."""

    endpoint: str
    prefix: str
    dialect: Dialect
    path: str
    request: type
    summary: str


@dataclass(frozen=True, slots=True)
class Kind:
    families: tuple[str, ...] = ()
    endpoints: frozenset[str] = frozenset({"chat", "embeddings"})
    natives: tuple[NativeAPI, ...] = ()
    genai: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "endpoints", self.endpoints | TRANSLATED)


ANTHROPIC = Dialect(None, "error", anthropic.error_dialect, "'x-api-key: <key>'")
GEMINI = Dialect(None, "", gemini.error_dialect, "'x-goog-api-key: <key>' (or ?key=<key>)")
ANTHROPIC_MESSAGES = NativeAPI(
    "anthropic_messages", "/anthropic/", ANTHROPIC,
    "/anthropic/v1/messages", AnthropicMessagesRequest, "Anthropic Messages API, relayed untranslated")
ANTHROPIC_COUNT_TOKENS = NativeAPI(
    "anthropic_count_tokens", "/anthropic/", ANTHROPIC,
    "/anthropic/v1/messages/count_tokens", AnthropicCountTokensRequest,
    "Anthropic token counting, relayed (an estimate on models no anthropic route serves)")
GEMINI_GENERATE = NativeAPI(
    "gemini_generate", "/gemini/", GEMINI,
    "/gemini/v1beta/models/{target}", GeminiGenerateRequest,
    "Gemini generateContent / streamGenerateContent (`{target}` is `{model}:generateContent` "
    "or `{model}:streamGenerateContent`, streamed with `?alt=sse`; also under /gemini/v1/)")
GEMINI_COUNT_TOKENS = NativeAPI(
    "gemini_count_tokens", "/gemini/", GEMINI,
    "/gemini/v1beta/models/{model}:countTokens", GeminiCountTokensRequest,
    "Gemini countTokens, relayed (an estimate on models no gemini route serves)")
GEMINI_EMBED = NativeAPI(
    "gemini_embed", "/gemini/", GEMINI,
    "/gemini/v1beta/models/{model}:embedContent", GeminiEmbedRequest,
    "Gemini embedContent (and `:batchEmbedContents` with a GeminiBatchEmbedRequest), relayed")

# Legacy completions: relayed by the OpenAI-shaped kinds, through the chat call elsewhere.
# Images and audio: relayed by the OpenAI-shaped kinds, answered locally by the mock.
_OPENAI_SHAPED = frozenset({"chat", "embeddings", "completions", "images", "transcriptions",
                            "translations"})

KINDS: dict[str, Kind] = {
    "openai": Kind(families=("gpt-", "o1", "o3", "o4", "chatgpt-", "text-embedding-"),
                   endpoints=_OPENAI_SHAPED, genai="openai"),
    "azure": Kind(endpoints=_OPENAI_SHAPED, genai="azure.ai.openai"),
    "anthropic": Kind(families=("claude-",),
                      endpoints=frozenset({"chat", "completions", "anthropic_messages",
                                           "anthropic_count_tokens"}),
                      natives=(ANTHROPIC_MESSAGES, ANTHROPIC_COUNT_TOKENS), genai="anthropic"),
    "gemini": Kind(families=("gemini-", "gemma-"),
                   endpoints=frozenset({"chat", "completions", "embeddings", "gemini_generate",
                                        "gemini_count_tokens", "gemini_embed"}),
                   natives=(GEMINI_GENERATE, GEMINI_COUNT_TOKENS, GEMINI_EMBED),
                   genai="gcp.gemini"),
    # The mock answers the native APIs too, in their own shapes (no `natives` of its own:
    # the paths and dialects are the real kinds'); token counts are the ingress's estimate.
    "mock": Kind(endpoints=_OPENAI_SHAPED | {"anthropic_messages", "gemini_generate",
                                             "gemini_embed"}),
}

# One row per API (several kinds may serve one: the mock kind answers them too).
NATIVES: tuple[NativeAPI, ...] = tuple(dict.fromkeys(
    api for kind in KINDS.values() for api in kind.natives))


def dialect(endpoint: str) -> Dialect:
    """The dialect a job's answer is written in."""
    if endpoint == "responses":
        return RESPONSES
    return next((api.dialect for api in NATIVES if api.endpoint == endpoint), OPENAI)


def dialect_of_path(path: str) -> Dialect:
    """The dialect of the gateway path a request came to (errors before any job exists)."""
    return next((api.dialect for api in NATIVES if path.startswith(api.prefix)), OPENAI)


def is_native(endpoint: str) -> bool:
    """Whether the endpoint relays a provider's own API (only its kinds can serve it)."""
    return any(api.endpoint == endpoint for api in NATIVES)
