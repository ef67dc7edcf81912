"""What each provider kind serves, as pure data: the shared code reads this table
instead of naming kinds.

    families   model-name prefixes that open routing sends to providers of the kind
    endpoints  the gateway endpoints (job `endpoint` names) the kind's adapter serves
    natives    the kind's own APIs that the gateway serves untranslated: the job endpoint,
               the path prefix that answers in its dialect, and the dialect itself
    genai      the kind's `gen_ai.provider.name` in OpenTelemetry's GenAI conventions, for
               the spans of upstream calls ("": the kind's own name)

A dialect says how a good stream of that API ends and how the gateway's error body is
reshaped for that API's SDKs (in an answer and in a stream's error event). Adding a kind
adds one row here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from schemas import anthropic, gemini
from schemas.native import AnthropicMessagesRequest, GeminiGenerateRequest


def _as_is(body: bytes, status: int) -> bytes:
    return body


@dataclass(frozen=True, slots=True)
class Dialect:
    """How one API ends a good stream and shapes its errors."""

    done: bytes | None  # the data of the event after the last chunk (None: the stream just ends)
    error_event: str  # the SSE event name of an error ("": unnamed)
    shape: Callable[[bytes, int], bytes] = _as_is  # the gateway's error body, reshaped


OPENAI = Dialect(b"[DONE]", "")


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


ANTHROPIC_MESSAGES = NativeAPI(
    "anthropic_messages", "/anthropic/", Dialect(None, "error", anthropic.error_dialect),
    "/anthropic/v1/messages", AnthropicMessagesRequest, "Anthropic Messages API, relayed untranslated")
GEMINI_GENERATE = NativeAPI(
    "gemini_generate", "/gemini/", Dialect(None, "", gemini.error_dialect),
    "/gemini/v1beta/models/{target}", GeminiGenerateRequest,
    "Gemini generateContent / streamGenerateContent (`{target}` is `{model}:generateContent` "
    "or `{model}:streamGenerateContent`, streamed with `?alt=sse`)")

KINDS: dict[str, Kind] = {
    "openai": Kind(families=("gpt-", "o1", "o3", "o4", "chatgpt-", "text-embedding-"),
                   genai="openai"),
    "azure": Kind(genai="azure.ai.openai"),
    "anthropic": Kind(families=("claude-",), endpoints=frozenset({"chat", "anthropic_messages"}),
                      natives=(ANTHROPIC_MESSAGES,), genai="anthropic"),
    "gemini": Kind(families=("gemini-", "gemma-"),
                   endpoints=frozenset({"chat", "embeddings", "gemini_generate"}),
                   natives=(GEMINI_GENERATE,), genai="gcp.gemini"),
    # The mock answers the native APIs too, in their own shapes (no `natives` of its own:
    # the paths and dialects are the real kinds').
    "mock": Kind(endpoints=frozenset({"chat", "embeddings", "anthropic_messages",
                                      "gemini_generate", "gemini_embed"})),
}

NATIVES: tuple[NativeAPI, ...] = tuple(api for kind in KINDS.values() for api in kind.natives)


def dialect(endpoint: str) -> Dialect:
    """The dialect a job's answer is written in."""
    return next((api.dialect for api in NATIVES if api.endpoint == endpoint), OPENAI)


def dialect_of_path(path: str) -> Dialect:
    """The dialect of the gateway path a request came to (errors before any job exists)."""
    return next((api.dialect for api in NATIVES if path.startswith(api.prefix)), OPENAI)


def is_native(endpoint: str) -> bool:
    """Whether the endpoint relays a provider's own API (only its kinds can serve it)."""
    return any(api.endpoint == endpoint for api in NATIVES)
