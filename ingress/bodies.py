"""Request bodies decoded once, at the edge, into their Structs (400 / 422 otherwise)."""

from __future__ import annotations

from typing import TypeVar

import msgspec

from schemas.errors import GatewayError

S = TypeVar("S")


def decode_body(decoder: msgspec.json.Decoder[S], body: bytes) -> S:
    """Validate a body: 400 for bad JSON, 422 naming the field for a bad shape."""
    try:
        # JSON is UTF-8. msgspec checks only the strings it decodes (a bad byte there is a
        # UnicodeDecodeError, once a 500) and relays skipped fields' bytes as they are.
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise GatewayError(400, "invalid_json",
                           f"the body is not valid UTF-8 (byte {exc.start})") from None
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        message = str(exc)
        reason, _, where = message.partition(" - at `")
        path = where.rstrip("`") or "$"
        raise GatewayError(422, "validation_error", f"invalid request: {message}",
                           param=path.removeprefix("$.") if path != "$" else None,
                           details={"field": path, "reason": reason}) from None
    except msgspec.DecodeError as exc:
        raise GatewayError(400, "invalid_json", f"the body is not valid JSON: {exc}") from None
