"""The `openai` provider kind end to end, with the official OpenAI SDK as the client."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.conftest import Gateway
from tests.fakes.openai_upstream import Behavior, FakeOpenAI

UPSTREAM_SECRET = "sk-upstream-secret-123"


@pytest.fixture(autouse=True)
def upstream_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_UP_KEY", UPSTREAM_SECRET)


async def test_plain_answer_echoes_slug_and_reaches_upstream_with_credential(
        openai_gateway: Gateway, fake_openai: FakeOpenAI) -> None:
    answer = await openai_gateway.client().chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": "ping pong"}])
    assert answer.model == "gpt-test"
    assert answer.choices[0].message.content == "ping pong"
    assert answer.usage is not None and answer.usage.total_tokens == 4
    received = fake_openai.requests[0]
    assert received.path == "/v1/chat/completions"
    assert received.body["model"] == "upstream-model-1"
    assert received.headers["authorization"] == f"Bearer {UPSTREAM_SECRET}"


async def test_stream_relays_chunks_in_order_and_asks_upstream_for_usage(
        openai_gateway: Gateway, fake_openai: FakeOpenAI) -> None:
    fake_openai.then(Behavior(chunks=["a", "b", "c", "d", "e"]))
    stream = await openai_gateway.client().chat.completions.create(
        model="gpt-test", stream=True, messages=[{"role": "user", "content": "x y"}])
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "abcde"
    assert all(c.model == "gpt-test" for c in chunks)
    assert all(c.usage is None for c in chunks)  # the client did not ask for usage
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert fake_openai.requests[0].body["stream_options"] == {"include_usage": True}
    usage = await openai_gateway.usage()
    assert usage["requests"] == 1 and usage["prompt_tokens"] == 2  # metered anyway


async def test_stream_usage_chunk_only_when_asked(openai_gateway: Gateway) -> None:
    stream = await openai_gateway.client().chat.completions.create(
        model="gpt-test", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "one two three"}])
    chunks = [chunk async for chunk in stream]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3


async def test_unknown_fields_and_multipart_content_pass_through_untouched(
        openai_gateway: Gateway, fake_openai: FakeOpenAI) -> None:
    parts = [{"type": "text", "text": "what is this"},
             {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]
    await openai_gateway.client().chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": parts}],  # type: ignore[list-item]
        temperature=0.3, stop=["END"], seed=7,
        extra_body={"reasoning_effort": "low", "vendor_knob": {"deep": [1, 2]}})
    body = fake_openai.requests[0].body
    assert body["reasoning_effort"] == "low"
    assert body["vendor_knob"] == {"deep": [1, 2]}
    assert body["messages"][0]["content"] == parts
    assert (body["temperature"], body["stop"], body["seed"]) == (0.3, ["END"], 7)


async def test_tool_calls_pass_through_both_ways(openai_gateway: Gateway,
                                                 fake_openai: FakeOpenAI) -> None:
    call = {"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
    tools = [{"type": "function", "function": {
        "name": "get_weather", "parameters": {"type": "object",
                                              "properties": {"city": {"type": "string"}}}}}]
    fake_openai.then(Behavior(tool_calls=[call]), Behavior(tool_calls=[call]))
    client = openai_gateway.client()
    answer = await client.chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": "weather?"}],
        tools=tools, tool_choice={"type": "function", "function": {"name": "get_weather"}})  # type: ignore[arg-type]
    assert answer.choices[0].finish_reason == "tool_calls"
    tool_call = answer.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert tool_call.function.name == "get_weather"
    assert json.loads(tool_call.function.arguments) == {"city": "Oslo"}
    assert fake_openai.requests[0].body["tools"] == tools

    stream = await client.chat.completions.create(
        model="gpt-test", stream=True, tools=tools,  # type: ignore[arg-type]
        messages=[{"role": "user", "content": "weather?"},
                  {"role": "assistant", "content": None, "tool_calls": [call]},  # type: ignore[list-item]
                  {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}])
    arguments = ""
    async for chunk in stream:
        for delta_call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            arguments += delta_call.function.arguments or ""  # type: ignore[union-attr]
    assert json.loads(arguments) == {"city": "Oslo"}
    assert fake_openai.requests[1].body["messages"][2] == {
        "role": "tool", "tool_call_id": "call_1", "content": "sunny"}


async def test_mock_provider_streams_and_meters(openai_gateway: Gateway) -> None:
    client = openai_gateway.client()
    stream = await client.chat.completions.create(
        model="echo", stream=True, messages=[{"role": "user", "content": "a b c d e f g h i j"}])
    pieces = [c.choices[0].delta.content async for c in stream if c.choices and c.choices[0].delta.content]
    assert "".join(pieces) == "a b c d e f g h i j" and len(pieces) == 8
    usage = await openai_gateway.usage()
    assert usage["completion_tokens"] == 10 and usage["tokens"] == 20


async def test_router_alias_models_and_providers_endpoints(openai_gateway: Gateway) -> None:
    headers = {"authorization": f"Bearer {openai_gateway.secret}"}
    async with httpx.AsyncClient(base_url=openai_gateway.base_url, headers=headers) as http:
        alias = await http.post("/v3/router/chat/completions", json={
            "model": "echo", "messages": [{"role": "user", "content": "hi"}]})
        assert alias.status_code == 200 and alias.json()["choices"][0]["message"]["content"] == "hi"
        assert alias.headers["x-request-id"].startswith("req_")
        router = (await http.get("/v1/router/models")).json()
        assert {"id": "echo", "slug": "echo", "name": "echo"} in router["data"]
        providers = (await http.get("/v1/router/models/gpt-test/providers")).json()
        assert providers["data"] == [{"provider": "up", "kind": "openai", "model": "upstream-model-1"}]
        missing = await http.get("/v1/router/models/nope/providers")
        assert missing.status_code == 404
    listed = await openai_gateway.client().models.list()
    assert sorted(m.id for m in listed.data) == ["echo", "gpt-test"]


async def test_health_ready_and_openapi(openai_gateway: Gateway) -> None:
    async with httpx.AsyncClient(base_url=openai_gateway.base_url) as http:
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        assert (await http.get("/readyz")).status_code == 200
        document = (await http.get("/openapi.json")).json()
    assert {"/v1/chat/completions", "/v1/embeddings", "/anthropic/v1/messages",
            "/gemini/v1beta/models/{target}"} <= set(document["paths"])
    assert "EmbeddingRequest" in document["components"]["schemas"]
    request_schema = document["components"]["schemas"]["ChatRequest"]
    assert {"model", "messages"} <= set(request_schema["required"])
    assert "stream_options" in request_schema["properties"]
