"""The built-in `current_date` tool loop (each model call metered), and how a stream that
breaks ends: failover before output, `response.failed` / `error` after it, never a fake
completion."""

from __future__ import annotations

import datetime
import json

import httpx
import pytest

from tests.conftest import KindGateways

KINDS = ["openai", "anthropic", "gemini"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("stream", [False, True])
async def test_the_gateway_runs_current_date_and_calls_the_model_again(
        kind: str, stream: bool, kind_gateway: KindGateways) -> None:
    gateway = await kind_gateway(kind)
    assert gateway.case.tool_call is not None
    gateway.fake.then(gateway.case.tool_call("current_date", {}))
    client = gateway.client()
    if stream:
        events = [e async for e in await client.responses.create(
            model=gateway.slug, input="what day is it?", tools=[{"type": "current_date"}],  # type: ignore[list-item]
            stream=True)]
        assert events[-1].type == "response.completed"
        assert [e.sequence_number for e in events] == list(range(len(events)))
        response = events[-1].response  # type: ignore[union-attr]
    else:
        response = await client.responses.create(
            model=gateway.slug, input="what day is it?", tools=[{"type": "current_date"}])  # type: ignore[list-item]
    kinds = [item.type for item in response.output]
    assert kinds == ["function_call", "function_call_output", "message"]
    call, result = response.output[0], response.output[1]
    assert call.name == "current_date" and result.call_id == call.call_id  # type: ignore[union-attr]
    now = datetime.datetime.fromisoformat(result.output)  # type: ignore[union-attr, arg-type]
    assert now.tzinfo is not None and now.utcoffset() == datetime.timedelta(0)
    assert abs((datetime.datetime.now(datetime.UTC) - now).total_seconds()) < 60
    assert len(gateway.fake.requests) == 2  # two model calls...
    assert result.output in json.dumps(gateway.fake.requests[1].body)  # ...fed the result
    # ...and both are metered.
    assert response.usage is not None
    usage = await gateway.usage()
    assert usage["tokens"] == response.usage.total_tokens > 0
    assert usage["requests"] == 1


async def test_max_tool_calls_zero_returns_the_call(kind_gateway: KindGateways) -> None:
    gateway = await kind_gateway("openai")
    assert gateway.case.tool_call is not None
    gateway.fake.then(gateway.case.tool_call("current_date", {}))
    response = await gateway.client().responses.create(
        model=gateway.slug, input="date?", tools=[{"type": "current_date"}],  # type: ignore[list-item]
        max_tool_calls=0)
    assert [item.type for item in response.output] == ["function_call"]
    assert len(gateway.fake.requests) == 1


@pytest.mark.parametrize("kind", KINDS)
async def test_a_stream_broken_after_output_ends_failed(kind: str,
                                                        kind_gateway: KindGateways) -> None:
    gateway = await kind_gateway(kind, failover=True)
    assert gateway.case.cut_stream is not None
    gateway.fake.then(gateway.case.cut_stream(["one", " two", " three"], 2))
    events = [e async for e in await gateway.client().responses.create(
        model=gateway.slug, input="one two three", stream=True)]
    seen = [event.type for event in events]
    assert "response.output_text.delta" in seen
    assert "response.completed" not in seen
    # As OpenAI ends a broken stream: the SDK hands both events to the caller.
    assert seen[-2:] == ["response.failed", "error"]
    assert events[-1].code == "upstream_error"  # type: ignore[union-attr]
    failed = events[-2].response  # type: ignore[union-attr]
    assert failed.status == "failed" and failed.error.code == "upstream_error"
    assert failed.output[0].content[0].text.startswith("one")  # what the client saw
    assert gateway.backup.requests == []  # no failover once output began


@pytest.mark.parametrize("kind", KINDS)
async def test_a_failure_before_output_fails_over_invisibly(kind: str,
                                                            kind_gateway: KindGateways) -> None:
    gateway = await kind_gateway(kind, failover=True)
    assert gateway.case.server_error is not None
    gateway.fake.then(gateway.case.server_error("down"), gateway.case.server_error("down"))
    events = [e async for e in await gateway.client().responses.create(
        model=gateway.slug, input="still here", stream=True)]
    assert events[0].type == "response.created" and events[0].sequence_number == 0
    assert events[-1].type == "response.completed"
    assert events[-1].response.output_text == "still here"  # type: ignore[union-attr]
    assert len(gateway.backup.requests) == 1


async def test_the_error_event_is_openais_flat_shape_numbered_after_the_last_event(
        kind_gateway: KindGateways) -> None:
    """`{"type": "error", "code", "message", "param", "sequence_number"}`, as OpenAI sends
    it, numbered right after `response.failed`: clients other than the Python SDK (the AI
    SDK) parse exactly that."""
    gateway = await kind_gateway("openai")
    assert gateway.case.cut_stream is not None
    gateway.fake.then(gateway.case.cut_stream(["one", " two", " three"], 2))
    async with httpx.AsyncClient(base_url=gateway.base_url, trust_env=False) as http:
        answer = await http.post("/v1/responses", json={
            "model": gateway.slug, "input": "one two three", "stream": True},
            headers={"authorization": f"Bearer {gateway.secret}"})
    events = [block.split("\n") for block in answer.text.strip().split("\n\n")]
    names = [lines[0].removeprefix("event: ") for lines in events]
    data = [json.loads(lines[1].removeprefix("data: ")) for lines in events]
    assert names[-2:] == ["response.failed", "error"]
    assert data[-1] == {"type": "error", "code": "upstream_error",
                        "message": data[-1]["message"], "param": None,
                        "sequence_number": data[-2]["sequence_number"] + 1}
    assert [d["sequence_number"] for d in data] == list(range(len(data)))
