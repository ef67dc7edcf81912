"""The `gemini` kind's native relay (`/gemini/v1beta/models/{slug}:generateContent` and
`:streamGenerateContent`) and its OpenAI embeddings, end to end over real HTTP through
ingress, Redis and a worker against the fake Gemini API; plus a few adapter-level cases
that need an upstream no fake scenario produces."""

from __future__ import annotations

import base64
import json
import math
import struct
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
import trio

from schemas.config import Route
from schemas.envelopes import Job
from schemas.errors import GatewayError
from schemas.providers import GeminiProvider
from tests.conftest import TLS, Gateway, KindGateway, KindGateways, make_config, start_gateway
from tests.fakes.gemini_upstream import Behavior, FakeGemini, embedding_of
from tests.kinds import CASES
from workers.providers._base import Call, UpstreamFailure
from workers.providers.gemini import GeminiAdapter
from workers.providers.gemini.embed import plan_embeddings

KEY = CASES["gemini"].credential
NATIVE = {
    "contents": [{"role": "user", "parts": [{"text": "four little words here"}]}],
    "safetySettings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}],
    "generationConfig": {"temperature": 0.1, "thinkingConfig": {"thinkingBudget": 0}},
}


@pytest.fixture
async def gateway(kind_gateway: KindGateways) -> KindGateway:
    """`gem-test` and `gem-embed` routed to the fake Gemini API (provider `primary`, one
    retry); `echo` to a mock."""
    return await kind_gateway("gemini", slug="gem-test", echo=True, models=[
        {"slug": "gem-embed", "routes": [{"provider": "primary", "model": "gemini-embedding-001"}]}])


async def native(gateway: Gateway, slug: str, body: bytes, *, stream: bool = False) -> httpx.Response:
    """A native call the way Google's SDKs make it: the key in `x-goog-api-key`."""
    method = "streamGenerateContent?alt=sse" if stream else "generateContent"
    async with httpx.AsyncClient(verify=TLS, timeout=10) as http:
        return await http.post(f"{gateway.base_url}/gemini/v1beta/models/{slug}:{method}",
                               content=body, headers={"x-goog-api-key": gateway.secret,
                                                      "content-type": "application/json"})


def sse_payloads(sent: bytes) -> list[bytes]:
    """The data of each event the fake sent (`data: <json>\\r\\n\\r\\n` each)."""
    return [event.removeprefix(b"data: ") for event in sent.split(b"\r\n\r\n") if event]


# ── native generateContent ───────────────────────────────────────────────────────
async def test_native_generate_relays_both_bodies_as_they_are(gateway: Gateway,
                                                             fake: FakeGemini) -> None:
    sent = json.dumps(NATIVE, indent=1).encode()  # odd formatting: it must arrive byte for byte
    response = await native(gateway, "gem-test", sent)
    assert response.status_code == 200 and response.headers["x-request-id"].startswith("req_")
    (seen,) = fake.requests
    assert seen.path == "/v1beta/models/gemini-2.5-flash:generateContent" and seen.query == {}
    assert seen.raw == sent
    assert seen.headers["x-goog-api-key"] == KEY
    assert gateway.secret not in json.dumps(seen.headers)
    assert response.content == fake.answers[0]  # the upstream body, untouched
    assert response.json()["candidates"][0]["content"]["parts"] == [{"text": "four little words here"}]
    assert await gateway.usage() == {"tokens": 8, "prompt_tokens": 4, "completion_tokens": 4,
                                     "requests": 1}


async def test_native_stream_relays_every_event_in_order_and_nothing_after(
        gateway: Gateway, fake: FakeGemini) -> None:
    fake.then(Behavior(text="Hello there world", chunks=["Hello", " there", " world"]))
    response = await native(gateway, "gem-test", json.dumps(NATIVE).encode(), stream=True)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    (seen,) = fake.requests
    assert seen.path == "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    assert seen.query == {"alt": ["sse"]} and seen.body == NATIVE
    upstream = sse_payloads(fake.answers[0])
    assert len(upstream) == 3
    assert response.content == b"".join(b"data: " + p + b"\n\n" for p in upstream)
    assert json.loads(upstream[-1])["candidates"][0]["finishReason"] == "STOP"
    assert await gateway.usage() == {"tokens": 7, "prompt_tokens": 4, "completion_tokens": 3,
                                     "requests": 1}


async def test_native_stream_without_finish_reason_ends_with_an_error_event(
        gateway: Gateway, fake: FakeGemini) -> None:
    fake.then(Behavior(chunks=["a", " b", " c"], unfinished=True, chunk_delay_s=0.05))
    response = await native(gateway, "gem-test", json.dumps(NATIVE).encode(), stream=True)
    events = [e.removeprefix(b"data: ") for e in response.content.split(b"\n\n") if e]
    assert events[:-1] == sse_payloads(fake.answers[0])  # what was relayed before the cut
    error = json.loads(events[-1])["error"]  # in Google's error shape
    assert (error["code"], error["status"]) == (502, "UNAVAILABLE")
    assert error["details"][0]["reason"] == "upstream_error"
    assert "ended the stream before the answer was complete" in error["message"]
    assert len(fake.requests) == 1  # output had begun: no retry
    # Metered with Gemini's own figures from the last event relayed (4 prompt words, 4 answer words).
    assert await gateway.usage() == {"tokens": 8, "prompt_tokens": 4, "completion_tokens": 4,
                                     "requests": 1}


@pytest.mark.parametrize("stream", [False, True])
async def test_native_rate_limit_is_502_with_details(gateway: Gateway, fake: FakeGemini,
                                                     stream: bool) -> None:
    limited = Behavior(status=429, error_status="RESOURCE_EXHAUSTED",
                       message=f"Quota exceeded for key {KEY}")
    fake.then(limited, limited)
    response = await native(gateway, "gem-test", json.dumps(NATIVE).encode(), stream=stream)
    assert response.status_code == 502
    error = response.json()["error"]  # in Google's error shape, the gateway's code inside
    assert (error["code"], error["status"]) == (502, "UNAVAILABLE")
    assert error["details"][0]["reason"] == "upstream_error"
    assert error["details"][0]["metadata"] == {"provider": "primary", "status": "429"}
    assert KEY not in response.text
    assert len(fake.requests) == 2  # retried once (max_retries = 1), then given up
    assert await gateway.usage() == {}


async def test_native_request_for_a_slug_without_gemini_route_is_400(
        gateway: Gateway, fake: FakeGemini, nursery: trio.Nursery, redis_url: str) -> None:
    # Only an openai-kind route (the mock answers the native API, so it cannot stand in here).
    other = await start_gateway(nursery, make_config(
        redis_url, {"oa": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1"}},
        [{"slug": "gpt-only", "routes": [{"provider": "oa", "model": "m"}]}]))
    response = await native(other, "gpt-only", json.dumps(NATIVE).encode())
    assert response.status_code == 400
    assert response.json()["error"]["details"][0]["reason"] == "no_provider"
    assert response.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert "gemini" in response.json()["error"]["message"]
    assert fake.requests == []


@pytest.mark.parametrize("body", [{"generationConfig": {"temperature": 0.5}}, {"contents": []}])
async def test_malformed_native_body_is_422(gateway: Gateway, fake: FakeGemini,
                                            body: dict[str, Any]) -> None:
    response = await native(gateway, "gem-test", json.dumps(body).encode())
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["reason"] == "validation_error"
    assert response.json()["error"]["code"] == 422
    assert "contents" in response.json()["error"]["message"]
    assert fake.requests == []


# ── native relay, adapter level ──────────────────────────────────────────────────
def job(body: bytes, *, endpoint: str = "gemini_generate") -> Job:
    return Job(request_id="r", org="o", project="p", key_id="k", model="gem-test",
               routes=[Route("gem", "gemini-2.5-flash")], body=body, stream=True,
               reply_to="c", deadline=0.0, endpoint=endpoint)  # type: ignore[arg-type]


async def relay_stream(upstream: bytes) -> tuple[list[bytes], Any]:
    """Run native_stream against an upstream that answers `upstream` as its SSE body."""
    async def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=upstream, headers={"content-type": "text/event-stream"})

    emitted: list[bytes] = []
    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
        adapter = GeminiAdapter("gem", GeminiProvider(base_url="http://up/v1beta"), http)
        try:
            usage = await adapter.native_stream(Call(job(b"{}"), "gemini-2.5-flash"),
                                                lambda payload, event="": emitted.append(payload))
        except UpstreamFailure as failure:
            return emitted, failure
    return emitted, usage


async def test_native_stream_keeps_a_multi_line_data_field_and_the_ingress_frames_it() -> None:
    from ingress.relay import sse_event
    from workers.providers._sse import iter_events

    event = {"candidates": [{"content": {"parts": [{"text": "hi"}]}, "finishReason": "STOP"}],
             "usageMetadata": {"promptTokenCount": 2, "candidatesTokenCount": 1, "thoughtsTokenCount": 4}}
    pretty = json.dumps(event, indent=1).encode()
    upstream = b"".join(b"data: " + line + b"\n" for line in pretty.split(b"\n")) + b"\n"
    emitted, usage = await relay_stream(upstream)
    (payload,) = emitted
    assert json.loads(payload) == event
    framed = sse_event(payload)  # as the ingress writes it: one `data:` line per line

    async def one(data: bytes) -> AsyncIterator[bytes]:
        yield data

    relayed = [e.data async for e in iter_events(one(framed))]
    assert [json.loads(data) for data in relayed] == [event]
    assert (usage.prompt_tokens, usage.completion_tokens) == (2, 5)  # thoughts count as completion


async def test_native_stream_needs_every_candidate_finished() -> None:
    first = {"candidates": [{"index": 0, "content": {"parts": [{"text": "a"}]}},
                            {"index": 1, "content": {"parts": [{"text": "b"}]}}]}
    only_one = {"candidates": [{"index": 0, "finishReason": "STOP"}]}
    upstream = b"".join(b"data: " + json.dumps(e).encode() + b"\r\n\r\n" for e in (first, only_one))
    emitted, failure = await relay_stream(upstream)
    assert len(emitted) == 2
    assert isinstance(failure, UpstreamFailure) and failure.code == "upstream_error"
    assert "before the answer was complete" in failure.message
    blocked = b'data: {"promptFeedback": {"blockReason": "SAFETY"}}\r\n\r\n'
    emitted, usage = await relay_stream(blocked)
    assert len(emitted) == 1 and not isinstance(usage, UpstreamFailure)


# ── OpenAI embeddings on the gemini kind ─────────────────────────────────────────
async def test_embedding_of_one_input_uses_embed_content(gateway: Gateway,
                                                         fake: FakeGemini) -> None:
    # The SDK asks for base64 when not told otherwise, and decodes it back to floats.
    result = await gateway.client().embeddings.create(model="gem-embed", input="hello world")
    assert result.model == "gem-embed" and result.object == "list"
    assert [d.index for d in result.data] == [0]
    assert result.data[0].embedding == embedding_of("hello world")
    (seen,) = fake.requests
    assert seen.path == "/v1beta/models/gemini-embedding-001:embedContent"
    assert seen.body == {"content": {"parts": [{"text": "hello world"}]}}
    assert seen.headers["x-goog-api-key"] == KEY
    estimate = math.ceil(len("hello world") / 4)  # Gemini reports no usage: an estimate
    assert (result.usage.prompt_tokens, result.usage.total_tokens) == (estimate, estimate)
    assert await gateway.usage() == {"tokens": estimate, "prompt_tokens": estimate,
                                     "completion_tokens": 0, "requests": 1}


async def test_embeddings_of_a_list_use_batch_embed_contents(gateway: Gateway,
                                                             fake: FakeGemini) -> None:
    result = await gateway.client().embeddings.create(
        model="gem-embed", input=["alpha", "beta gamma"], dimensions=4, encoding_format="float")
    assert [d.index for d in result.data] == [0, 1]
    assert [d.embedding for d in result.data] == [embedding_of("alpha", 4),
                                                  embedding_of("beta gamma", 4)]
    (seen,) = fake.requests
    assert seen.path == "/v1beta/models/gemini-embedding-001:batchEmbedContents"
    assert seen.body == {"requests": [
        {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "alpha"}]},
         "outputDimensionality": 4},
        {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "beta gamma"}]},
         "outputDimensionality": 4}]}
    assert result.usage.prompt_tokens == 2 + 3


async def test_embedding_encodings(gateway: Gateway, fake: FakeGemini) -> None:
    client = gateway.client()
    packed = await client.embeddings.create(model="gem-embed", input="x y", dimensions=3,
                                            encoding_format="base64")
    encoded = packed.data[0].embedding
    assert isinstance(encoded, str)  # asked for explicitly, the SDK hands back the text
    assert list(struct.unpack("<3f", base64.b64decode(encoded))) == embedding_of("x y", 3)
    assert fake.requests[0].body["outputDimensionality"] == 3
    async with httpx.AsyncClient(verify=TLS, timeout=10) as http:  # no encoding_format: floats
        response = await http.post(f"{gateway.base_url}/v1/embeddings",
                                   json={"model": "gem-embed", "input": ["x y"]},
                                   headers={"authorization": f"Bearer {gateway.secret}"})
    assert response.status_code == 200
    assert response.json()["data"] == [{"index": 0, "embedding": embedding_of("x y"),
                                        "object": "embedding"}]
    assert response.json()["model"] == "gem-embed"


@pytest.mark.parametrize(("kwargs", "param"), [
    ({"input": [1, 2, 3]}, "input"),
    ({"input": [[1, 2], [3]]}, "input"),
    ({"input": "x", "extra_body": {"task_type": "RETRIEVAL_QUERY"}}, "task_type"),
])
async def test_embedding_inputs_gemini_cannot_take_are_400(gateway: Gateway, fake: FakeGemini,
                                                           kwargs: dict[str, Any], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await gateway.client().embeddings.create(model="gem-embed", **kwargs)
    assert info.value.code == "unsupported_parameter" and info.value.param == param
    assert "gemini" in info.value.message
    assert fake.requests == []
    assert await gateway.usage() == {}


async def test_embedding_upstream_rejection_is_relayed(gateway: Gateway,
                                                       fake: FakeGemini) -> None:
    fake.then(Behavior(status=400, error_status="INVALID_ARGUMENT",
                              message="outputDimensionality must be at most 3072"))
    with pytest.raises(openai.BadRequestError) as info:
        await gateway.client().embeddings.create(model="gem-embed", input="x", dimensions=5000)
    assert info.value.code == "invalid_argument"
    assert "at most 3072" in info.value.message
    assert len(fake.requests) == 1


def test_embedding_plan_errors_before_upstream() -> None:
    with pytest.raises(GatewayError) as info:
        plan_embeddings(b'{"model": "m", "input": ["a", 7]}', "gemini-embedding-001")
    assert (info.value.status, info.value.code, info.value.param) == (400, "unsupported_parameter", "input")
    plan = plan_embeddings(b'{"model": "m", "input": "a", "user": "u-1", "dimensions": null}',
                           "tunedModels/mine")
    assert plan.method == "embedContent" and plan.ignored == ["user"]
    assert json.loads(plan.body) == {"content": {"parts": [{"text": "a"}]}}
    batch = plan_embeddings(b'{"model": "m", "input": ["a", "b"]}', "tunedModels/mine")
    assert [r["model"] for r in json.loads(batch.body)["requests"]] == ["tunedModels/mine"] * 2


async def test_native_stream_without_alt_sse_is_a_clear_400(gateway: Gateway,
                                                            fake: FakeGemini) -> None:
    async with httpx.AsyncClient(verify=TLS, timeout=10) as http:
        response = await http.post(
            f"{gateway.base_url}/gemini/v1beta/models/gem-test:streamGenerateContent",
            content=json.dumps(NATIVE).encode(), headers={"x-goog-api-key": gateway.secret})
    assert response.status_code == 400
    assert response.json()["error"]["details"][0]["metadata"]["param"] == "alt"
    assert fake.requests == []
