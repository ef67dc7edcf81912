"""Google's Gemini API wire shapes (`generativelanguage.googleapis.com/v1beta`).

    GenerateContentRequest ──> models/{m}:generateContent | :streamGenerateContent?alt=sse
    GenerateContentResponse <── one body, or one per SSE event (same shape)
    EmbedContentRequest ──> models/{m}:embedContent ──> EmbedContentResponse
    BatchEmbedContentsRequest ──> models/{m}:batchEmbedContents ──> BatchEmbedContentsResponse
    ErrorBody <── any non-200 answer (and an `error` event inside a stream)

Field names are camelCase on the wire (`rename="camel"`); absent optional fields are
omitted when encoding. `ResponseSummary` is the little the gateway reads of an answer it
relays untouched (native endpoints): usage, finish reasons, a blocked prompt, an error.

References: https://ai.google.dev/api/generate-content, https://ai.google.dev/api/embeddings,
https://ai.google.dev/gemini-api/docs/troubleshooting (error bodies).
"""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import Struct

from schemas.errors import detail_of


def resource_name(model: str) -> str:
    """The model's resource name: `models/{model}`, or the name as given (`tunedModels/x`)."""
    return model if "/" in model else f"models/{model}"


# ── content ─────────────────────────────────────────────────────────────────────
class Blob(Struct, rename="camel"):
    mime_type: str
    data: str


class FileData(Struct, rename="camel", omit_defaults=True):
    file_uri: str
    mime_type: str | None = None


class GeminiFunctionCall(Struct, omit_defaults=True):
    name: str
    args: dict[str, Any] | None = None
    id: str | None = None


class FunctionResponse(Struct):
    name: str
    response: dict[str, Any]


class Part(Struct, rename="camel", omit_defaults=True):
    text: str | None = None
    inline_data: Blob | None = None
    file_data: FileData | None = None
    function_call: GeminiFunctionCall | None = None
    function_response: FunctionResponse | None = None
    thought: bool | None = None
    thought_signature: str | None = None


class Content(Struct, omit_defaults=True):
    parts: list[Part] = []
    role: str | None = None


# ── generateContent request ─────────────────────────────────────────────────────
class FunctionDeclaration(Struct, rename="camel", omit_defaults=True):
    name: str
    description: str | None = None
    parameters_json_schema: dict[str, Any] | None = None


class GeminiTool(Struct, rename="camel"):
    function_declarations: list[FunctionDeclaration]


class FunctionCallingConfig(Struct, rename="camel", omit_defaults=True):
    mode: str
    allowed_function_names: list[str] | None = None


class ToolConfig(Struct, rename="camel"):
    function_calling_config: FunctionCallingConfig


class GenerationConfig(Struct, rename="camel", omit_defaults=True):
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    max_output_tokens: int | None = None
    stop_sequences: list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    candidate_count: int | None = None
    response_mime_type: str | None = None
    response_json_schema: dict[str, Any] | None = None


class GenerateContentRequest(Struct, rename="camel", omit_defaults=True):
    contents: list[Content]
    system_instruction: Content | None = None
    tools: list[GeminiTool] | None = None
    tool_config: ToolConfig | None = None
    generation_config: GenerationConfig | None = None


# ── generateContent response ────────────────────────────────────────────────────
class Candidate(Struct, rename="camel"):
    content: Content | None = None
    finish_reason: str | None = None
    index: int = 0


class UsageMetadata(Struct, rename="camel"):
    prompt_token_count: int = 0
    candidates_token_count: int = 0
    thoughts_token_count: int = 0
    total_token_count: int = 0


class PromptFeedback(Struct, rename="camel"):
    block_reason: str | None = None


class GeminiError(Struct):
    code: int = 0
    message: str = ""
    status: str = ""
    details: list[Any] = []


class GenerateContentResponse(Struct, rename="camel"):
    candidates: list[Candidate] = []
    usage_metadata: UsageMetadata | None = None
    prompt_feedback: PromptFeedback | None = None
    response_id: str = ""
    error: GeminiError | None = None  # an error event inside a stream


class TextPart(Struct):
    text: str | None = None  # thoughts included: they are billed as output


class TextContent(Struct):
    parts: list[TextPart] | None = None


class CandidateEnd(Struct, rename="camel"):
    """A candidate as far as a relay reads it: which one, whether it finished, and how
    much text it brought (for the running usage count of a stream cut short)."""

    finish_reason: str | None = None
    index: int = 0
    content: TextContent | None = None

    @property
    def chars(self) -> int:
        parts = self.content.parts if self.content else None
        return sum(len(p.text or "") for p in parts or ())


class ResponseSummary(Struct, rename="camel"):
    """What the gateway reads of a GenerateContentResponse it relays as received."""

    candidates: list[CandidateEnd] = []
    usage_metadata: UsageMetadata | None = None
    prompt_feedback: PromptFeedback | None = None
    error: GeminiError | None = None

    @property
    def blocked(self) -> bool:
        """The prompt was blocked: the answer is complete without any candidate."""
        return self.prompt_feedback is not None and self.prompt_feedback.block_reason is not None


class ErrorBody(Struct):
    error: GeminiError | None = None


# ── embeddings ──────────────────────────────────────────────────────────────────
class EmbedContentRequest(Struct, rename="camel", omit_defaults=True):
    """`models/{m}:embedContent` body, and one entry of a batch (where `model` is required
    and must equal the model of the URL)."""

    content: Content
    model: str | None = None
    output_dimensionality: int | None = None


class BatchEmbedContentsRequest(Struct):
    requests: list[EmbedContentRequest]


class ContentEmbedding(Struct):
    values: list[float] = []


class EmbedContentResponse(Struct):
    embedding: ContentEmbedding


class BatchEmbedContentsResponse(Struct):
    embeddings: list[ContentEmbedding] = []  # in the order of the requests


response_decoder = msgspec.json.Decoder(GenerateContentResponse)
summary_decoder = msgspec.json.Decoder(ResponseSummary)
error_decoder = msgspec.json.Decoder(ErrorBody)
embed_decoder = msgspec.json.Decoder(EmbedContentResponse)
batch_embed_decoder = msgspec.json.Decoder(BatchEmbedContentsResponse)


# ── the gateway's own errors, in Google's shape (for the native endpoint's clients) ──
class GoogleErrorInfo(Struct):
    reason: str
    metadata: dict[str, str]
    domain: str = "switchboard"
    type: str = msgspec.field(name="@type", default="type.googleapis.com/google.rpc.ErrorInfo")


class GatewayErrorDetail(Struct):
    code: int
    message: str
    status: str
    details: list[GoogleErrorInfo]


class GatewayErrorBody(Struct):
    error: GatewayErrorDetail


# google.rpc.Code by HTTP status, as the canonical codes map them
# (https://cloud.google.com/apis/design/errors#handling_errors, google/rpc/code.proto).
# 405 has no canonical code: UNIMPLEMENTED ("not implemented or not supported") is the
# one grpc-gateway gives a wrong method. 413 and 422 are argument problems to Google
# (a payload over the limit is a 400 INVALID_ARGUMENT there).
GOOGLE_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
                 404: "NOT_FOUND", 405: "UNIMPLEMENTED", 408: "DEADLINE_EXCEEDED",
                 409: "ABORTED", 413: "INVALID_ARGUMENT", 422: "INVALID_ARGUMENT",
                 429: "RESOURCE_EXHAUSTED", 499: "CANCELLED", 500: "INTERNAL",
                 501: "UNIMPLEMENTED", 502: "UNAVAILABLE", 503: "UNAVAILABLE",
                 504: "DEADLINE_EXCEEDED"}


def google_status(status: int) -> str:
    """The google.rpc.Code name for an HTTP status (other 4xx: FAILED_PRECONDITION, the
    client must change something; other 5xx: INTERNAL)."""
    return GOOGLE_STATUS.get(status, "FAILED_PRECONDITION" if 400 <= status < 500 else "INTERNAL")


_encode = msgspec.json.Encoder().encode


def error_dialect(body: bytes, status: int) -> bytes:
    """A gateway error body in Google's shape: {"error": {"code", "message", "status",
    "details": [ErrorInfo]}}, the gateway's code as the ErrorInfo's reason."""
    detail = detail_of(body)
        # ErrorInfo metadata is a string map: the param and details travel as strings.
    metadata = {key: str(value) for key, value in (detail.details or {}).items()}
    if detail.param:
        metadata["param"] = detail.param
    return _encode(GatewayErrorBody(GatewayErrorDetail(
        status, detail.message, google_status(status), [GoogleErrorInfo(detail.code, metadata)])))
