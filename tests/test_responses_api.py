"""The Responses API with the official openai SDK, on an openai, an anthropic and a gemini
route (fake upstreams): plain, streamed (`stream=True` and the `responses.stream` helper),
function tools across two turns via `previous_response_id`, and `text.format`."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import KindGateways
from tests.kinds import CASES

KINDS = ["openai", "anthropic", "gemini"]
WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                          "required": ["city"]}}


def sent_text(fake: Any) -> str:
    """Everything the fake upstream received, as text (to look for what was sent)."""
    return json.dumps([r.body for r in fake.requests])


@pytest.mark.parametrize("kind", KINDS)
async def test_create_answers_a_response_object(kind: str, kind_gateway: KindGateways) -> None:
    gateway = await kind_gateway(kind)
    client = gateway.client()
    response = await client.responses.create(model=gateway.slug, input="hello there",
                                             instructions="Be brief.", metadata={"k": "v"})
    assert response.object == "response"
    assert response.id.startswith("resp_")
    assert response.status == "completed"
    assert response.model == gateway.slug
    assert response.output_text == "hello there"
    assert response.output[0].type == "message"
    assert response.metadata == {"k": "v"}
    assert response.usage is not None and response.usage.output_tokens > 0
    assert "Be brief." in sent_text(gateway.fake)  # instructions went up as the system turn
    assert CASES[kind].sent_model(gateway.fake.requests[-1]) == gateway.case.upstream_model


@pytest.mark.parametrize("kind", KINDS)
async def test_stream_sends_the_typed_events_in_order(kind: str,
                                                      kind_gateway: KindGateways) -> None:
    gateway = await kind_gateway(kind)
    client = gateway.client()
    events = [e async for e in await client.responses.create(
        model=gateway.slug, input="one two three", stream=True)]
    types = [e.type for e in events]
    assert types[:4] == ["response.created", "response.in_progress",
                         "response.output_item.added", "response.content_part.added"]
    assert types[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", "response.completed"]
    assert set(types[4:-4]) == {"response.output_text.delta"}
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == "one two three"
    completed = events[-1].response  # type: ignore[union-attr]
    assert completed.output_text == "one two three" and completed.usage is not None


@pytest.mark.parametrize("kind", KINDS)
async def test_the_stream_helper_gives_the_final_response(kind: str,
                                                          kind_gateway: KindGateways) -> None:
    gateway = await kind_gateway(kind)
    async with gateway.client().responses.stream(model=gateway.slug, input="alpha beta") as stream:
        deltas = [e.delta async for e in stream if e.type == "response.output_text.delta"]
        final = await stream.get_final_response()
    assert "".join(deltas) == "alpha beta"
    assert final.output_text == "alpha beta" and final.status == "completed"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("stream", [False, True])
async def test_function_tools_across_two_turns(kind: str, stream: bool,
                                               kind_gateway: KindGateways) -> None:
    gateway = await kind_gateway(kind)
    case = gateway.case
    assert case.tool_call is not None
    gateway.fake.then(case.tool_call("get_weather", {"city": "Paris"}))
    client = gateway.client()
    if stream:
        async with client.responses.stream(model=gateway.slug, input="weather in Paris?",
                                           tools=[WEATHER]) as events:  # type: ignore[list-item]
            kinds = [e.type async for e in events]
            first = await events.get_final_response()
        assert "response.function_call_arguments.delta" in kinds
        assert "response.function_call_arguments.done" in kinds
    else:
        first = await client.responses.create(model=gateway.slug, input="weather in Paris?",
                                              tools=[WEATHER])  # type: ignore[list-item]
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    assert json.loads(calls[0].arguments) == {"city": "Paris"}
    second = await client.responses.create(
        model=gateway.slug, previous_response_id=first.id, tools=[WEATHER],  # type: ignore[list-item]
        input=[{"type": "function_call_output", "call_id": calls[0].call_id,
                "output": "sunny, 21 C"}])
    assert second.status == "completed" and second.previous_response_id == first.id
    upstream = json.dumps(gateway.fake.requests[-1].body)
    # The second call carried the whole conversation: question, the call and its result.
    assert "weather in Paris?" in upstream and "sunny, 21 C" in upstream
    assert "get_weather" in upstream


@pytest.mark.parametrize("kind", KINDS)
async def test_text_format_json_schema_is_asked_of_the_upstream(
        kind: str, kind_gateway: KindGateways) -> None:
    gateway = await kind_gateway(kind)
    schema = {"type": "object", "properties": {"city": {"type": "string"}},
              "required": ["city"], "additionalProperties": False}
    response = await gateway.client().responses.create(
        model=gateway.slug, input='{"city": "Oslo"}',
        text={"format": {"type": "json_schema", "name": "place", "schema": schema,
                         "strict": True}})
    assert json.loads(response.output_text) == {"city": "Oslo"}
    assert response.text is not None and response.text.format is not None
    assert response.text.format.type == "json_schema"
    upstream = gateway.fake.requests[-1].body
    # Each kind's own structured-output field carries the schema's property.
    assert "city" in json.dumps({k: v for k, v in upstream.items() if k not in
                                 ("messages", "contents")})


async def test_an_unknown_field_that_changes_the_answer_is_400(kind_gateway: KindGateways) -> None:
    gateway = await kind_gateway("openai")
    client = gateway.client()
    with pytest.raises(Exception) as caught:
        await client.responses.create(model=gateway.slug, input="hi",
                                      extra_body={"background": True})
    assert getattr(caught.value, "status_code", None) == 400
    assert "background" in str(caught.value)
    with pytest.raises(Exception) as caught:
        await client.responses.create(model=gateway.slug, input="hi",
                                      tools=[{"type": "web_search"}])  # type: ignore[list-item]
    assert getattr(caught.value, "status_code", None) == 400
    assert gateway.fake.requests == []  # nothing went upstream


async def test_served_under_the_router_prefix(kind_gateway: KindGateways) -> None:
    gateway = await kind_gateway("openai")
    import openai

    from tests.conftest import TLS
    client = openai.AsyncOpenAI(base_url=gateway.base_url + "/v3/router", api_key=gateway.secret,
                                max_retries=0, http_client=openai.DefaultAsyncHttpxClient(verify=TLS))
    response = await client.responses.create(model=gateway.slug, input="prefixed")
    assert response.output_text == "prefixed"
    assert (await client.responses.retrieve(response.id)).id == response.id


async def test_json_object_and_tool_choice_reach_the_chat_call(kind_gateway: KindGateways) -> None:
    gateway = await kind_gateway("openai")
    await gateway.client().responses.create(
        model=gateway.slug, input='{"a": 1}', text={"format": {"type": "json_object"}},
        tools=[WEATHER], tool_choice={"type": "function", "name": "get_weather"},  # type: ignore[list-item]
        parallel_tool_calls=False, max_output_tokens=50, temperature=0.5)
    sent = gateway.fake.requests[-1].body
    assert sent["response_format"] == {"type": "json_object"}
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert sent["parallel_tool_calls"] is False
    assert sent["max_completion_tokens"] == 50 and sent["temperature"] == 0.5


async def test_the_mock_kind_serves_responses(kind_gateway: KindGateways) -> None:
    gateway = await kind_gateway("mock")
    client = gateway.client()
    response = await client.responses.create(model=gateway.slug, input="mocked")
    assert response.status == "completed" and response.output_text
    events = [e async for e in await client.responses.create(model=gateway.slug, input="mocked",
                                                             stream=True)]
    assert events[-1].type == "response.completed"
