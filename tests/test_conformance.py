"""The provider conformance suite: what every provider kind must do, end to end.

Each test runs once per kind of tests/kinds.py's `CASES` that it applies to (the case's
data says which), with the official OpenAI SDK as the client, through ingress, Redis and
a worker to that kind's fake upstream. Every test checks both what the client got and
what the fake recorded. Kind-specific behaviour (translation details, native endpoints)
is tested beside this, in the kind's own test files.
"""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionChunk

from tests.conftest import SLUG, KindGateway, KindGateways
from tests.kinds import CASES, KindCase

WEATHER: Any = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}


def kinds(*needs: str) -> list[Any]:
    """One parameter per kind whose case sets every field in `needs` (id: the kind)."""
    return [pytest.param(case, id=case.kind) for case in CASES.values()
            if all(getattr(case, need) not in (None, "") for need in needs)]


STREAM = pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])


def user(text: str) -> Any:
    return [{"role": "user", "content": text}]


async def answer_text(gateway: KindGateway, text: str, *, stream: bool) -> str:
    """Ask for `text` to be echoed; the answer's content (a stream's pieces joined, its
    chunks checked: one id, the slug, one finish at the end)."""
    client = gateway.client()
    if not stream:
        answer = await client.chat.completions.create(model=gateway.slug, messages=user(text))
        assert answer.model == SLUG and answer.choices[0].finish_reason == "stop"
        return answer.choices[0].message.content or ""
    chunks = [chunk async for chunk in await client.chat.completions.create(
        model=gateway.slug, messages=user(text), stream=True)]
    assert {c.model for c in chunks} == {SLUG} and len({c.id for c in chunks}) == 1
    assert [c.choices[0].finish_reason for c in chunks] == [None] * (len(chunks) - 1) + ["stop"]
    return "".join(c.choices[0].delta.content or "" for c in chunks)


async def sse_data(gateway: KindGateway, **params: Any) -> list[str]:
    """The data of every event of a streamed answer, as sent (the SDK's raw response)."""
    async with gateway.client().chat.completions.with_streaming_response.create(
            model=gateway.slug, stream=True, **params) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line async for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines), lines
    return [line.removeprefix("data: ") for line in lines]


# ── answers ──────────────────────────────────────────────────────────────────────
@pytest.mark.parametrize("case", kinds())
async def test_plain_completion(case: KindCase, kind_gateway: KindGateways) -> None:
    gateway = await kind_gateway(case.kind)
    answer = await gateway.client().chat.completions.create(model=SLUG, messages=user("ping pong"))
    assert answer.object == "chat.completion"
    assert answer.model == SLUG  # the slug, never the upstream's name
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content == "ping pong"
    assert answer.choices[0].finish_reason == "stop"
    if case.fake is not None:  # a kind with an upstream: it got the route's model
        (seen,) = gateway.fake.requests
        assert case.sent_model(seen) == case.upstream_model


@pytest.mark.parametrize("case", kinds())
async def test_streamed_completion(case: KindCase, kind_gateway: KindGateways) -> None:
    gateway = await kind_gateway(case.kind)
    data = await sse_data(gateway, messages=user("one two three four"))
    assert data[-1] == "[DONE]" and "[DONE]" not in data[:-1]  # ends properly, once
    chunks = [ChatCompletionChunk.model_validate_json(d) for d in data[:-1]]
    assert all(len(c.choices) == 1 for c in chunks)  # no usage chunk: the client did not ask
    assert all(c.usage is None for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "one two three four"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks] == [None] * (len(chunks) - 1) + ["stop"]
    assert {c.model for c in chunks} == {SLUG} and len({c.id for c in chunks}) == 1
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    if case.fake is not None:
        (seen,) = gateway.fake.requests
        assert case.sent_model(seen) == case.upstream_model


@STREAM
@pytest.mark.parametrize("case", kinds("tool_call", "tool_result"))
async def test_tool_call_round_trip(case: KindCase, stream: bool, kind_gateway: KindGateways) -> None:
    gateway = await kind_gateway(case.kind)
    gateway.fake.then(case.tool_call("get_weather", {"city": "Paris"}))
    client = gateway.client()
    question = user("Weather in Paris?")
    if stream:
        chunks = [c async for c in await client.chat.completions.create(
            model=SLUG, messages=question, tools=[WEATHER], stream=True)]
        deltas = [d for c in chunks for d in c.choices[0].delta.tool_calls or []]
        assert {d.index for d in deltas} == {0}
        call_id = "".join(d.id or "" for d in deltas)
        name = "".join(d.function.name or "" for d in deltas if d.function)
        arguments = "".join(d.function.arguments or "" for d in deltas if d.function)
        finish = chunks[-1].choices[0].finish_reason
    else:
        answer = await client.chat.completions.create(model=SLUG, messages=question, tools=[WEATHER])
        (call,) = answer.choices[0].message.tool_calls or []
        call_id, name, arguments = call.id, call.function.name, call.function.arguments  # type: ignore[union-attr]
        finish = answer.choices[0].finish_reason
    assert finish == "tool_calls"
    assert call_id and name == "get_weather" and json.loads(arguments) == {"city": "Paris"}

    result = json.dumps({"temp_c": 18})
    follow_up = await client.chat.completions.create(model=SLUG, tools=[WEATHER], messages=[
        *question,
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}]},
        {"role": "tool", "tool_call_id": call_id, "content": result}])
    assert follow_up.choices[0].finish_reason == "stop" and follow_up.choices[0].message.content
    _, follow_up_sent = gateway.fake.requests
    assert follow_up_sent.body[case.turns][-1] == case.tool_result(call_id, "get_weather", result)


@pytest.mark.parametrize("case", kinds())
async def test_usage_is_metered(case: KindCase, kind_gateway: KindGateways) -> None:
    gateway = await kind_gateway(case.kind)
    client = gateway.client()
    answer = await client.chat.completions.create(model=SLUG, messages=user("one two three"))
    usage = answer.usage
    assert usage is not None and usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert await gateway.usage() == {"tokens": usage.total_tokens, "prompt_tokens": usage.prompt_tokens,
                                     "completion_tokens": usage.completion_tokens, "requests": 1}
    stream = await client.chat.completions.create(
        model=SLUG, messages=user("four five"), stream=True, stream_options={"include_usage": True})
    chunks = [chunk async for chunk in stream]
    last = chunks[-1].usage
    assert chunks[-1].choices == [] and last is not None and last.completion_tokens > 0
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert await gateway.usage() == {
        "tokens": usage.total_tokens + last.total_tokens,
        "prompt_tokens": usage.prompt_tokens + last.prompt_tokens,
        "completion_tokens": usage.completion_tokens + last.completion_tokens, "requests": 2}


# ── failures ─────────────────────────────────────────────────────────────────────
@STREAM
@pytest.mark.parametrize("case", kinds("client_error"))
async def test_client_error_is_relayed_with_its_status_and_message(
        case: KindCase, stream: bool, kind_gateway: KindGateways) -> None:
    gateway = await kind_gateway(case.kind, failover=True)
    message = "messages: the conversation is too long for this model"
    gateway.fake.then(case.client_error(message))
    with pytest.raises(openai.BadRequestError) as caught:
        await gateway.client().chat.completions.create(model=SLUG, messages=user("x"), stream=stream)
    assert caught.value.status_code == 400
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["message"] == message
    assert caught.value.body["code"] == case.client_error_code
    assert len(gateway.fake.requests) == 1  # the client's fault: not retried...
    assert gateway.backup.requests == []  # ...nor failed over
    assert await gateway.usage() == {}


@STREAM
@pytest.mark.parametrize("case", kinds("server_error"))
async def test_server_error_is_retried_then_failed_over(case: KindCase, stream: bool,
                                                        kind_gateway: KindGateways) -> None:
    gateway = await kind_gateway(case.kind, failover=True)
    gateway.fake.then(case.server_error("busy"), case.server_error("busy"))
    assert await answer_text(gateway, "still here", stream=stream) == "still here"
    assert [case.sent_model(r) for r in gateway.fake.requests] == [case.upstream_model] * 2
    assert [case.sent_model(r) for r in gateway.backup.requests] == [case.upstream_model + "-backup"]
    assert (await gateway.usage())["requests"] == 1


@pytest.mark.parametrize("case", kinds("server_error"))
async def test_server_error_without_next_route_is_502(case: KindCase,
                                                      kind_gateway: KindGateways) -> None:
    gateway = await kind_gateway(case.kind)
    failure = case.server_error("busy")
    gateway.fake.then(failure, failure)
    with pytest.raises(openai.InternalServerError) as caught:
        await gateway.client().chat.completions.create(model=SLUG, messages=user("x"))
    assert caught.value.status_code == 502
    error = caught.value.body
    assert isinstance(error, dict) and error["code"] == "upstream_error"
    assert error["details"] == {"provider": "primary", "status": failure.status}
    assert "'primary'" in error["message"]
    assert len(gateway.fake.requests) == 2  # max_retries = 1
    assert await gateway.usage() == {}


@pytest.mark.parametrize("case", kinds("credential", "client_error", "server_error"))
async def test_credential_never_echoed(case: KindCase, kind_gateway: KindGateways,
                                       switchboard_logs: pytest.LogCaptureFixture) -> None:
    gateway = await kind_gateway(case.kind, max_retries=0)
    secret = case.credential
    # The upstream quotes our credential in its errors; none of it may reach the client.
    gateway.fake.then(case.client_error(f"bad request with key {secret}"),
                      case.client_error(f"bad stream with key {secret}"),
                      case.server_error(f"key {secret} is busy"))
    client = gateway.client()
    seen: list[str] = []
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as refused:
            await client.chat.completions.create(model=SLUG, messages=user("x"), stream=stream)
        seen += [refused.value.response.text, refused.value.message, str(refused.value.response.headers)]
    with pytest.raises(openai.InternalServerError) as failed:
        await client.chat.completions.create(model=SLUG, messages=user("x"))
    seen += [failed.value.response.text, failed.value.message, str(failed.value.response.headers)]
    raw = await client.chat.completions.with_raw_response.create(model=SLUG, messages=user("x"))
    seen += [raw.http_response.text, str(raw.http_response.headers)]
    seen += await sse_data(gateway, messages=user("x"))
    assert all(r.headers[case.auth_header] == case.auth_scheme + secret for r in gateway.fake.requests)
    assert len(gateway.fake.requests) == 5  # the credential was in play every time
    lines = [record.getMessage() for record in switchboard_logs.records]
    assert sum('"event":"job"' in line for line in lines) == 5  # the worker's lines were captured
    leaks = [text for text in seen + lines if secret in text]
    assert leaks == []


@pytest.mark.parametrize("case", kinds("cut_stream"))
async def test_cut_stream_ends_in_an_error(case: KindCase, kind_gateway: KindGateways) -> None:
    gateway = await kind_gateway(case.kind, failover=True)
    pieces = ["one", " two", " three", " four"]
    gateway.fake.then(case.cut_stream(pieces, 2), case.cut_stream(pieces, 2))
    stream = await gateway.client().chat.completions.create(
        model=SLUG, messages=user("one two three four"), stream=True)
    received: list[ChatCompletionChunk] = []
    with pytest.raises(openai.APIError) as caught:  # the SDK raises: never a short answer
        async for chunk in stream:
            received.append(chunk)
    assert [c.choices[0].delta.content for c in received] == ["one", " two"]
    assert all(c.choices[0].finish_reason is None for c in received)
    assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "upstream_error"
    data = await sse_data(gateway, messages=user("one two three four"))
    assert "[DONE]" not in data  # on the wire too: an error event ends it, no clean end
    assert json.loads(data[-1])["error"]["code"] == "upstream_error"
    assert [json.loads(d)["choices"][0]["delta"]["content"] for d in data[:-1]] == ["one", " two"]
    assert len(gateway.fake.requests) == 2  # output had begun: neither retried...
    assert gateway.backup.requests == []  # ...nor failed over


@STREAM
@pytest.mark.parametrize("case", kinds("fake", "unsupported"))
async def test_unsupported_field_is_400(case: KindCase, stream: bool,
                                        kind_gateway: KindGateways) -> None:
    gateway = await kind_gateway(case.kind)
    assert case.unsupported is not None
    [(param, value)] = case.unsupported.items()
    with pytest.raises(openai.BadRequestError) as caught:
        await gateway.client().chat.completions.create(model=SLUG, messages=user("x"), stream=stream,
                                                       extra_body={param: value})
    error = caught.value.body
    assert isinstance(error, dict) and (error["code"], error["param"]) == ("unsupported_parameter", param)
    assert case.kind in error["message"]
    assert gateway.fake.requests == []  # refused before any upstream call
    assert await gateway.usage() == {}


@pytest.mark.parametrize("case", [pytest.param(case, id=case.kind) for case in CASES.values()
                                  if case.fake is not None and case.unsupported is None])
async def test_every_field_passes_through(case: KindCase, kind_gateway: KindGateways) -> None:
    """The other side of `unsupported=None`: such a kind forwards what it does not know."""
    gateway = await kind_gateway(case.kind)
    knob = {"deep": [1, 2.5, None], "flag": True}
    await gateway.client().chat.completions.create(model=SLUG, messages=user("x"),
                                                   extra_body={"vendor_knob": knob})
    assert gateway.fake.requests[0].body["vendor_knob"] == knob
