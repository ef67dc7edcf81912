"""The providers' own APIs, served untranslated: Anthropic Messages and count_tokens,
Gemini generateContent, countTokens, embedContent and batchEmbedContents (under
/gemini/v1beta/ and /gemini/v1/), and both APIs' model lists.

Each route validates the little the gateway reads (model, stream flag, shape), then
relays the client's body as is through the same keys, limits and queue as every other
endpoint; only routes whose provider kind speaks that API can serve it (`schemas.kinds`),
and errors come back in that API's own shape (its dialect). Model lists and token-count
estimates for models no such route serves are answered here (`ingress.native_local`).
"""

from __future__ import annotations

import msgspec
from quart import Blueprint, Response, request

from ingress.bodies import decode_body
from ingress.gateway import Submission
from ingress.native_local import (
    answer_here,
    anthropic_model,
    anthropic_models,
    estimate_tokens,
    estimated,
    gemini_model,
    gemini_models,
)
from ingress.respond import gateway, identity, json_response, relay
from schemas.errors import GatewayError
from schemas.native import (
    AnthropicTokenCount,
    GeminiTokenCount,
    anthropic_count_decoder,
    anthropic_decoder,
    gemini_batch_embed_decoder,
    gemini_count_decoder,
    gemini_decoder,
    gemini_embed_decoder,
)

native = Blueprint("native", __name__)

ANTHROPIC_HEADERS = ("anthropic-version", "anthropic-beta")
GEMINI_METHODS = ("generateContent", "streamGenerateContent", "countTokens", "embedContent",
                  "batchEmbedContents")


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


@native.post("/anthropic/v1/messages/count_tokens")
async def anthropic_count_tokens() -> Response:
    """`POST /v1/messages/count_tokens`: relayed to an anthropic route, or an estimate for
    a model with none (`ingress.native_local`)."""
    headers = protocol_headers(ANTHROPIC_HEADERS)

    def submission(body: bytes) -> Submission:
        count = decode_body(anthropic_count_decoder, body)
        gateway().bounds.count("messages", count.messages, "max_messages")
        gateway().bounds.count("tools", count.tools, "max_tools")
        return Submission("anthropic_count_tokens", count.model, body, headers=headers,
                          max_output_tokens=0)

    # Which answer depends on the body's model: read it only for a known caller, and only
    # once its bounds are checked (a relay checks both again: a cached key, one scan).
    await identity()
    peeked = await request.get_data(cache=True)  # (the edge has read it: no wait; kept for relay)
    assert isinstance(peeked, bytes)
    await gateway().bounds.check_body(peeked)
    model = _peek_model(peeked)
    if model and estimated(model, "anthropic_count_tokens"):
        return await answer_here(lambda body: AnthropicTokenCount(
            estimate_tokens(submission(body).body)))
    return await relay(submission)


@native.get("/anthropic/v1/models")
async def anthropic_models_list() -> Response:
    """`GET /v1/models`: the catalog's slugs that an anthropic route serves."""
    await identity()
    return json_response(anthropic_models())


@native.get("/anthropic/v1/models/<path:model_id>")
async def anthropic_models_get(model_id: str) -> Response:
    """`GET /v1/models/{model_id}`."""
    await identity()
    gateway().bounds.model(model_id, "model_id")
    return json_response(anthropic_model(model_id))


def _peek_model(body: bytes) -> str:
    """The body's `model`, if it is readable (else the relay's decoding says what is wrong)."""
    try:
        return model_peeker.decode(body).model
    except msgspec.DecodeError:
        return ""


class _Model(msgspec.Struct):
    model: str = ""


model_peeker = msgspec.json.Decoder(_Model)


# ── Gemini, under /gemini/v1beta/ and /gemini/v1/ alike (google-genai 3 defaults to v1) ──
@native.post("/gemini/v1beta/models/<path:target>")
@native.post("/gemini/v1/models/<path:target>")
async def gemini_method(target: str) -> Response:
    """`models/{model}:{method}` for every served method (GEMINI_METHODS)."""
    model, _, method = target.rpartition(":")
    if method not in GEMINI_METHODS or not model:
        raise GatewayError(404, "not_found", f"unknown Gemini method {method!r}; "
                           f"served: {', '.join(GEMINI_METHODS)}")
    model = model.removeprefix("models/")  # (a client that names the resource twice)
    match method:
        case "generateContent" | "streamGenerateContent":
            return await _generate(model, method == "streamGenerateContent")
        case "countTokens":
            return await _count_tokens(model)
        case _:
            return await _embed(model, batch=method == "batchEmbedContents")


async def _generate(model: str, stream: bool) -> Response:
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


async def _count_tokens(model: str) -> Response:
    def submission(body: bytes) -> Submission:
        count = decode_body(gemini_count_decoder, body)
        if count.contents is None and count.generateContentRequest is None:
            raise GatewayError(400, "invalid_request", "countTokens needs `contents` or "
                               "`generateContentRequest`", param="contents")
        gateway().bounds.count("contents", count.contents, "max_messages")
        return Submission("gemini_count_tokens", model, body, max_output_tokens=0)

    if estimated(model, "gemini_count_tokens"):
        return await answer_here(lambda body: GeminiTokenCount(
            estimate_tokens(submission(body).body)))
    return await relay(submission)


async def _embed(model: str, batch: bool) -> Response:
    def submission(body: bytes) -> Submission:
        if batch:
            embed = decode_body(gemini_batch_embed_decoder, body)
            gateway().bounds.count("requests", embed.requests, "max_inputs")
        else:
            decode_body(gemini_embed_decoder, body)
        return Submission("gemini_embed", model, body, max_output_tokens=0)

    return await relay(submission)


@native.get("/gemini/v1beta/models")
@native.get("/gemini/v1/models")
async def gemini_models_list() -> Response:
    """`GET models`: the catalog's slugs that a gemini route serves, as Model resources."""
    await identity()
    return json_response(gemini_models())


@native.get("/gemini/v1beta/models/<path:name>")
@native.get("/gemini/v1/models/<path:name>")
async def gemini_models_get(name: str) -> Response:
    """`GET models/{model}`."""
    await identity()
    gateway().bounds.model(name, "name")
    return json_response(gemini_model(name))
