"""The Gemini API as google-genai 3 calls it, with its DEFAULT api version (`/gemini/v1/...`,
no http_options forcing v1beta): generateContent, countTokens (relayed on gemini routes,
estimated elsewhere), embed_content (single and batch: the SDK always calls
batchEmbedContents; REST clients call embedContent), models.list/get from the catalog,
and the error shapes (Google status labels, the 401 naming the header, `?key=`)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import httpx
import pytest
import trio
from google import genai
from google.genai import errors as genai_errors

from schemas.gemini import google_status
from tests.conftest import TLS, KindGateway, KindGateways
from tests.fakes.gemini_upstream import FakeGemini, embedding_of
from tests.kinds import CASES

KEY = CASES["gemini"].credential
UPSTREAM = CASES["gemini"].upstream_model
T = TypeVar("T")


@pytest.fixture
async def gateway(kind_gateway: KindGateways) -> KindGateway:
    """`gem-test` and `gem-embed` on the fake Gemini API; `echo` on a mock (chat only)."""
    return await kind_gateway("gemini", slug="gem-test", echo=True, models=[
        {"slug": "gem-embed", "name": "Embedder",
         "routes": [{"provider": "primary", "model": "gemini-embedding-001"}]}])


def sdk(gateway: KindGateway) -> genai.Client:
    """google-genai as a user sets it up for a gateway: only the key and the base URL."""
    return genai.Client(api_key=gateway.secret, http_options=genai.types.HttpOptions(
        base_url=gateway.base_url + "/gemini", retry_options=None))


async def run(call: Callable[[], T]) -> T:
    """The SDK's sync client, off the trio loop (its async client is asyncio's)."""
    return await trio.to_thread.run_sync(call)


async def raw(gateway: KindGateway, method: str, path: str, **kwargs: Any) -> httpx.Response:
    async with httpx.AsyncClient(verify=TLS, timeout=10) as http:
        return await http.request(method, gateway.base_url + path, **kwargs)


def test_the_sdk_default_is_v1() -> None:
    """What this file pins: google-genai calls /v1/, not /v1beta/, unless told otherwise."""
    from google.genai import _api_client

    assert _api_client.GOOGLE_AI_API_DEFAULT_VERSION == "v1"


async def test_generate_content_on_the_default_version(gateway: KindGateway,
                                                       fake: FakeGemini) -> None:
    client = sdk(gateway)
    answer = await run(lambda: client.models.generate_content(model="gem-test",
                                                              contents="four little words here"))
    assert answer.text == "four little words here"
    (seen,) = fake.requests
    assert seen.path == f"/v1beta/models/{UPSTREAM}:generateContent"
    assert seen.headers["x-goog-api-key"] == KEY


async def test_stream_generate_content_on_the_default_version(gateway: KindGateway,
                                                              fake: FakeGemini) -> None:
    client = sdk(gateway)
    pieces = await run(lambda: [c.text for c in client.models.generate_content_stream(
        model="gem-test", contents="two words")])
    assert "".join(p or "" for p in pieces) == "two words"
    assert fake.requests[0].path == f"/v1beta/models/{UPSTREAM}:streamGenerateContent"
    assert fake.requests[0].query == {"alt": ["sse"]}


async def test_count_tokens_is_relayed_on_gemini_routes(gateway: KindGateway,
                                                        fake: FakeGemini) -> None:
    client = sdk(gateway)
    counted = await run(lambda: client.models.count_tokens(model="gem-test",
                                                           contents="one two three"))
    assert counted.total_tokens == 3  # the fake counts words
    (seen,) = fake.requests
    assert seen.path == f"/v1beta/models/{UPSTREAM}:countTokens"
    assert seen.body == {"contents": [{"parts": [{"text": "one two three"}], "role": "user"}]}
    assert await gateway.usage() == {"tokens": 0, "prompt_tokens": 0, "completion_tokens": 0,
                                     "requests": 1}  # counting is free upstream


async def test_count_tokens_of_a_generate_request_names_the_upstream_model(
        gateway: KindGateway, fake: FakeGemini) -> None:
    body = {"generateContentRequest": {"model": "models/gem-test", "contents": [
        {"role": "user", "parts": [{"text": "a b c d"}]}]}}
    response = await raw(gateway, "POST", "/gemini/v1beta/models/gem-test:countTokens",
                         json=body, headers={"x-goog-api-key": gateway.secret})
    assert response.status_code == 200 and response.json()["totalTokens"] == 4
    assert response.content == fake.answers[0]
    assert fake.requests[0].body["generateContentRequest"]["model"] == f"models/{UPSTREAM}"


async def test_count_tokens_is_estimated_on_other_kinds(gateway: KindGateway,
                                                        fake: FakeGemini) -> None:
    client = sdk(gateway)
    text = "x" * 40  # forty characters: ten tokens by the four-characters rule
    counted = await run(lambda: client.models.count_tokens(model="echo", contents=text))
    assert counted.total_tokens == 10
    assert fake.requests == []


async def test_embed_content_single_and_batch(gateway: KindGateway, fake: FakeGemini) -> None:
    client = sdk(gateway)
    one = await run(lambda: client.models.embed_content(model="gem-embed", contents="hello"))
    assert one.embeddings is not None
    assert [e.values for e in one.embeddings] == [embedding_of("hello")]
    many = await run(lambda: client.models.embed_content(model="gem-embed",
                                                         contents=["a", "b", "c"]))
    assert many.embeddings is not None
    assert [e.values for e in many.embeddings] == [embedding_of(t) for t in "abc"]
    assert [r.path for r in fake.requests] == [
        "/v1beta/models/gemini-embedding-001:batchEmbedContents"] * 2
    assert {e["model"] for e in fake.requests[1].body["requests"]} == {
        "models/gemini-embedding-001"}  # the route's model, not the slug the client named
    assert gateway.secret not in json.dumps(fake.requests[1].headers)


async def test_embed_content_rest(gateway: KindGateway, fake: FakeGemini) -> None:
    body = {"content": {"parts": [{"text": "hello world"}]}, "outputDimensionality": 4}
    response = await raw(gateway, "POST", "/gemini/v1/models/gem-embed:embedContent", json=body,
                         headers={"x-goog-api-key": gateway.secret})
    assert response.status_code == 200
    assert response.json() == {"embedding": {"values": embedding_of("hello world", 4)}}
    assert fake.requests[0].body == body
    usage = await gateway.usage()
    assert usage["prompt_tokens"] == 3 and usage["requests"] == 1  # ceil(11 / 4), estimated


async def test_models_list_and_get(gateway: KindGateway, fake: FakeGemini) -> None:
    client = sdk(gateway)
    models = await run(lambda: list(client.models.list()))
    # `echo` is on the mock, which answers generateContent too.
    assert [m.name for m in models] == ["models/gem-test", "models/gem-embed", "models/echo"]
    embed = await run(lambda: client.models.get(model="gem-embed"))
    assert embed.name == "models/gem-embed" and embed.display_name == "Embedder"
    assert embed.supported_actions is not None and "countTokens" in embed.supported_actions
    assert {"generateContent", "embedContent", "batchEmbedContents"} <= set(embed.supported_actions)
    with pytest.raises(genai_errors.ClientError) as caught:
        await run(lambda: client.models.get(model="nope"))
    assert caught.value.code == 404 and caught.value.status == "NOT_FOUND"
    assert fake.requests == []


async def test_models_list_pages(gateway: KindGateway) -> None:
    key = {"x-goog-api-key": gateway.secret}
    first = (await raw(gateway, "GET", "/gemini/v1beta/models?pageSize=1", headers=key)).json()
    assert [m["name"] for m in first["models"]] == ["models/gem-test"]
    token = first["nextPageToken"]
    second = (await raw(gateway, "GET", f"/gemini/v1beta/models?pageSize=1&pageToken={token}",
                        headers=key)).json()
    assert [m["name"] for m in second["models"]] == ["models/gem-embed"]
    token = second["nextPageToken"]
    third = (await raw(gateway, "GET", f"/gemini/v1beta/models?pageSize=1&pageToken={token}",
                       headers=key)).json()
    assert [m["name"] for m in third["models"]] == ["models/echo"]  # (the mock's)
    assert "nextPageToken" not in third
    bad = await raw(gateway, "GET", "/gemini/v1/models?pageToken=zz", headers=key)
    assert bad.status_code == 400 and bad.json()["error"]["status"] == "INVALID_ARGUMENT"


@pytest.mark.parametrize("version", ["v1", "v1beta"])
async def test_405_and_401_in_googles_shape(gateway: KindGateway, version: str) -> None:
    wrong = await raw(gateway, "DELETE", f"/gemini/{version}/models/gem-test:generateContent",
                      headers={"x-goog-api-key": gateway.secret})
    assert wrong.status_code == 405
    assert wrong.json()["error"]["status"] == "UNIMPLEMENTED"
    assert wrong.json()["error"]["code"] == 405
    missing = await raw(gateway, "GET", f"/gemini/{version}/models")
    error = missing.json()["error"]
    assert missing.status_code == 401 and error["status"] == "UNAUTHENTICATED"
    assert "x-goog-api-key" in error["message"] and "?key=" in error["message"]


async def test_key_query_parameter_is_an_access_key(gateway: KindGateway, fake: FakeGemini,
                                                    switchboard_logs: pytest.LogCaptureFixture,
                                                    ) -> None:
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    response = await raw(gateway, "POST",
                         f"/gemini/v1/models/gem-test:generateContent?key={gateway.secret}",
                         json=body)
    assert response.status_code == 200
    assert fake.requests[0].query == {}  # the key never goes upstream
    listed = await raw(gateway, "GET", f"/gemini/v1beta/models?key={gateway.secret}")
    assert listed.status_code == 200
    refused = await raw(gateway, "GET", "/gemini/v1beta/models?key=sk-wrong")
    assert refused.status_code == 401
    # Only on Gemini paths: an OpenAI path does not read `?key=`.
    openai_path = await raw(gateway, "GET", f"/v1/models?key={gateway.secret}")
    assert openai_path.status_code == 401
    ours = [r.getMessage() for r in switchboard_logs.records
            if r.name.startswith(("switchboard", "hypercorn"))]
    assert ours and not any(gateway.secret in line for line in ours)  # (the test's own httpx logs it)


def test_google_status_labels() -> None:
    assert [google_status(s) for s in (400, 401, 403, 404, 405, 409, 413, 422, 429, 500, 502,
                                       503, 504)] == [
        "INVALID_ARGUMENT", "UNAUTHENTICATED", "PERMISSION_DENIED", "NOT_FOUND", "UNIMPLEMENTED",
        "ABORTED", "INVALID_ARGUMENT", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "INTERNAL",
        "UNAVAILABLE", "UNAVAILABLE", "DEADLINE_EXCEEDED"]
    assert google_status(418) == "FAILED_PRECONDITION" and google_status(507) == "INTERNAL"


def test_the_estimate_counts_text_not_names_or_inline_data() -> None:
    from ingress.native_local import estimate_tokens

    body = {"model": "m" * 400, "contents": [{"role": "user", "parts": [
        {"text": "12345678"}, {"inlineData": {"mimeType": "image/png", "data": "A" * 4000}}]}]}
    assert estimate_tokens(json.dumps(body).encode()) == 2  # eight characters of text
    assert estimate_tokens(b'{"contents": []}') == 1  # never 0
