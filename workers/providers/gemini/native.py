"""Gemini's own countTokens and embedding methods, relayed for the native endpoints.

    gemini_count_tokens  models/{m}:countTokens        {"contents"} | {"generateContentRequest"}
    gemini_embed         models/{m}:embedContent       {"content", ...}
                         models/{m}:batchEmbedContents {"requests": [{"model", "content"}, ...]}

The client's body goes upstream untouched but for the model names it carries: a
`generateContentRequest` and every entry of a batch name the model of the URL
(`models/{slug}`), which becomes the route's upstream model. Which embedding method was
called is told by the body (only a batch has `requests`). Answers are relayed byte for
byte.

Usage: countTokens is free at Google (nothing is metered but the request); embedding
answers carry no token counts, so, as for OpenAI embeddings on this kind, the prompt
tokens metered are the estimate of `embed.estimate_tokens` (about four characters a
token). Wire format: https://ai.google.dev/api/tokens, https://ai.google.dev/api/embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from schemas.chat import Usage, raw_object_decoder
from schemas.errors import GatewayError
from schemas.gemini import resource_name
from workers.providers.gemini.embed import estimate_tokens

_encode = msgspec.json.Encoder().encode


class _TextPart(msgspec.Struct):
    text: str = ""


class _Content(msgspec.Struct):
    parts: list[_TextPart] = []


class _Entry(msgspec.Struct):
    content: _Content = msgspec.field(default_factory=_Content)


_entry_decoder = msgspec.json.Decoder(_Entry)


@dataclass(frozen=True, slots=True)
class NativeCall:
    """One relayed method: its name in the URL, the body for upstream, the usage to meter."""

    method: str
    body: bytes
    usage: Usage


def _fields(body: bytes) -> dict[str, msgspec.Raw]:
    try:
        return raw_object_decoder.decode(body)
    except msgspec.DecodeError:
        raise GatewayError(400, "invalid_json", "the body is not a JSON object") from None


def _with_model(raw: msgspec.Raw, model: str) -> msgspec.Raw:
    """A request object with its `model` set to the route's resource name."""
    fields = _fields(bytes(raw))
    fields["model"] = msgspec.Raw(_encode(resource_name(model)))
    return msgspec.Raw(_encode(fields))


def count_tokens_call(body: bytes, model: str) -> NativeCall:
    """`countTokens` for the client's body, its generateContentRequest aimed at `model`."""
    fields = _fields(body)
    if "generateContentRequest" in fields:
        fields["generateContentRequest"] = _with_model(fields["generateContentRequest"], model)
        body = _encode(fields)
    return NativeCall("countTokens", body, Usage())


def _texts(raw: msgspec.Raw) -> list[str]:
    try:
        entry = _entry_decoder.decode(raw)
    except msgspec.DecodeError:  # validated at the edge; a part we do not read counts nothing
        return []
    return ["".join(part.text for part in entry.content.parts)]


def embed_call(body: bytes, model: str) -> NativeCall:
    """`embedContent`, or `batchEmbedContents` when the body holds `requests`."""
    fields = _fields(body)
    if "requests" not in fields:
        tokens = estimate_tokens(_texts(msgspec.Raw(body)))
        if "model" in fields:
            body = bytes(_with_model(msgspec.Raw(body), model))
        return NativeCall("embedContent", body, Usage(tokens, 0, tokens))
    try:
        entries = msgspec.json.decode(fields["requests"], type=list[msgspec.Raw])
    except (msgspec.DecodeError, msgspec.ValidationError):
        raise GatewayError(400, "invalid_request", "`requests` must be a list of "
                           "EmbedContentRequest objects", param="requests") from None
    texts = [text for entry in entries for text in _texts(entry)]
    fields["requests"] = msgspec.Raw(_encode([_with_model(entry, model) for entry in entries]))
    tokens = estimate_tokens(texts)
    return NativeCall("batchEmbedContents", _encode(fields), Usage(tokens, 0, tokens))
