"""Provider kind `anthropic`, beside the conformance suite: how OpenAI requests translate to
Anthropic's Messages API and back, through the gateway (the official OpenAI SDK through
ingress, Redis and a worker to the fake Anthropic API) and as unit tests of the pure
translations."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import openai
import pytest

from schemas.errors import GatewayError
from schemas.providers import AnthropicProvider
from tests.conftest import Gateway, KindGateway, KindGateways
from tests.fakes.anthropic_upstream import Behavior, FakeAnthropic
from tests.kinds import CASES
from workers.providers._base import UpstreamFailure
from workers.providers.anthropic.request import to_messages_request
from workers.providers.anthropic.response import StreamTranslator, finish_reason, to_chat_completion

SECRET = CASES["anthropic"].credential
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
PDF = "JVBERi0xLjQKJcOkw7zDtsOfCjIgMCBvYmoKPDwvTGVuZ3RoIDMgMCBSPj4Kc3RyZWFtCg=="
WEATHER_TOOL: dict[str, Any] = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}


@pytest.fixture
async def gateway(kind_gateway: KindGateways) -> KindGateway:
    """`claude-test` routed to the fake Anthropic API (provider `primary`, one retry)."""
    return await kind_gateway("anthropic", slug="claude-test", default_max_tokens=777)


def user(text: str) -> Any:
    return [{"role": "user", "content": text}]


async def raw_create(gateway: Gateway, **params: Any) -> tuple[dict[str, Any], str]:
    """A non-streamed call; the parsed body and the raw text (to check for the secret)."""
    raw = await gateway.client().chat.completions.with_raw_response.create(model="claude-test", **params)
    text = raw.http_response.text
    assert SECRET not in text
    return json.loads(text), text


async def collect(gateway: Gateway, **params: Any) -> list[Any]:
    stream = await gateway.client().chat.completions.create(model="claude-test", stream=True, **params)
    chunks = [chunk async for chunk in stream]
    assert not any(SECRET in chunk.model_dump_json() for chunk in chunks)
    return chunks


# --- through the gateway ----------------------------------------------------------------
async def test_plain_request_on_the_wire(gateway: Gateway, fake: FakeAnthropic) -> None:
    body, _ = await raw_create(gateway, messages=user("ping pong"))
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "ping pong"}
    seen = fake.requests[0]
    assert seen.path == "/v1/messages"
    assert seen.headers["x-api-key"] == SECRET
    assert seen.headers["anthropic-version"] == "2023-06-01"
    assert seen.headers["content-type"] == "application/json"
    assert "authorization" not in seen.headers
    assert seen.body == {"model": "claude-upstream-1", "max_tokens": 777,
                         "messages": [{"role": "user", "content": [{"type": "text", "text": "ping pong"}]}]}


async def test_parameters_are_translated(gateway: Gateway, fake: FakeAnthropic) -> None:
    await raw_create(gateway, messages=[
        {"role": "system", "content": "You are terse."},
        {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
        {"role": "user", "content": "hi"},
    ], stop="STOP", temperature=0.3, top_p=0.9, max_completion_tokens=55, user="user-7")
    sent = fake.requests[0].body
    assert sent["system"] == [{"type": "text", "text": "You are terse."},
                              {"type": "text", "text": "Answer in French."}]
    assert sent["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    assert sent["stop_sequences"] == ["STOP"]
    assert (sent["temperature"], sent["top_p"], sent["max_tokens"]) == (0.3, 0.9, 55)
    assert sent["metadata"] == {"user_id": "user-7"}
    await raw_create(gateway, messages=user("x"), stop=["a", "b"], max_tokens=9)
    assert fake.requests[1].body["stop_sequences"] == ["a", "b"]
    assert fake.requests[1].body["max_tokens"] == 9


async def test_tool_call_answer(gateway: Gateway, fake: FakeAnthropic) -> None:
    fake.then(Behavior(text="", tool_uses=[{"id": "toolu_01", "name": "get_weather",
                                            "input": {"city": "Paris"}}]))
    body, _ = await raw_create(gateway, messages=user("weather?"), tools=[WEATHER_TOOL],
                               tool_choice="required", parallel_tool_calls=False)
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    [call] = choice["message"]["tool_calls"]
    assert (call["id"], call["type"], call["function"]["name"]) == ("toolu_01", "function", "get_weather")
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    sent = fake.requests[0].body
    assert sent["tools"] == [{"name": "get_weather", "description": "Weather for a city",
                              "input_schema": WEATHER_TOOL["function"]["parameters"]}]
    assert sent["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}


@pytest.mark.parametrize(("choice", "expected"), [
    ("auto", {"type": "auto"}), ("none", {"type": "none"}),
    ({"type": "function", "function": {"name": "get_weather"}}, {"type": "tool", "name": "get_weather"}),
])
async def test_tool_choice_mapping(gateway: Gateway, fake: FakeAnthropic, choice: Any,
                                   expected: dict[str, Any]) -> None:
    await raw_create(gateway, messages=user("x"), tools=[WEATHER_TOOL], tool_choice=choice)
    assert fake.requests[0].body["tool_choice"] == expected


async def test_streamed_tool_calls(gateway: Gateway, fake: FakeAnthropic) -> None:
    fake.then(Behavior(text="Checking.", tool_uses=[
        {"id": "toolu_a", "name": "get_weather", "input": {"city": "Paris"}},
        {"id": "toolu_b", "name": "get_weather", "input": {"city": "Rome"}}]))
    chunks = await collect(gateway, messages=user("weather?"), tools=[WEATHER_TOOL])
    assert fake.requests[0].body["stream"] is True
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for delta in chunk.choices[0].delta.tool_calls or []:
            call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
            call["id"] += delta.id or ""
            call["name"] += delta.function.name or ""
            call["arguments"] += delta.function.arguments or ""
    assert text == "Checking."
    assert sorted(calls) == [0, 1]
    assert [calls[i]["id"] for i in (0, 1)] == ["toolu_a", "toolu_b"]
    assert [json.loads(calls[i]["arguments"])["city"] for i in (0, 1)] == ["Paris", "Rome"]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


async def test_tool_round_trip(gateway: Gateway, fake: FakeAnthropic) -> None:
    messages = [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "toolu_a", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "toolu_b", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}]},
        {"role": "tool", "tool_call_id": "toolu_a", "content": "18C sunny"},
        {"role": "tool", "tool_call_id": "toolu_b", "content": [{"type": "text", "text": "22C"}]},
    ]
    fake.then(Behavior(text="Paris 18C, Rome 22C."))
    body, _ = await raw_create(gateway, messages=messages, tools=[WEATHER_TOOL])
    assert body["choices"][0]["message"]["content"] == "Paris 18C, Rome 22C."
    sent = fake.requests[0].body["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert sent[1]["content"] == [
        {"type": "tool_use", "id": "toolu_a", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "toolu_b", "name": "get_weather", "input": {"city": "Rome"}}]
    assert sent[2]["content"] == [
        {"type": "tool_result", "tool_use_id": "toolu_a", "content": "18C sunny"},
        {"type": "tool_result", "tool_use_id": "toolu_b", "content": [{"type": "text", "text": "22C"}]}]


async def test_images_and_pdf(gateway: Gateway, fake: FakeAnthropic) -> None:
    await raw_create(gateway, messages=[{"role": "user", "content": [
        {"type": "text", "text": "Describe these."},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}", "detail": "low"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
        {"type": "file", "file": {"filename": "a.pdf", "file_data": f"data:application/pdf;base64,{PDF}"}},
    ]}])
    [message] = fake.requests[0].body["messages"]
    assert message["content"] == [
        {"type": "text", "text": "Describe these."},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": PDF}},
    ]


@pytest.mark.parametrize(("stop_reason", "finish"), [
    ("max_tokens", "length"), ("stop_sequence", "stop"), ("end_turn", "stop")])
async def test_finish_reasons(gateway: Gateway, fake: FakeAnthropic, stop_reason: str,
                              finish: str) -> None:
    fake.then(Behavior(stop_reason=stop_reason), Behavior(stop_reason=stop_reason))
    body, _ = await raw_create(gateway, messages=user("go"))
    assert body["choices"][0]["finish_reason"] == finish
    chunks = await collect(gateway, messages=user("go"))
    assert chunks[-1].choices[0].finish_reason == finish


async def test_authentication_error_is_not_retried(gateway: Gateway, fake: FakeAnthropic) -> None:
    fake.then(Behavior(status=401, error_type="authentication_error", error_message="invalid x-api-key"))
    with pytest.raises(openai.InternalServerError) as caught:
        await gateway.client().chat.completions.create(model="claude-test", messages=user("x"))
    assert caught.value.status_code == 502
    assert caught.value.response.json()["error"]["details"] == {"provider": "primary", "status": 401}
    assert SECRET not in caught.value.response.text
    assert len(fake.requests) == 1


async def test_stream_error_before_output_is_retried(gateway: Gateway, fake: FakeAnthropic) -> None:
    fake.then(Behavior(stream_error_after=0))
    chunks = await collect(gateway, messages=user("still here"))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "still here"
    assert len(fake.requests) == 2


async def test_stream_error_after_output_ends_with_error(gateway: Gateway, fake: FakeAnthropic) -> None:
    fake.then(Behavior(chunks=["a", "b", "c"], stream_error_after=2, chunk_delay_s=0.05))
    stream = await gateway.client().chat.completions.create(
        model="claude-test", stream=True, messages=user("x"))
    seen: list[str] = []
    with pytest.raises(openai.APIError):
        async for chunk in stream:
            seen.append(chunk.choices[0].delta.content or "")
    assert "".join(seen) == "ab"
    assert len(fake.requests) == 1  # output began: no retry


async def test_stream_cut_before_message_stop_is_an_error(gateway: Gateway, fake: FakeAnthropic) -> None:
    fake.then(Behavior(chunks=["a", "b", "c"], end_early_after=2, chunk_delay_s=0.05))
    stream = await gateway.client().chat.completions.create(
        model="claude-test", stream=True, messages=user("x"))
    finishes: list[str | None] = []
    with pytest.raises(openai.APIError):
        async for chunk in stream:
            finishes.append(chunk.choices[0].finish_reason)
    assert finishes == [None, None]  # never looked complete


@pytest.mark.parametrize(("params", "param"), [
    ({"n": 2}, "n"), ({"seed": 7}, "seed"), ({"logprobs": True}, "logprobs"),
    ({"frequency_penalty": 0.5}, "frequency_penalty"),
    ({"extra_body": {"verbosity": "high"}}, "verbosity"),  # unknown: might change the answer
])
async def test_unsupported_parameter(gateway: Gateway, fake: FakeAnthropic, params: dict[str, Any],
                                     param: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await gateway.client().chat.completions.create(model="claude-test", messages=user("x"), **params)
    error = caught.value.response.json()["error"]
    assert caught.value.status_code == 400
    assert (error["code"], error["param"]) == ("unsupported_parameter", param)
    assert param in error["message"] and "anthropic" in error["message"]
    assert fake.requests == []


async def test_harmless_unknown_fields_are_dropped(gateway: Gateway, fake: FakeAnthropic) -> None:
    await gateway.client().chat.completions.create(
        model="claude-test", messages=user("x"), store=True, metadata={"k": "v"},
        extra_body={"prompt_cache_key": "p", "verbosity": None})
    assert not {"store", "metadata", "prompt_cache_key", "verbosity"} & set(fake.requests[0].body)


# --- the pure translations ----------------------------------------------------------------

CONFIG = AnthropicProvider(default_max_tokens=321)


def translate(**body: Any) -> dict[str, Any]:
    body.setdefault("messages", user("hi"))
    return json.loads(to_messages_request(json.dumps({"model": "slug", **body}).encode(),
                                          "claude-x", CONFIG, stream=False))


def test_request_defaults() -> None:
    assert translate() == {"model": "claude-x", "max_tokens": 321,
                           "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}


def test_request_structured_output_and_harmless_fields() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    sent = translate(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
                     store=False, n=1, logprobs=False, presence_penalty=0, modalities=["text"])
    assert sent["output_config"] == {"format": {"type": "json_schema", "schema": schema}}
    assert set(sent) == {"model", "max_tokens", "messages", "output_config"}


def test_request_parallel_tool_calls_without_choice() -> None:
    sent = translate(tools=[WEATHER_TOOL], parallel_tool_calls=False)
    assert sent["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    assert "tool_choice" not in translate(tools=[WEATHER_TOOL])


@pytest.mark.parametrize("messages", [
    [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]}],
    [{"role": "user", "content": [{"type": "file", "file": {"file_id": "file-123"}}]}],
])
def test_request_rejects_untranslatable_content(messages: list[dict[str, Any]]) -> None:
    with pytest.raises(GatewayError) as caught:
        translate(messages=messages)
    assert (caught.value.status, caught.value.code, caught.value.param) == (
        400, "unsupported_parameter", "messages")


def test_request_rejects_bad_tool_arguments() -> None:
    messages = [{"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "not json"}}]}]
    with pytest.raises(GatewayError) as caught:
        translate(messages=messages)
    assert caught.value.status == 400


@pytest.mark.parametrize(("stop_reason", "finish"), [
    ("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"),
    ("tool_use", "tool_calls"), ("refusal", "content_filter"), ("pause_turn", "stop"),
    ("model_context_window_exceeded", "length"), ("something_new", "stop"), (None, "stop")])
def test_finish_reason_mapping(stop_reason: str | None, finish: str) -> None:
    assert finish_reason(stop_reason) == finish


def test_response_translation() -> None:
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
               "content": [{"type": "text", "text": "Let me "}, {"type": "text", "text": "look."},
                           {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"q": [1, 2]}}],
               "stop_reason": "tool_use", "stop_sequence": None,
               "usage": {"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 4}}
    completion, usage = to_chat_completion(json.dumps(message).encode(), "slug")
    body = json.loads(msgspec.json.encode(completion))
    assert body["model"] == "slug"
    reply = body["choices"][0]["message"]
    assert reply["content"] == "Let me look."
    assert json.loads(reply["tool_calls"][0]["function"]["arguments"]) == {"q": [1, 2]}
    assert body["choices"][0]["finish_reason"] == "tool_calls"
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (14, 5, 19)


def feed_all(translator: StreamTranslator, events: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for name, payload in events:
        out += [json.loads(c) for c in translator.feed(name, json.dumps({"type": name, **payload}).encode())]
    return out


def test_stream_translation() -> None:
    translator = StreamTranslator("claude", "slug", include_usage=True)
    chunks = feed_all(translator, [
        ("message_start", {"message": {"id": "msg_9", "type": "message", "role": "assistant", "content": [],
                                       "usage": {"input_tokens": 12, "output_tokens": 1}}}),
        ("ping", {}),
        ("content_block_start", {"index": 0, "content_block": {"type": "thinking", "thinking": ""}}),
        ("content_block_delta", {"index": 0, "delta": {"type": "thinking_delta", "thinking": "hmm"}}),
        ("content_block_start", {"index": 1, "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"index": 1, "delta": {"type": "text_delta", "text": "Hi"}}),
        ("content_block_stop", {"index": 1}),
        ("content_block_start", {"index": 2, "content_block": {"type": "tool_use", "id": "toolu_1",
                                                               "name": "f", "input": {}}}),
        ("content_block_delta", {"index": 2, "delta": {"type": "input_json_delta", "partial_json": ""}}),
        ("content_block_delta", {"index": 2, "delta": {"type": "input_json_delta", "partial_json": '{"a":'}}),
        ("some_future_event", {}),
        ("message_delta", {"delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 7}}),
    ])
    assert not translator.done
    assert [c["choices"][0]["delta"] for c in chunks] == [
        {"role": "assistant", "content": "Hi"},
        {"tool_calls": [{"index": 0, "id": "toolu_1", "type": "function",
                         "function": {"name": "f", "arguments": ""}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"a":'}}]},
    ]
    assert all(c["id"] == "msg_9" and c["model"] == "slug" for c in chunks)
    final = feed_all(translator, [("message_stop", {})])
    assert translator.done
    assert final[0]["choices"][0]["finish_reason"] == "tool_calls"
    assert final[1]["choices"] == [] and final[1]["usage"] == {
        "prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}


def test_stream_error_event() -> None:
    translator = StreamTranslator("claude", "slug", include_usage=False)
    with pytest.raises(UpstreamFailure) as caught:
        feed_all(translator, [("error", {"error": {"type": "overloaded_error", "message": "Overloaded"}})])
    failure = caught.value
    assert (failure.status, failure.retryable, failure.details) == (502, True, {"provider": "claude",
                                                                               "status": 529})
