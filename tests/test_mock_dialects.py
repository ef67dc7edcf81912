"""The mock answers the native Anthropic Messages and Gemini generateContent APIs in their own
wire shapes, streamed and not, and the dev catalog (`ingress/dev.toml`, what `make run`
serves) routes the README's native examples to it: with the anthropic SDK
(`messages.create`, `messages.stream`) and the google-genai SDK (`generate_content`,
`generate_content_stream`), through ingress, Redis and a worker, no account needed."""

from __future__ import annotations

import json
import math
import tomllib
from typing import Any

import anthropic
import httpx
import jsonschema_rs
import pytest
import trio
from google import genai
from google.genai import types

from ingress.dev import BUILT_IN
from schemas.config import Route, parse_config
from schemas.envelopes import Job
from schemas.errors import GatewayError
from schemas.providers import MockProvider
from tests.conftest import FAST_LIMITS, TLS, Gateway, start_gateway
from workers.providers._base import Call
from workers.providers.mock import MockAdapter

WEATHER: Any = {"name": "get_weather", "description": "Weather for a city", "input_schema": {
    "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer",
                                                                          "minimum": 1}},
    "required": ["city", "days"]}}


@pytest.fixture
async def gateway(nursery: trio.Nursery, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Gateway:
    """A gateway serving the dev catalog as `make run` does (no provider credential)."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    raw = tomllib.loads(BUILT_IN.read_text())
    config = parse_config({**raw, "redis_url": redis_url, "limits": FAST_LIMITS}, str(BUILT_IN))
    return await start_gateway(nursery, config)


def claude(gateway: Gateway) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=gateway.base_url + "/anthropic", api_key=gateway.secret,
                                    max_retries=0,
                                    http_client=anthropic.DefaultAsyncHttpxClient(verify=TLS))


def gemini(gateway: Gateway) -> genai.Client:
    return genai.Client(api_key=gateway.secret, http_options=types.HttpOptions(
        base_url=gateway.base_url + "/gemini", api_version="v1beta"))


# google-genai's async client runs on asyncio only: its sync one runs in a thread here.
async def generate(gateway: Gateway, text: str, config: Any = None) -> types.GenerateContentResponse:
    def run() -> types.GenerateContentResponse:
        client = gemini(gateway)  # held: a client collected mid-call closes its connection
        return client.models.generate_content(model="gemini-flash", contents=text, config=config)

    return await trio.to_thread.run_sync(run)


async def generate_stream(gateway: Gateway, text: str,
                          config: Any = None) -> list[types.GenerateContentResponse]:
    def run() -> list[types.GenerateContentResponse]:
        client = gemini(gateway)  # held: a client collected mid-stream closes its connection
        return list(client.models.generate_content_stream(model="gemini-flash", contents=text,
                                                          config=config))

    return await trio.to_thread.run_sync(run)


def user(text: str) -> Any:
    return [{"role": "user", "content": text}]


# ── the README's examples, against the dev catalog ───────────────────────────────
async def test_readme_anthropic_example(gateway: Gateway) -> None:
    message = await claude(gateway).messages.create(model="claude-sonnet", max_tokens=256,
                                                    messages=user("Hello"))
    assert message.model == "claude-sonnet" and message.stop_reason == "end_turn"
    assert [(b.type, getattr(b, "text", None)) for b in message.content] == [("text", "Hello")]
    assert (message.usage.input_tokens, message.usage.output_tokens) == (1, 1)


async def test_readme_gemini_example(gateway: Gateway) -> None:
    answer = await generate(gateway, "Hello there")
    assert answer.text == "Hello there"
    assert answer.candidates and answer.candidates[0].finish_reason == types.FinishReason.STOP
    assert answer.usage_metadata is not None and answer.usage_metadata.total_token_count == 4
    assert answer.model_version == "gemini-flash"


@pytest.mark.parametrize("slug", ["mock-echo", "gpt-4o-mini", "claude-sonnet", "gemini-flash"])
async def test_every_dev_slug_serves_chat_completions(gateway: Gateway, slug: str) -> None:
    answer = await gateway.client().chat.completions.with_raw_response.create(
        model=slug, messages=user("Hello"))  # type: ignore[arg-type]
    assert answer.parse().choices[0].message.content == "Hello"
    if slug == "gpt-4o-mini":  # with no OPENAI_API_KEY, the named fallback answers
        assert answer.headers["x-switchboard-provider"] == "mock-fallback"


# ── Anthropic Messages ───────────────────────────────────────────────────────────
async def test_anthropic_stream_events_in_order(gateway: Gateway) -> None:
    async with claude(gateway).messages.stream(model="claude-sonnet", max_tokens=64,
                                               messages=user("one two three four five")) as stream:
        kinds = [event.type async for event in stream]
        final = await stream.get_final_message()
    assert kinds[:3] == ["message_start", "content_block_start", "content_block_delta"]
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert final.content[0].type == "text" and final.content[0].text == "one two three four five"
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 5
    # On the wire: each event named as its data's type, a ping after the block's start.
    async with httpx.AsyncClient(verify=TLS, timeout=10) as http:
        raw = await http.post(gateway.base_url + "/anthropic/v1/messages", headers={
            "x-api-key": gateway.secret}, json={"model": "claude-sonnet", "max_tokens": 9,
                                                "stream": True, "messages": user("a b")})
    events = [block.split("\n") for block in raw.text.strip().split("\n\n")]
    names = [name.removeprefix("event: ") for name, _ in events]
    assert names == ["message_start", "content_block_start", "ping", "content_block_delta",
                     "content_block_delta", "content_block_stop", "message_delta", "message_stop"]
    assert [json.loads(data.removeprefix("data: "))["type"] for _, data in events] == names


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_anthropic_max_tokens_and_stop_sequences(gateway: Gateway, stream: bool) -> None:
    async def ask(**fields: Any) -> anthropic.types.Message:
        if not stream:
            return await claude(gateway).messages.create(model="claude-sonnet", **fields)
        async with claude(gateway).messages.stream(model="claude-sonnet", **fields) as events:
            return await events.get_final_message()

    cut = await ask(max_tokens=2, messages=user("a b c d"))
    assert (cut.content[0].text, cut.stop_reason) == ("a b", "max_tokens")  # type: ignore[union-attr]
    stopped = await ask(max_tokens=50, messages=user("a b STOP c"), stop_sequences=["STOP"])
    assert (stopped.content[0].text, stopped.stop_reason) == ("a b ", "stop_sequence")  # type: ignore[union-attr]
    assert stopped.stop_sequence == "STOP"


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_anthropic_tool_use(gateway: Gateway, stream: bool) -> None:
    fields: Any = {"model": "claude-sonnet", "max_tokens": 64, "tools": [WEATHER],
                   "messages": user("use get_weather for Rome")}
    if stream:
        async with claude(gateway).messages.stream(**fields) as events:
            message = await events.get_final_message()
    else:
        message = await claude(gateway).messages.create(**fields)
    assert message.stop_reason == "tool_use"
    [block] = message.content
    assert block.type == "tool_use" and block.name == "get_weather"
    assert jsonschema_rs.is_valid(WEATHER["input_schema"], block.input)
    # The tool's result comes back: the mock answers with text, so a loop ends.
    after = await claude(gateway).messages.create(**{**fields, "messages": [
        *fields["messages"], {"role": "assistant", "content": [block.model_dump()]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": block.id,
                                      "content": "sunny"}]}]})
    assert after.stop_reason == "end_turn" and after.content[0].text == "sunny"  # type: ignore[union-attr]


async def test_anthropic_structured_output(gateway: Gateway) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string"}, "n": {"type": "number"}},
              "required": ["answer", "n"], "additionalProperties": False}
    message = await claude(gateway).messages.create(
        model="claude-sonnet", max_tokens=64, messages=user("x"),
        extra_body={"output_config": {"format": {"type": "json_schema", "schema": schema}}})
    assert jsonschema_rs.is_valid(schema, json.loads(message.content[0].text))  # type: ignore[union-attr]


# ── Gemini generateContent ───────────────────────────────────────────────────────
async def test_gemini_stream_and_candidates(gateway: Gateway) -> None:
    config = types.GenerateContentConfig(candidate_count=2)
    texts: dict[int, str] = {}
    finishes: dict[int, Any] = {}
    usage = None
    for chunk in await generate_stream(gateway, "one two three four five", config):
        for candidate in chunk.candidates or ():
            index = candidate.index or 0
            for part in candidate.content.parts or () if candidate.content else ():
                texts[index] = texts.get(index, "") + (part.text or "")
            if candidate.finish_reason:
                finishes[index] = candidate.finish_reason
        usage = chunk.usage_metadata or usage
    assert texts == {0: "one two three four five", 1: "one two three four five"}
    assert finishes == {0: types.FinishReason.STOP, 1: types.FinishReason.STOP}
    assert usage is not None and usage.candidates_token_count == 10


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_gemini_max_output_tokens_and_stop(gateway: Gateway, stream: bool) -> None:
    async def ask(config: types.GenerateContentConfig, text: str) -> tuple[str, Any]:
        if not stream:
            answer = await generate(gateway, text, config)
            assert answer.candidates
            return answer.text or "", answer.candidates[0].finish_reason
        out, finish = "", None
        for chunk in await generate_stream(gateway, text, config):
            out += chunk.text or ""
            finish = chunk.candidates[0].finish_reason if chunk.candidates else finish
        return out, finish

    assert await ask(types.GenerateContentConfig(max_output_tokens=2), "a b c") == \
        ("a b", types.FinishReason.MAX_TOKENS)
    assert await ask(types.GenerateContentConfig(stop_sequences=["!"]), "hi! you") == \
        ("hi", types.FinishReason.STOP)


async def test_gemini_function_call(gateway: Gateway) -> None:
    declaration = types.FunctionDeclaration(name="get_weather",
                                            parameters_json_schema=WEATHER["input_schema"])
    config = types.GenerateContentConfig(
        tools=[types.Tool(function_declarations=[declaration])],
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True))
    answer = await generate(gateway, "call get_weather for Rome", config)
    [call] = answer.function_calls or []
    assert call.name == "get_weather"
    assert jsonschema_rs.is_valid(WEATHER["input_schema"], call.args), call.args


async def test_gemini_structured_output(gateway: Gateway) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"},
                                               "tags": {"type": "array", "items": {"type": "string"},
                                                        "minItems": 1}},
              "required": ["city", "tags"]}
    config = types.GenerateContentConfig(response_mime_type="application/json",
                                         response_json_schema=schema)
    answer = await generate(gateway, "x", config)
    assert jsonschema_rs.is_valid(schema, json.loads(answer.text or ""))


@pytest.mark.parametrize("messages", [[{"role": "user", "content": 5}], [{"content": "x"}],
                                      [{"role": "user", "content": [{"text": "no type"}]}]])
async def test_an_unreadable_native_body_is_400(gateway: Gateway, messages: Any) -> None:
    async with httpx.AsyncClient(verify=TLS, timeout=10) as http:
        answer = await http.post(gateway.base_url + "/anthropic/v1/messages",
                                 headers={"x-api-key": gateway.secret},
                                 json={"model": "claude-sonnet", "max_tokens": 9, "messages": messages})
    assert answer.status_code == 400
    assert answer.json()["error"]["type"] == "invalid_request_error"


# ── Gemini embeddings (the adapter alone: the route is the native helper's) ──────
def embed_job(body: Any) -> Call:
    job = Job(request_id="r", org="o", project="p", key_id="k", model="gemini-flash",
              routes=[Route(provider="mock", model="m")], body=json.dumps(body).encode(),
              stream=False, reply_to="x", deadline=0, endpoint="gemini_embed")
    return Call(job, "m")


async def test_gemini_embed_content_and_batch() -> None:
    async with httpx.AsyncClient() as http:
        adapter = MockAdapter("mock", MockProvider(), http)
        one = await adapter.native(embed_job({"content": {"parts": [{"text": "hello world"}]},
                                              "outputDimensionality": 4}))
        many = await adapter.native(embed_job({"requests": [
            {"model": "models/m", "content": {"parts": [{"text": "hello world"}]}},
            {"model": "models/m", "content": {"parts": [{"text": "requests"}]}}]}))
        with pytest.raises(GatewayError) as caught:
            await adapter.native(embed_job({"content": 5}))
    vector = json.loads(one.body)["embedding"]["values"]
    assert len(vector) == 4 and math.isclose(sum(x * x for x in vector), 1, rel_tol=1e-6)
    batch = json.loads(many.body)["embeddings"]
    assert [len(e["values"]) for e in batch] == [8, 8] and batch[0] != batch[1]
    assert (one.usage.prompt_tokens, many.usage.prompt_tokens) == (2, 3)
    assert caught.value.status == 400
