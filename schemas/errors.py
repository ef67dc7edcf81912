"""The gateway's one error type and the error body it renders to.

    GatewayError(status, code, message)     raised where the problem is known
      └─ rendered once, by the ingress, as
         {"error": {"message", "type", "code", "param", "details"?}}

Workers send the same body inside an error frame, so a failure upstream reaches the
client in exactly the shape a failure at the edge does.
"""

from __future__ import annotations

from typing import Any

import msgspec

# The OpenAI SDKs read `type`; derive it from the status so callers only pick a code.
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


class ErrorDetail(msgspec.Struct):
    message: str
    type: str
    code: str
    param: str | None = None
    details: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET


class ErrorBody(msgspec.Struct):
    error: ErrorDetail


_encode = msgspec.json.Encoder().encode


class GatewayError(Exception):
    """A failure the client should hear about: it knows its HTTP status, code and message."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        param: str | None = None,
        details: dict[str, Any] | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param
        self.details = details
        self.retry_after = retry_after

    @property
    def type(self) -> str:
        return _TYPES.get(self.status, "server_error" if self.status >= 500 else "api_error")

    def body(self) -> ErrorBody:
        """The error as the wire shape."""
        details = msgspec.UNSET if self.details is None else self.details
        detail = ErrorDetail(self.message, self.type, self.code, self.param, details)
        return ErrorBody(detail)

    def encode(self) -> bytes:
        """The error body as JSON bytes."""
        return _encode(self.body())

    def __repr__(self) -> str:
        return f"GatewayError({self.status}, {self.code!r}, {self.message!r})"


# ── the same error in the shapes of the native APIs ─────────────────────────────────
# Clients of /anthropic/... and /gemini/... use those providers' SDKs, which read their
# own error shapes; the gateway's code travels along in each.

class AnthropicErrorDetail(msgspec.Struct, omit_defaults=True):
    type: str
    message: str
    code: str
    param: str | None = None
    details: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET


class AnthropicErrorBody(msgspec.Struct):
    error: AnthropicErrorDetail
    type: str = "error"


class GoogleErrorInfo(msgspec.Struct):
    reason: str
    metadata: dict[str, str]
    domain: str = "switchboard"
    type: str = msgspec.field(name="@type", default="type.googleapis.com/google.rpc.ErrorInfo")


class GeminiErrorDetail(msgspec.Struct):
    code: int
    message: str
    status: str
    details: list[GoogleErrorInfo]


class GeminiErrorBody(msgspec.Struct):
    error: GeminiErrorDetail


_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                    403: "permission_error", 404: "not_found_error", 413: "request_too_large",
                    422: "invalid_request_error", 429: "rate_limit_error", 503: "overloaded_error"}
_GOOGLE_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
                  404: "NOT_FOUND", 413: "INVALID_ARGUMENT", 422: "INVALID_ARGUMENT",
                  429: "RESOURCE_EXHAUSTED", 502: "UNAVAILABLE", 503: "UNAVAILABLE",
                  504: "DEADLINE_EXCEEDED"}
_decode_body = msgspec.json.Decoder(ErrorBody).decode


def _detail(body: bytes) -> ErrorDetail:
    try:
        return _decode_body(body).error
    except msgspec.DecodeError:
        return ErrorDetail("upstream error", "api_error", "upstream_error")


def as_anthropic(body: bytes, status: int) -> bytes:
    """A gateway error body in Anthropic's shape: {"type": "error", "error": {...}}."""
    detail = _detail(body)
    kind = _ANTHROPIC_TYPES.get(status, "api_error")
    return _encode(AnthropicErrorBody(AnthropicErrorDetail(
        kind, detail.message, detail.code, detail.param, detail.details)))


def as_gemini(body: bytes, status: int) -> bytes:
    """A gateway error body in Google's shape: {"error": {"code", "message", "status"}}."""
    detail = _detail(body)
    google_status = _GOOGLE_STATUS.get(status, "INTERNAL")
    # ErrorInfo metadata is a string map: the param and details travel as strings.
    metadata = {key: str(value) for key, value in (detail.details or {}).items()}
    if detail.param:
        metadata["param"] = detail.param
    return _encode(GeminiErrorBody(GeminiErrorDetail(
        status, detail.message, google_status, [GoogleErrorInfo(detail.code, metadata)])))
