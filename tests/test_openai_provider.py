"""The `openai` provider kind end to end, with the official OpenAI SDK as the client."""

from __future__ import annotations

import httpx

from tests.conftest import TLS, Gateway
from tests.fakes.openai_upstream import FakeOpenAI

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]


async def test_stream_asks_upstream_for_usage_and_relays_it_only_when_asked(
        openai_gateway: Gateway, fake_openai: FakeOpenAI) -> None:
    client = openai_gateway.client()
    stream = await client.chat.completions.create(
        model="gpt-test", stream=True, messages=[{"role": "user", "content": "x y"}])
    assert all(chunk.usage is None for chunk in [chunk async for chunk in stream])
    assert fake_openai.requests[0].body["stream_options"] == {"include_usage": True}
    stream = await client.chat.completions.create(
        model="gpt-test", stream=True, stream_options={"include_usage": True, "future": 1},
        messages=[{"role": "user", "content": "one two three"}])
    chunks = [chunk async for chunk in stream]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3
    assert fake_openai.requests[1].body["stream_options"] == {"include_usage": True, "future": 1}


async def test_unknown_fields_and_multipart_content_pass_through_untouched(
        openai_gateway: Gateway, fake_openai: FakeOpenAI) -> None:
    parts = [{"type": "text", "text": "what is this"},
             {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]
    await openai_gateway.client().chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": parts}],  # type: ignore[list-item]
        temperature=0.3, stop=["END"], seed=7, tools=TOOLS,  # type: ignore[arg-type]
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        extra_body={"reasoning_effort": "low", "vendor_knob": {"deep": [1, 2]}})
    body = fake_openai.requests[0].body
    assert fake_openai.requests[0].path == "/v1/chat/completions"
    assert body["model"] == "upstream-model-1"
    assert body["tools"] == TOOLS
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert body["reasoning_effort"] == "low"
    assert body["vendor_knob"] == {"deep": [1, 2]}
    assert body["messages"][0]["content"] == parts
    assert (body["temperature"], body["stop"], body["seed"]) == (0.3, ["END"], 7)


async def test_router_alias_models_and_providers_endpoints(openai_gateway: Gateway) -> None:
    headers = {"authorization": f"Bearer {openai_gateway.secret}"}
    async with httpx.AsyncClient(verify=TLS, base_url=openai_gateway.base_url, headers=headers) as http:
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
    async with httpx.AsyncClient(verify=TLS, base_url=openai_gateway.base_url) as http:
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        assert (await http.get("/readyz")).status_code == 200
        document = (await http.get("/openapi.json")).json()
    assert {"/v1/chat/completions", "/v1/embeddings", "/anthropic/v1/messages",
            "/gemini/v1beta/models/{target}"} <= set(document["paths"])
    assert "EmbeddingRequest" in document["components"]["schemas"]
    request_schema = document["components"]["schemas"]["ChatRequest"]
    assert {"model", "messages"} <= set(request_schema["required"])
    assert "stream_options" in request_schema["properties"]
