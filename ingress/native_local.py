"""What the gateway answers itself on the native paths, in each API's own shape.

    GET /gemini/{v1,v1beta}/models[/{model}]   the catalog as Gemini `Model` resources
    GET /anthropic/v1/models[/{id}]            the catalog as Anthropic `ModelInfo` objects
    token counts on models no route of the API's kind serves: an estimate

Lists hold the catalog slugs with a route that serves the API (`schemas.kinds`), so a
key sees what it may call there; a get also resolves open-routed names. The estimate,
documented in the README, is about four characters a token (Google's and Anthropic's own
rule of thumb) of every string of the request but model names, roles, types, MIME types
and inline (base64) data, at least 1: close enough to size a prompt, never Google's or
Anthropic's tokenizer count. Nothing goes upstream, so nothing is metered.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Callable
from typing import Any

import msgspec
from quart import Response, request

from ingress.respond import gateway, identity, json_response
from schemas.config import ModelConfig
from schemas.errors import GatewayError
from schemas.native import (
    AnthropicModelInfo,
    AnthropicModelList,
    GeminiModel,
    GeminiModelList,
)

CHARS_PER_TOKEN = 4
_NOT_TEXT = frozenset({"model", "role", "type", "mimeType", "mime_type", "media_type", "data",
                       "fileUri", "file_uri", "url", "tool_use_id", "id"})
# The Gemini methods each native endpoint serves (countTokens: every listed model has it,
# relayed or estimated).
GEMINI_METHODS = {"gemini_generate": ("generateContent", "streamGenerateContent"),
                  "gemini_embed": ("embedContent", "batchEmbedContents")}


# ── token-count estimates ────────────────────────────────────────────────────────
def _chars(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(_chars(item) for item in value)
    if isinstance(value, dict):
        return sum(_chars(item) for key, item in value.items() if key not in _NOT_TEXT)
    return 0


def estimate_tokens(body: bytes) -> int:
    """Estimated prompt tokens of a native request body (validated before: a JSON object)."""
    return max(1, math.ceil(_chars(msgspec.json.decode(body)) / CHARS_PER_TOKEN))


def serves(model: str, endpoint: str) -> bool:
    """Whether `model` has a route here that serves `endpoint`."""
    try:
        gateway().catalog.routes(model, endpoint=endpoint)
    except GatewayError:
        return False
    return True


def estimated(model: str, endpoint: str) -> bool:
    """A token count of `model` is estimated here: it has chat routes, none of `endpoint`'s
    kind. (Otherwise it is relayed, or the relay says why it cannot be: model_not_found...)"""
    return not serves(model, endpoint) and serves(model, "chat")


async def answer_here(answer: Callable[[bytes], msgspec.Struct]) -> Response:
    """Authenticate and bound the body as a relay would, then answer `answer(body)` with
    no job (it validates the body: 422 / 400 as usual)."""
    caller = await identity()
    if caller.role == "operator":
        raise GatewayError(403, "forbidden", "an operator key manages the gateway and serves "
                           "no inference: use a key of an org (member or admin)")
    body = await request.get_data(cache=False)
    assert isinstance(body, bytes)
    await gateway().bounds.check_body(body)
    return json_response(answer(body))


# ── model lists ──────────────────────────────────────────────────────────────────
def listed(endpoints: tuple[str, ...]) -> list[ModelConfig]:
    """The catalog's models with a route serving one of `endpoints`, in catalog order."""
    return [m for m in gateway().catalog.models.values()
            if any(serves(m.slug, endpoint) for endpoint in endpoints)]


def _page_bound(name: str, default: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= 1000:
        raise GatewayError(400, "invalid_parameter", f"`{name}` must be an integer from 1 to 1000",
                           param=name)
    return value


def _display(slug: str) -> str:
    model = gateway().catalog.models.get(slug)
    return model.name if model and model.name else slug


def gemini_model(slug: str) -> GeminiModel:
    """The Model resource of a slug that a Gemini route serves (404 otherwise)."""
    endpoints = [e for e in GEMINI_METHODS if serves(slug, e)]
    if not endpoints:
        raise GatewayError(404, "model_not_found",
                           f"model {slug!r} has no route to a provider of kind gemini here; "
                           "GET models lists those that have")
    methods = [m for e in endpoints for m in GEMINI_METHODS[e]]
    methods.insert(1 if "generateContent" in methods else 0, "countTokens")
    return GeminiModel(name=f"models/{slug}", base_model_id=slug, version="switchboard",
                       display_name=_display(slug),
                       description=f"{slug!r}, served by this Switchboard gateway",
                       supported_generation_methods=methods)


def gemini_models() -> GeminiModelList:
    """`GET models?pageSize&pageToken`: the page token is the offset of the next page."""
    size = _page_bound("pageSize", 50)
    token = request.args.get("pageToken") or "0"
    start = int(token) if token.isdigit() else -1
    models = listed(tuple(GEMINI_METHODS))
    if not 0 <= start <= len(models):
        raise GatewayError(400, "invalid_parameter", "`pageToken` is not one this list gave",
                           param="pageToken")
    page = models[start:start + size]
    following = start + size
    return GeminiModelList([gemini_model(m.slug) for m in page],
                           str(following) if following < len(models) else "")


def _created() -> str:
    """The catalog's load time, RFC 3339 (the gateway knows no release dates)."""
    when = datetime.datetime.fromtimestamp(gateway().catalog.created, datetime.UTC)
    return when.isoformat().replace("+00:00", "Z")


def anthropic_model(model_id: str) -> AnthropicModelInfo:
    """The ModelInfo of a slug that an Anthropic route serves (404 otherwise)."""
    if not serves(model_id, "anthropic_messages"):
        raise GatewayError(404, "model_not_found",
                           f"model {model_id!r} has no route to a provider of kind anthropic "
                           "here; GET /anthropic/v1/models lists those that have")
    return AnthropicModelInfo(model_id, _created(), _display(model_id))


def anthropic_models() -> AnthropicModelList:
    """`GET /v1/models?limit&after_id&before_id`, paged as Anthropic pages it."""
    limit = _page_bound("limit", 20)
    ids = [m.slug for m in listed(("anthropic_messages",))]
    after, before = request.args.get("after_id"), request.args.get("before_id")
    for name, cursor in (("after_id", after), ("before_id", before)):
        if cursor is not None and cursor not in ids:
            raise GatewayError(400, "invalid_parameter", f"`{name}` {cursor!r} is not a listed "
                               "model", param=name)
    if before is not None:
        end = ids.index(before)
        page, more = ids[max(0, end - limit):end], end - limit > 0
    else:
        start = ids.index(after) + 1 if after is not None else 0
        page, more = ids[start:start + limit], start + limit < len(ids)
    return AnthropicModelList([anthropic_model(i) for i in page], more,
                              page[0] if page else None, page[-1] if page else None)
