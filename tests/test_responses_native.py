"""`responses = "native"` on an openai provider: the Responses API relayed to the upstream's
own `/v1/responses` (the fake records it), with the gateway's ids and state."""

from __future__ import annotations

import openai
import pytest

from schemas import names
from tests.conftest import KindGateways


async def test_plain_is_relayed_with_our_id_and_model(kind_gateway: KindGateways) -> None:
    gateway = await kind_gateway("openai", responses="native")
    client = gateway.client()
    response = await client.responses.create(model=gateway.slug, input="native hello",
                                             instructions="Be kind.", store=True)
    sent = gateway.fake.requests[-1]
    assert sent.path.endswith("/v1/responses")
    assert sent.body["model"] == gateway.case.upstream_model
    assert sent.body["store"] is False  # the gateway keeps the state
    assert sent.body["instructions"] == "Be kind."
    assert response.output_text == "native hello"
    assert response.model == gateway.slug and response.id != "resp_upstream_1"
    assert (await client.responses.retrieve(response.id)).output_text == "native hello"
    usage = await gateway.usage()
    assert usage["tokens"] == response.usage.total_tokens > 0  # type: ignore[union-attr]
    # A continuation sends the history itself (never the upstream's id).
    await client.responses.create(model=gateway.slug, input="next",
                                  previous_response_id=response.id)
    body = gateway.fake.requests[-1].body
    assert "previous_response_id" not in body
    assert [item.get("role") for item in body["input"]] == ["user", "assistant", "user"]


async def test_streamed_events_are_relayed_in_order(kind_gateway: KindGateways) -> None:
    gateway = await kind_gateway("openai", responses="native")
    events = [e async for e in await gateway.client().responses.create(
        model=gateway.slug, input="streamed natively", stream=True)]
    assert [e.type for e in events] == ["response.created", "response.output_item.added",
                                        "response.output_text.delta", "response.completed"]
    assert [e.sequence_number for e in events] == [0, 1, 2, 3]
    completed = events[-1].response  # type: ignore[union-attr]
    assert completed.model == gateway.slug and completed.output_text == "streamed natively"
    assert events[0].response.id == completed.id  # type: ignore[union-attr]
    assert await gateway.redis.exists([names.response(completed.id)])


async def test_a_native_stream_cut_short_ends_with_an_error(kind_gateway: KindGateways) -> None:
    gateway = await kind_gateway("openai", responses="native")
    gateway.fake.then(gateway.case.cut_stream(["a", "b", "c"], 2))  # type: ignore[misc]
    events = [e async for e in await gateway.client().responses.create(
        model=gateway.slug, input="x", stream=True)]
    seen = [event.type for event in events]
    assert "response.output_text.delta" in seen and "response.completed" not in seen
    assert seen[-1] == "error"  # numbered after the upstream's own events
    assert events[-1].sequence_number == events[-2].sequence_number + 1


async def test_built_in_tools_are_refused_on_a_native_route(kind_gateway: KindGateways) -> None:
    gateway = await kind_gateway("openai", responses="native")
    with pytest.raises(openai.BadRequestError) as caught:
        await gateway.client().responses.create(model=gateway.slug, input="date?",
                                                tools=[{"type": "current_date"}])  # type: ignore[list-item]
    assert caught.value.body["param"] == "tools"  # type: ignore[index]
    assert gateway.fake.requests == []
