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
        retry_after: float | None = None,  # seconds; the ingress only sets whole ones
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param
        self.details = details
        self.retry_after = retry_after
        # More response headers (the x-ratelimit-* of a limited key), rendered with it
        self.headers = dict(headers or {})

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


_decode_body = msgspec.json.Decoder(ErrorBody).decode


def detail_of(body: bytes) -> ErrorDetail:
    """The detail of a rendered gateway error body (for reshaping it into another dialect)."""
    try:
        return _decode_body(body).error
    except msgspec.DecodeError:
        return ErrorDetail("upstream error", "api_error", "upstream_error")
