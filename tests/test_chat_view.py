"""The view of an OpenAI chat request shared by the translating kinds (anthropic, gemini):
its one data-URL parser, its one status for a badly shaped part, its one log line for the
harmless fields that are not forwarded."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import msgspec
import pytest

from schemas.envelopes import Job
from schemas.errors import GatewayError
from schemas.providers import AnthropicProvider, GeminiProvider
from workers.providers._base import Adapter, Call
from workers.providers._chat_view import InlineData, parse_data_url
from workers.providers.anthropic import request as anthropic_request
from workers.providers.anthropic.adapter import AnthropicAdapter
from workers.providers.gemini import request as gemini_request
from workers.providers.gemini.adapter import GeminiAdapter

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
WHERE = "messages[0].content[1].image_url.url"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# ── the data-URL parser (RFC 2397: data:[<mediatype>][;base64],<data>) ─────────────
@pytest.mark.parametrize(("url", "expected"), [
    (f"data:image/png;base64,{PNG}", ("image/png", PNG)),
    ("data:application/pdf;name=a.pdf;base64,JVBERi0=", ("application/pdf", "JVBERi0=")),
    ("DATA:image/png;BASE64,AAAA", ("image/png", "AAAA")),  # scheme and token are case-insensitive
    ("data:image/png; base64 ,AAAA", ("image/png", "AAAA")),
    ("data:;base64,QQ==", ("text/plain", "QQ==")),  # the media type defaults to text/plain
    ("data:;charset=utf-8;base64,QQ==", ("text/plain", "QQ==")),  # parameters only: still text/plain
    ("data:image/png;base64,", ("image/png", "")),  # zero-length data is data
    ("data:,a%20b", ("text/plain", b64(b"a b"))),  # percent-encoded octets are base64-encoded
    ("data:text/plain;charset=utf-8,%C3%A9t%C3%A9", ("text/plain", b64("été".encode()))),
    ("data:image/png,raw", ("image/png", b64(b"raw"))),
    ("data:image/svg+xml,%3Csvg%2F%3E", ("image/svg+xml", b64(b"<svg/>"))),
])
def test_the_forms_rfc_2397_allows_are_parsed(url: str, expected: tuple[str, str]) -> None:
    assert parse_data_url(url, WHERE) == InlineData(*expected)


@pytest.mark.parametrize("url", ["https://example.com/cat.png", "gs://bucket/a.pdf",
                                 "data.png", "JVBERi0xLjQK", ""])
def test_other_urls_are_not_data_urls(url: str) -> None:
    assert parse_data_url(url, WHERE) is None


@pytest.mark.parametrize("url", [
    "data:image/png;base64",  # no comma: no data
    "data:image/png",
    "data:",
    "data:image/png;base64;charset=utf-8,AAAA",  # `base64` must come last
    "data:image/png;compressed,AAAA",  # a parameter is attribute=value
])
def test_malformed_data_urls_are_422_naming_the_field(url: str) -> None:
    with pytest.raises(GatewayError) as caught:
        parse_data_url(url, WHERE)
    error = caught.value
    assert (error.status, error.code, error.param) == (422, "validation_error", WHERE)
    assert error.details is not None and error.details["field"] == f"$.{WHERE}"


# ── one status for a badly shaped part, in both kinds ────────────────────────────
def _anthropic(body: bytes) -> Any:
    return anthropic_request.translate_request(body, "claude-x", AnthropicProvider(), stream=False)


def _gemini(body: bytes) -> Any:
    return gemini_request.translate_request(body)


TRANSLATORS: dict[str, Callable[[bytes], Any]] = {"anthropic": _anthropic, "gemini": _gemini}


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


def image(url: Any, **extra: Any) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url, **extra}}


@pytest.mark.parametrize("kind", TRANSLATORS)
@pytest.mark.parametrize(("messages", "field"), [
    ([{"role": "user", "content": [text("a"), image(7)]}], "$.messages[0].content[1].image_url.url"),
    ([{"role": "user", "content": [text("a"), image("data:image/png;base64")]}],
     "$.messages[0].content[1].image_url.url"),
    ([{"role": "user", "content": [text("a"), {"type": "file", "file": {
        "file_data": "data:application/pdf"}}]}], "$.messages[0].content[1].file.file_data"),
    ([{"role": "user", "content": [{"type": "text", "text": ["not", "text"]}]}],
     "$.messages[0].content[0].text"),
    ([{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f"}}]}],
     "$.messages[1].tool_calls[0].function"),
    ([{"role": "user", "content": "x"}, {"role": "tool", "tool_call_id": 3, "content": "1"}],
     "$.messages[1].tool_call_id"),
])
def test_a_badly_shaped_part_is_the_same_422_for_every_kind(kind: str, messages: list[Any],
                                                            field: str) -> None:
    with pytest.raises(GatewayError) as caught:
        TRANSLATORS[kind](json.dumps({"model": "m", "messages": messages}).encode())
    error = caught.value
    assert (error.status, error.code, error.param) == (422, "validation_error", field.removeprefix("$."))
    assert error.details is not None and error.details["field"] == field
    assert field in error.message


@pytest.mark.parametrize("kind", TRANSLATORS)
@pytest.mark.parametrize("body", [b"[]", b'"text"', b"not json"])
def test_a_body_that_is_not_an_object_is_422_at_the_root(kind: str, body: bytes) -> None:
    with pytest.raises(GatewayError) as caught:
        TRANSLATORS[kind](body)
    assert (caught.value.status, caught.value.code, caught.value.param) == (422, "validation_error", None)
    assert caught.value.details is not None and caught.value.details["field"] == "$"


@pytest.mark.parametrize(("kind", "expected"), [
    ("anthropic", {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                               "data": b64(b"raw")}}),
    ("gemini", {"inlineData": {"mimeType": "image/png", "data": b64(b"raw")}}),
])
def test_both_kinds_read_a_percent_encoded_data_url_alike(kind: str, expected: Any) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": [image("data:image/png,raw")]}]}
    sent = msgspec.to_builtins(TRANSLATORS[kind](json.dumps(body).encode()).request)
    first = sent["messages"][0]["content"][0] if kind == "anthropic" else sent["contents"][0]["parts"][0]
    assert first == expected


# ── one log line for the harmless fields not forwarded, in both kinds ────────────
ANSWERS: dict[str, dict[str, Any]] = {
    "anthropic": {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
                  "content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn",
                  "usage": {"input_tokens": 1, "output_tokens": 1}},
    "gemini": {"candidates": [{"content": {"role": "model", "parts": [{"text": "hi"}]},
                               "finishReason": "STOP", "index": 0}],
               "usageMetadata": {"promptTokenCount": 1, "candidatesTokenCount": 1,
                                 "totalTokenCount": 2}},
}


def _adapter(kind: str, http: httpx.AsyncClient) -> Adapter:
    if kind == "anthropic":
        return AnthropicAdapter("claude-east", AnthropicProvider(base_url="http://upstream"), http)
    return GeminiAdapter("gemini-east", GeminiProvider(base_url="http://upstream"), http)


@pytest.mark.parametrize("kind", TRANSLATORS)
async def test_harmless_fields_are_logged_once_the_same_way_for_every_kind(
        kind: str, switchboard_logs: pytest.LogCaptureFixture) -> None:
    sent: list[dict[str, Any]] = []

    def upstream(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        return httpx.Response(200, json=ANSWERS[kind])

    body = {"model": "slug", "store": True, "metadata": {"k": "v"}, "prompt_cache_key": None,
            "messages": [{"role": "user", "name": "ann", "content": [
                text("what is this?"), image(f"data:image/png;base64,{PNG}", detail="low")]}]}
    job = Job(request_id="req-1", org="o", project="p", key_id="k", model="slug", routes=[],
              body=json.dumps(body).encode(), stream=False, reply_to="", deadline=time.time() + 60)
    async with httpx.AsyncClient(transport=httpx.MockTransport(upstream)) as http:
        adapter = _adapter(kind, http)
        await adapter.complete(Call(job, "model-x"))
    assert not {"store", "metadata", "prompt_cache_key"} & set(sent[0])
    lines = [json.loads(r.getMessage()) for r in switchboard_logs.records if r.name == "switchboard"]
    logged = [line for line in lines if line.get("event") == "fields_not_forwarded"]
    assert len(logged) == 1
    assert {k: v for k, v in logged[0].items() if k != "ts"} == {
        "event": "fields_not_forwarded", "request_id": "req-1",
        "provider": "claude-east" if kind == "anthropic" else "gemini-east",
        "fields": ["metadata", "store", "messages[].name", "image_url.detail"]}


@pytest.mark.parametrize("kind", TRANSLATORS)
def test_nothing_to_report_when_only_translated_fields_are_set(kind: str) -> None:
    body = {"model": "m", "temperature": 0.5, "messages": [{"role": "user", "content": "hi"}]}
    assert TRANSLATORS[kind](json.dumps(body).encode()).ignored == []
