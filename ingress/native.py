"""The providers' own APIs, served untranslated: Anthropic Messages and Gemini generateContent.

Each route validates the little the gateway reads (model, stream flag, shape), then
relays the client's body as is through the same keys, limits and queue as every other
endpoint; only routes whose provider kind speaks that API can serve it (`schemas.kinds`),
and errors come back in that API's own shape (its dialect).
"""

from __future__ import annotations

from quart import Blueprint, Response, request

from ingress.bodies import decode_body
from ingress.gateway import Submission
from ingress.respond import gateway, relay
from schemas.errors import GatewayError
from schemas.native import anthropic_decoder, gemini_decoder

native = Blueprint("native", __name__)

ANTHROPIC_HEADERS = ("anthropic-version", "anthropic-beta")
GEMINI_METHODS = ("generateContent", "streamGenerateContent")


def protocol_headers(allowed: tuple[str, ...]) -> dict[str, str]:
    """The client's protocol headers a native relay passes on (allow-listed, bounded)."""
    headers = {name: request.headers[name] for name in allowed if name in request.headers}
    for name, value in headers.items():
        if len(value) > 512:
            raise GatewayError(400, "invalid_header", f"header {name!r} is too long", param=name)
    return headers


@native.post("/anthropic/v1/messages")
async def anthropic_messages() -> Response:
    """`POST /v1/messages`, with the client's `anthropic-version` / `anthropic-beta` headers."""
    headers = protocol_headers(ANTHROPIC_HEADERS)

    def submission(body: bytes) -> Submission:
        message = decode_body(anthropic_decoder, body)
        gateway().bounds.count("messages", message.messages, "max_messages")
        gateway().bounds.count("tools", message.tools, "max_tools")
        return Submission("anthropic_messages", message.model, body, message.stream,
                          headers=headers, max_output_tokens=message.max_tokens)

    return await relay(submission)


@native.post("/gemini/v1beta/models/<path:target>")
async def gemini_generate(target: str) -> Response:
    """`models/{model}:generateContent` and `:streamGenerateContent?alt=sse`."""
    model, _, method = target.rpartition(":")
    if method not in GEMINI_METHODS or not model:
        raise GatewayError(404, "not_found", f"unknown Gemini method {method!r}; "
                           f"served: {', '.join(GEMINI_METHODS)}")
    stream = method == "streamGenerateContent"
    if stream and request.args.get("alt") != "sse":
        # Google's SDKs stream with alt=sse; the JSON-array stream is not relayed.
        raise GatewayError(400, "unsupported_parameter",
                           "streamGenerateContent is served as Server-Sent Events only: add ?alt=sse",
                           param="alt")

    def submission(body: bytes) -> Submission:
        generate = decode_body(gemini_decoder, body)
        gateway().bounds.count("contents", generate.contents, "max_messages")
        gateway().bounds.count("tools", generate.tools, "max_tools")
        config = generate.generationConfig
        return Submission("gemini_generate", model, body, stream,
                          max_output_tokens=config.maxOutputTokens if config else None,
                          choices=config.candidateCount or 1 if config else 1)

    return await relay(submission)
