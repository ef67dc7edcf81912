"""The `anthropic` kind's native relay (`POST /anthropic/v1/messages`): the official Anthropic
SDK through ingress, Redis and a worker to the fake Anthropic API; the client's body goes up
untouched but for the model, Anthropic's answer comes back untouched but for the model. Plus
unit tests of the relay's pure parts."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx
import pytest
import trio

from tests.conftest import TLS, Gateway, KindGateway, KindGateways, make_config, start_gateway
from tests.fakes.anthropic_upstream import Behavior, FakeAnthropic
from tests.kinds import CASES
from workers.providers._base import UpstreamFailure
from workers.providers.anthropic.native import NativeRelay, native_answer, native_request

SECRET = CASES["anthropic"].credential
UPSTREAM_MODEL = CASES["anthropic"].upstream_model
WEATHER_TOOL: Any = {
    "name": "get_weather", "description": "Weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                     "required": ["city"]}}


@pytest.fixture
async def gateway(kind_gateway: KindGateways) -> KindGateway:
    """`claude-test` routed to the fake Anthropic API (provider `primary`, one retry);
    `echo` to a mock."""
    return await kind_gateway("anthropic", slug="claude-test", echo=True)


def client(gateway: Gateway, api_key: str | None = None) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=gateway.base_url + "/anthropic",
                                    api_key=api_key or gateway.secret, max_retries=0,
                                    http_client=anthropic.DefaultAsyncHttpxClient(verify=TLS))


def user(text: str) -> Any:
    return [{"role": "user", "content": text}]


def split_events(stream: bytes) -> list[tuple[str, bytes]]:
    """(event name, data) of each `event: X\\ndata: Y\\n\\n` in an SSE body."""
    events = []
    for block in stream.split(b"\n\n"):
        if block:
            name, data = block.split(b"\n")
            events.append((name.removeprefix(b"event: ").decode(), data.removeprefix(b"data: ")))
    return events


def with_slug(event: str, data: bytes) -> Any:
    """The parsed data of an upstream event as the client should see it."""
    parsed = json.loads(data)
    if event == "message_start":
        parsed["message"]["model"] = "claude-test"
    return parsed


def error_of(caught: pytest.ExceptionInfo[anthropic.APIStatusError]) -> dict[str, Any]:
    text = caught.value.response.text
    assert SECRET not in text
    error: dict[str, Any] = json.loads(text)["error"]
    return error


# ── messages.create ──────────────────────────────────────────────────────────────
async def test_create_relays_the_body_and_answers_with_the_slug(gateway: Gateway,
                                                                fake: FakeAnthropic) -> None:
    params: dict[str, Any] = {
        "model": "claude-test", "max_tokens": 64, "system": "Be brief.",
        "messages": user("one two three"), "metadata": {"user_id": "u-1"}, "stop_sequences": ["END"]}
    extra = {"temperature": 0.2, "future_param": {"x": [1, 2.5]}}  # not in this SDK's signature
    raw = await client(gateway).messages.with_raw_response.create(**params, extra_body=extra)
    message = await raw.parse()
    assert SECRET not in raw.http_response.text
    assert raw.http_response.headers["x-request-id"].startswith("req_")
    (seen,) = fake.requests
    assert seen.path == "/v1/messages"
    assert seen.body == {**params, **extra, "model": UPSTREAM_MODEL}
    assert seen.headers["x-api-key"] == SECRET
    # the SDK's own anthropic-version is relayed (it overrides the configured one)
    assert seen.headers["anthropic-version"] == raw.http_request.headers["anthropic-version"]
    assert gateway.secret not in json.dumps(seen.headers)
    upstream = json.loads(fake.answers[0])
    assert upstream["model"] == UPSTREAM_MODEL
    assert json.loads(raw.http_response.content) == {**upstream, "model": "claude-test"}
    assert message.model == "claude-test"
    assert [(b.type, getattr(b, "text", None)) for b in message.content] == [("text", "one two three")]
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens == 3
    assert message.usage.input_tokens == upstream["usage"]["input_tokens"] > 0
    assert await gateway.usage() == {"tokens": message.usage.input_tokens + 3,
                                     "prompt_tokens": message.usage.input_tokens,
                                     "completion_tokens": 3, "requests": 1}


async def test_only_the_model_changes_byte_for_byte(gateway: Gateway, fake: FakeAnthropic) -> None:
    sent = (b'{"max_tokens":32,"model":"claude-test","messages":[{"role":"user",'
            b'"content":"caf\\u00e9  ok"}],"zz_new":{"a":1.50,"b":[true,null]},"stream":false}')
    async with httpx.AsyncClient(verify=TLS, timeout=10) as http:
        response = await http.post(f"{gateway.base_url}/anthropic/v1/messages", content=sent,
                                   headers={"x-api-key": gateway.secret, "anthropic-version": "2023-06-01",
                                            "content-type": "application/json"})
    assert response.status_code == 200
    assert fake.requests[0].raw == sent.replace(b'"claude-test"', b'"' + UPSTREAM_MODEL.encode() + b'"')
    # The answer's other values keep the upstream's own bytes (its `json.dumps` spacing).
    content = b'[{"type": "text", "text": "caf\\u00e9  ok"}]'
    assert b'"content": ' + content in fake.answers[0]
    assert b'"content":' + content in response.content
    assert response.json()["model"] == "claude-test"


async def test_cache_tokens_count_as_prompt_tokens(gateway: Gateway, fake: FakeAnthropic) -> None:
    cached = {"cache_read_input_tokens": 100, "cache_creation_input_tokens": 20}
    fake.then(Behavior(text="a b", usage_extra=cached), Behavior(text="a b", usage_extra=cached))
    message = await client(gateway).messages.create(model="claude-test", max_tokens=16,
                                                      messages=user("x"))
    assert (message.usage.cache_read_input_tokens, message.usage.cache_creation_input_tokens) == (100, 20)
    prompt = message.usage.input_tokens + 120
    assert await gateway.usage() == {"tokens": prompt + 2, "prompt_tokens": prompt,
                                     "completion_tokens": 2, "requests": 1}
    async with client(gateway).messages.stream(model="claude-test", max_tokens=16,
                                               messages=user("x")) as stream:
        final = await stream.get_final_message()
    assert final.usage.cache_read_input_tokens == 100
    assert await gateway.usage() == {"tokens": 2 * (prompt + 2), "prompt_tokens": 2 * prompt,
                                     "completion_tokens": 4, "requests": 2}


async def test_tool_use_round_trip_is_relayed_as_is(gateway: Gateway, fake: FakeAnthropic) -> None:
    fake.then(Behavior(text="", tool_uses=[{"id": "toolu_01", "name": "get_weather",
                                            "input": {"city": "Paris"}}]),
              Behavior(text="It is 18C in Paris."))
    sdk = client(gateway)
    first = await sdk.messages.create(model="claude-test", max_tokens=64, messages=user("Weather?"),
                                      tools=[WEATHER_TOOL],
                                      tool_choice={"type": "any", "disable_parallel_tool_use": True})
    assert first.stop_reason == "tool_use" and first.model == "claude-test"
    (call,) = first.content
    assert call.type == "tool_use"
    assert (call.id, call.name, call.input) == ("toolu_01", "get_weather", {"city": "Paris"})
    assert fake.requests[0].body["tools"] == [WEATHER_TOOL]
    assert fake.requests[0].body["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}

    conversation: Any = [
        *user("Weather?"),
        {"role": "assistant", "content": [call.model_dump(exclude_none=True)]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01",
                                      "content": [{"type": "text", "text": "18C sunny"}]}]}]
    second = await sdk.messages.create(model="claude-test", max_tokens=64, tools=[WEATHER_TOOL],
                                       messages=conversation)
    assert [b.text for b in second.content if b.type == "text"] == ["It is 18C in Paris."]
    sent = fake.requests[1].body
    assert sent["messages"] == conversation and sent["model"] == UPSTREAM_MODEL
    assert sent["messages"][1]["content"] == [{"type": "tool_use", "id": "toolu_01",
                                               "name": "get_weather", "input": {"city": "Paris"}}]


# ── streams ──────────────────────────────────────────────────────────────────────
async def test_stream_relays_every_event_in_order(gateway: Gateway, fake: FakeAnthropic) -> None:
    fake.then(Behavior(text="Hello there world", chunks=["Hello", " there", " world"]))
    async with client(gateway).messages.with_streaming_response.create(
            model="claude-test", max_tokens=64, messages=user("hi"), stream=True) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        body = await response.read()
    assert SECRET not in body.decode()
    relayed, upstream = split_events(body), split_events(fake.answers[0])
    assert [name for name, _ in relayed] == [name for name, _ in upstream] == [
        "message_start", "ping", "content_block_start", "content_block_delta", "content_block_delta",
        "content_block_delta", "content_block_stop", "ping", "message_delta", "message_stop"]
    for (name, data), (_, sent) in zip(relayed, upstream, strict=True):
        if name == "message_start":
            assert json.loads(data) == with_slug(name, sent)
        else:
            assert data == sent  # untouched, byte for byte
    assert fake.requests[0].body["stream"] is True
    assert fake.requests[0].body["model"] == UPSTREAM_MODEL
    assert body.endswith(b"event: message_stop\ndata: " + upstream[-1][1] + b"\n\n")  # nothing after


async def test_sdk_stream_assembles_text_and_final_message(gateway: Gateway,
                                                           fake: FakeAnthropic) -> None:
    fake.then(Behavior(text="Hello there world", chunks=["Hello", " there", " world"]),
              Behavior(text="a b c"))
    sdk = client(gateway)
    async with sdk.messages.stream(model="claude-test", max_tokens=64, messages=user("hi")) as stream:
        text = "".join([piece async for piece in stream.text_stream])
        final = await stream.get_final_message()
    assert text == "Hello there world"
    assert final.model == "claude-test" and final.id == "msg_fake01"
    assert [b.text for b in final.content if b.type == "text"] == ["Hello there world"]
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 3
    raw = await sdk.messages.create(model="claude-test", max_tokens=64, messages=user("x"), stream=True)
    events = [event async for event in raw]
    sent = [name for name, _ in split_events(fake.answers[1]) if name != "ping"]  # the SDK skips pings
    assert [event.type for event in events] == sent
    start = events[0]
    assert isinstance(start, anthropic.types.RawMessageStartEvent)
    assert start.message.model == "claude-test"
    prompt = final.usage.input_tokens + start.message.usage.input_tokens
    assert await gateway.usage() == {"tokens": prompt + 6, "prompt_tokens": prompt,
                                     "completion_tokens": 6, "requests": 2}


async def test_streamed_tool_use_is_relayed(gateway: Gateway, fake: FakeAnthropic) -> None:
    fake.then(Behavior(text="Checking.", tool_uses=[
        {"id": "toolu_a", "name": "get_weather", "input": {"city": "Paris"}},
        {"id": "toolu_b", "name": "get_weather", "input": {"city": "Rome"}}]))
    async with client(gateway).messages.stream(
            model="claude-test", max_tokens=64, messages=user("Weather?"),
            tools=[WEATHER_TOOL]) as stream:
        final = await stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert [b.type for b in final.content] == ["text", "tool_use", "tool_use"]
    calls = [(b.id, b.input) for b in final.content if b.type == "tool_use"]
    assert calls == [("toolu_a", {"city": "Paris"}), ("toolu_b", {"city": "Rome"})]
    assert fake.requests[0].body["tools"] == [WEATHER_TOOL]


async def test_stream_error_before_output_is_retried(gateway: Gateway, fake: FakeAnthropic) -> None:
    fake.then(Behavior(stream_error_after=0))
    async with client(gateway).messages.stream(model="claude-test", max_tokens=64,
                                               messages=user("still here")) as stream:
        text = "".join([piece async for piece in stream.text_stream])
    assert text == "still here"
    assert len(fake.requests) == 2


async def test_stream_error_after_output_ends_with_an_error_event(gateway: Gateway,
                                                                  fake: FakeAnthropic) -> None:
    fake.then(Behavior(chunks=["a", "b", "c"], stream_error_after=2, chunk_delay_s=0.05))
    stream = await client(gateway).messages.create(model="claude-test", max_tokens=64,
                                                   messages=user("x"), stream=True)
    seen: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as caught:
        async for event in stream:
            seen.append(event.type)
    assert seen == ["message_start", "content_block_start", "content_block_delta",
                    "content_block_delta"]
    assert isinstance(caught.value.body, dict)
    error = caught.value.body["error"]
    assert (error["code"], error["details"]) == ("upstream_error", {"provider": "primary", "status": 529})
    assert SECRET not in json.dumps(caught.value.body)
    assert len(fake.requests) == 1  # output began: no retry
    # Metered all the same: message_start's input_tokens (5) and output_tokens (1), plus
    # the two relayed characters ("a", "b") estimated at 4 a token (1).
    assert await gateway.usage() == {"tokens": 7, "prompt_tokens": 5, "completion_tokens": 2,
                                     "requests": 1}


async def test_stream_cut_before_message_stop_is_an_error(gateway: Gateway,
                                                         fake: FakeAnthropic) -> None:
    fake.then(Behavior(chunks=["a", "b", "c"], end_early_after=2, chunk_delay_s=0.05))
    async with client(gateway).messages.with_streaming_response.create(
            model="claude-test", max_tokens=64, messages=user("x"), stream=True) as response:
        body = await response.read()
    relayed = split_events(body)
    assert [name for name, _ in relayed][-2:] == ["content_block_delta", "error"]
    assert "message_stop" not in [name for name, _ in relayed]  # never looked complete
    error = json.loads(relayed[-1][1])["error"]
    assert error["code"] == "upstream_error" and "before message_stop" in error["message"]
    assert [name for name, _ in relayed[:-1]] == [name for name, _ in split_events(fake.answers[0])]
    assert len(fake.requests) == 1
    # The cut stream is metered: message_start's counts (5 in, 1 out) plus "a", "b" (1).
    assert await gateway.usage() == {"tokens": 7, "prompt_tokens": 5, "completion_tokens": 2,
                                     "requests": 1}


# ── refusals and failures ────────────────────────────────────────────────────────
async def test_slug_without_an_anthropic_route_is_400(nursery: trio.Nursery, redis_url: str) -> None:
    # Only an openai-kind route (the mock answers the native API, so it cannot stand in here);
    # never called: the request is refused before a job exists.
    gateway = await start_gateway(nursery, make_config(
        redis_url, {"oa": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1"}},
        [{"slug": "gpt-only", "routes": [{"provider": "oa", "model": "m"}]}]))
    with pytest.raises(anthropic.BadRequestError) as caught:
        await client(gateway).messages.create(model="gpt-only", max_tokens=16, messages=user("x"))
    error = error_of(caught)
    assert caught.value.status_code == 400
    assert (error["code"], error["param"]) == ("no_provider", "model")
    assert "anthropic" in error["message"]


async def test_missing_max_tokens_is_422(gateway: Gateway, fake: FakeAnthropic) -> None:
    with pytest.raises(anthropic.UnprocessableEntityError) as caught:
        await client(gateway).messages.create(  # type: ignore[call-overload]
            model="claude-test", messages=user("x"), max_tokens=anthropic.omit,
            timeout=10)  # else the SDK derives one from max_tokens
    error = error_of(caught)
    assert caught.value.status_code == 422
    assert error["code"] == "validation_error" and "max_tokens" in error["message"]
    assert fake.requests == []


@pytest.mark.parametrize("stream", [False, True])
async def test_overloaded_is_retried_then_502(gateway: Gateway, fake: FakeAnthropic,
                                              stream: bool) -> None:
    overloaded = Behavior(status=529, error_type="overloaded_error", error_message="Overloaded")
    fake.then(overloaded, overloaded)
    with pytest.raises(anthropic.InternalServerError) as caught:
        await client(gateway).messages.create(model="claude-test", max_tokens=16,
                                              messages=user("x"), stream=stream)
    error = error_of(caught)
    assert caught.value.status_code == 502
    assert error["code"] == "upstream_error"
    assert error["details"] == {"provider": "primary", "status": 529}
    assert "overloaded_error" in error["message"]
    assert len(fake.requests) == 2  # max_retries = 1
    assert await gateway.usage() == {}


async def test_overloaded_once_then_success(gateway: Gateway, fake: FakeAnthropic) -> None:
    fake.then(Behavior(status=529, error_type="overloaded_error", error_message="Overloaded"))
    message = await client(gateway).messages.create(model="claude-test", max_tokens=16,
                                                    messages=user("again"))
    assert [b.text for b in message.content if b.type == "text"] == ["again"]
    assert len(fake.requests) == 2


@pytest.mark.parametrize("stream", [False, True])
async def test_invalid_request_is_relayed_without_the_credential(gateway: Gateway, fake: FakeAnthropic,
                                                                 stream: bool) -> None:
    fake.then(Behavior(status=400, error_type="invalid_request_error",
                       error_message=f"thinking.budget_tokens: too large (key {SECRET})"))
    with pytest.raises(anthropic.BadRequestError) as caught:
        await client(gateway).messages.create(model="claude-test", max_tokens=16,
                                              messages=user("x"), stream=stream)
    error = error_of(caught)
    assert error["message"] == "thinking.budget_tokens: too large (key [redacted])"
    assert error["code"] == "invalid_request_error"
    assert len(fake.requests) == 1  # the client's fault: never retried


async def test_upstream_rejecting_our_credential_is_502(gateway: Gateway, fake: FakeAnthropic) -> None:
    fake.then(Behavior(status=401, error_type="authentication_error",
                       error_message=f"invalid x-api-key {SECRET}"))
    with pytest.raises(anthropic.InternalServerError) as caught:
        await client(gateway).messages.create(model="claude-test", max_tokens=16, messages=user("x"))
    error = error_of(caught)
    assert caught.value.status_code == 502
    assert error["details"] == {"provider": "primary", "status": 401}
    assert len(fake.requests) == 1  # our key is wrong: retrying cannot help


async def test_bad_gateway_key_is_401(gateway: Gateway, fake: FakeAnthropic) -> None:
    with pytest.raises(anthropic.AuthenticationError) as caught:
        await client(gateway, api_key="sb-not-a-real-key").messages.create(
            model="claude-test", max_tokens=16, messages=user("x"))
    assert caught.value.status_code == 401
    assert error_of(caught)["type"] == "authentication_error"
    assert fake.requests == []


# ── the relay's pure parts ───────────────────────────────────────────────────────
def test_native_request_replaces_only_the_model() -> None:
    body = b'{"model":"slug","messages":[{"role":"user","content":"x"}],"max_tokens":5,"n":{"z":1.0}}'
    assert native_request(body, "claude-x") == body.replace(b'"slug"', b'"claude-x"')


def test_native_answer_usage_and_slug() -> None:
    answer = (b'{"id":"msg_1","model":"claude-x","content":[],"usage":{"input_tokens":10,'
              b'"output_tokens":5,"cache_read_input_tokens":4,"cache_creation_input_tokens":1}}')
    body, usage = native_answer(answer, "slug", "claude")
    assert body == answer.replace(b'"claude-x"', b'"slug"')
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (15, 5, 20)
    with pytest.raises(UpstreamFailure) as caught:
        native_answer(b"<html>busy</html>", "slug", "claude")
    assert (caught.value.status, caught.value.retryable) == (502, True)


def test_relay_counts_running_totals_and_keeps_data_as_sent() -> None:
    relay = NativeRelay("claude", "slug")
    start: dict[str, Any] = {"type": "message_start", "message": {
        "id": "m", "model": "claude-x", "content": [],
        "usage": {"input_tokens": 7, "cache_read_input_tokens": 3, "output_tokens": 1}}}
    assert relay.feed("message_start", json.dumps(start, indent=2).encode()) == []  # held back
    assert relay.feed("ping", b'{"type": "ping"}') == []
    delta = (b'{"type": "message_delta",\n "delta": {"stop_reason": "end_turn"},\n'
             b' "usage": {"output_tokens": 9}}')
    (first, ping, last) = relay.feed("message_delta", delta)
    assert first[0] == "message_start"
    assert json.loads(first[1]) == {**start, "message": {**start["message"], "model": "slug"}}
    assert ping == ("ping", b'{"type": "ping"}')
    assert last == ("message_delta", delta)  # multi-line data is framed by the ingress
    assert relay.feed("some_future_event", b'{"a": 1}') == [("some_future_event", b'{"a": 1}')]
    assert not relay.done
    relay.feed("message_delta", b'{"usage": {"input_tokens": 8, "output_tokens": 12}}')
    assert relay.feed("message_stop", b'{"type": "message_stop"}') == [
        ("message_stop", b'{"type": "message_stop"}')]
    assert relay.done
    assert (relay.usage.prompt_tokens, relay.usage.completion_tokens) == (11, 12)


def test_relay_error_in_the_preamble_leaves_nothing_relayed() -> None:
    relay = NativeRelay("claude", "slug")
    assert relay.feed("message_start", b'{"message": {"model": "x", "usage": {}}}') == []
    assert relay.feed("content_block_start", b'{"index": 0, "content_block": {"type": "text"}}') == []
    with pytest.raises(UpstreamFailure) as caught:
        relay.feed("error", b'{"type": "error", "error": {"type": "overloaded_error"}}')
    assert caught.value.retryable


@pytest.mark.parametrize(("error_type", "status", "retryable", "failover"), [
    ("overloaded_error", 502, True, True), ("invalid_request_error", 400, False, False),
    ("something_new", 502, True, True)])
def test_relay_error_event_is_classified(error_type: str, status: int, retryable: bool,
                                         failover: bool) -> None:
    relay = NativeRelay("claude", "slug", secret=SECRET)
    data = json.dumps({"type": "error", "error": {"type": error_type, "message": f"no {SECRET}"}})
    with pytest.raises(UpstreamFailure) as caught:
        relay.feed("error", data.encode())
    failure = caught.value
    assert (failure.status, failure.retryable, failure.failover) == (status, retryable, failover)
    assert SECRET not in failure.encode().decode()


def test_relay_malformed_message_start_is_an_upstream_error() -> None:
    with pytest.raises(UpstreamFailure) as caught:
        NativeRelay("claude", "slug").feed("message_start", b'{"type": "message_start"}')
    assert caught.value.code == "upstream_error" and "malformed" in caught.value.message


async def test_client_protocol_headers_are_relayed(gateway: Gateway, fake: FakeAnthropic) -> None:
    sent = b'{"model":"claude-test","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}'
    async with httpx.AsyncClient(verify=TLS, timeout=10) as http:
        response = await http.post(
            f"{gateway.base_url}/anthropic/v1/messages", content=sent,
            headers={"x-api-key": gateway.secret, "anthropic-version": "2099-01-01",
                     "anthropic-beta": "files-api-2025-04-14", "x-other": "not relayed"})
        too_long = await http.post(
            f"{gateway.base_url}/anthropic/v1/messages", content=sent,
            headers={"x-api-key": gateway.secret, "anthropic-beta": "b" * 600})
    assert response.status_code == 200
    seen = fake.requests[0].headers
    assert seen["anthropic-version"] == "2099-01-01"  # the client's, over the configured one
    assert seen["anthropic-beta"] == "files-api-2025-04-14"
    assert "x-other" not in seen and seen["x-api-key"] == SECRET
    assert too_long.status_code == 400 and too_long.json()["error"]["code"] == "invalid_header"
    assert len(fake.requests) == 1


async def test_errors_come_in_anthropic_shape(gateway: Gateway, fake: FakeAnthropic) -> None:
    async with httpx.AsyncClient(verify=TLS, timeout=10) as http:
        refused = await http.post(f"{gateway.base_url}/anthropic/v1/messages",
                                  json={"model": "claude-test", "max_tokens": 8,
                                        "messages": [{"role": "user", "content": "hi"}]},
                                  headers={"x-api-key": "sb-wrong"})
        invalid = await http.post(f"{gateway.base_url}/anthropic/v1/messages",
                                  json={"model": "claude-test", "messages": []},
                                  headers={"x-api-key": gateway.secret})
    assert refused.status_code == 401
    assert refused.json()["type"] == "error"
    assert refused.json()["error"]["type"] == "authentication_error"
    assert refused.json()["error"]["code"] == "unauthorized"
    assert invalid.status_code == 422
    assert invalid.json()["error"]["type"] == "invalid_request_error"
    assert fake.requests == []
