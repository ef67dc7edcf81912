"""Library defaults that chat-completion translation honours instead of refusing:
`response_format: {"type": "json_object"}` on anthropic routes (instructor Mode.JSON,
LangChain json_mode, litellm) and `parallel_tool_calls: false` on gemini routes
(LangChain's function_calling structured output), through the openai SDK to the fakes."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from tests.conftest import KindGateway, KindGateways
from tests.fakes.anthropic_upstream import Behavior as AnthropicBehavior
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.gemini_upstream import Behavior as GeminiBehavior
from tests.fakes.gemini_upstream import FakeGemini
from workers.providers.anthropic.request import JSON_OBJECT_INSTRUCTION

WEATHER: Any = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
TWO_CALLS = [{"name": "get_weather", "args": {"city": "Oslo"}},
             {"name": "get_weather", "args": {"city": "Rome"}}]


def client(gateway: KindGateway) -> openai.AsyncOpenAI:
    return gateway.client()


# ── json_object on anthropic ─────────────────────────────────────────────────────
async def test_json_object_on_anthropic_asks_for_json_in_the_system_prompt(
        kind_gateway: KindGateways) -> None:
    gateway = await kind_gateway("anthropic", slug="claude-test")
    fake: FakeAnthropic = gateway.fake
    fake.then(AnthropicBehavior(text='{"name": "Ada", "age": 36}'))
    answer = await client(gateway).chat.completions.create(
        model="claude-test", response_format={"type": "json_object"},
        messages=[{"role": "system", "content": "Extract the person."},
                  {"role": "user", "content": "Ada is 36."}])
    assert json.loads(answer.choices[0].message.content or "") == {"name": "Ada", "age": 36}
    (seen,) = fake.requests
    assert seen.body["system"] == [{"type": "text", "text": "Extract the person."},
                                   {"type": "text", "text": JSON_OBJECT_INSTRUCTION}]
    assert "output_config" not in seen.body  # no schema to constrain to: the prompt asks
    assert seen.body["messages"] == [{"role": "user",
                                      "content": [{"type": "text", "text": "Ada is 36."}]}]


async def test_json_object_on_anthropic_streams_too(kind_gateway: KindGateways) -> None:
    gateway = await kind_gateway("anthropic", slug="claude-test")
    gateway.fake.then(AnthropicBehavior(chunks=['{"ok":', ' true}']))
    stream = await client(gateway).chat.completions.create(
        model="claude-test", stream=True, response_format={"type": "json_object"},
        messages=[{"role": "user", "content": "ok?"}])
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert json.loads(text) == {"ok": True}
    assert gateway.fake.requests[0].body["system"] == [
        {"type": "text", "text": JSON_OBJECT_INSTRUCTION}]


async def test_json_schema_without_a_schema_is_still_refused(kind_gateway: KindGateways) -> None:
    gateway = await kind_gateway("anthropic", slug="claude-test")
    with pytest.raises(openai.BadRequestError) as caught:
        await client(gateway).chat.completions.create(
            model="claude-test", messages=[{"role": "user", "content": "x"}],
            response_format={"type": "json_schema", "json_schema": {"name": "x"}})  # type: ignore[typeddict-item]
    assert caught.value.response.json()["error"]["param"] == "response_format"
    assert gateway.fake.requests == []


# ── parallel_tool_calls false on gemini ──────────────────────────────────────────
@pytest.fixture
async def gemini(kind_gateway: KindGateways) -> KindGateway:
    return await kind_gateway("gemini", slug="gem-test")


async def test_parallel_tool_calls_false_keeps_the_first_call(gemini: KindGateway) -> None:
    fake: FakeGemini = gemini.fake
    fake.then(GeminiBehavior(function_calls=TWO_CALLS))
    answer = await client(gemini).chat.completions.create(
        model="gem-test", messages=[{"role": "user", "content": "Oslo and Rome?"}],
        tools=[WEATHER], parallel_tool_calls=False)
    calls = answer.choices[0].message.tool_calls or []
    assert [json.loads(c.function.arguments)["city"] for c in calls] == ["Oslo"]  # type: ignore[union-attr]
    assert answer.choices[0].finish_reason == "tool_calls"
    (seen,) = fake.requests
    assert "parallelToolCalls" not in json.dumps(seen.body)  # Gemini has no such field
    assert [t["functionDeclarations"][0]["name"] for t in seen.body["tools"]] == ["get_weather"]


async def test_parallel_tool_calls_false_in_a_stream(gemini: KindGateway) -> None:
    gemini.fake.then(GeminiBehavior(function_calls=TWO_CALLS))
    stream = await client(gemini).chat.completions.create(
        model="gem-test", stream=True, messages=[{"role": "user", "content": "Oslo and Rome?"}],
        tools=[WEATHER], parallel_tool_calls=False)
    chunks = [c async for c in stream]
    calls = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
    assert [json.loads(tc.function.arguments or "")["city"] for tc in calls] == ["Oslo"]  # type: ignore[union-attr]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


async def test_parallel_tool_calls_false_with_one_forced_function(gemini: KindGateway) -> None:
    """LangChain's with_structured_output(method="function_calling"): one function, forced."""
    gemini.fake.then(GeminiBehavior(function_calls=TWO_CALLS[:1]))
    answer = await client(gemini).chat.completions.create(
        model="gem-test", messages=[{"role": "user", "content": "Oslo?"}], tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        parallel_tool_calls=False)
    assert len(answer.choices[0].message.tool_calls or []) == 1
    assert gemini.fake.requests[0].body["toolConfig"] == {"functionCallingConfig": {
        "mode": "ANY", "allowedFunctionNames": ["get_weather"]}}


async def test_parallel_tool_calls_true_keeps_every_call(gemini: KindGateway) -> None:
    gemini.fake.then(GeminiBehavior(function_calls=TWO_CALLS))
    answer = await client(gemini).chat.completions.create(
        model="gem-test", messages=[{"role": "user", "content": "Oslo and Rome?"}],
        tools=[WEATHER], parallel_tool_calls=True)
    assert len(answer.choices[0].message.tool_calls or []) == 2
