"""Stored responses: retrieve, delete, input_items, `store: false`, the retention, and
isolation between orgs (another org's key gets 404 everywhere, continuation included)."""

from __future__ import annotations

import httpx
import openai
import pytest

from ingress.keys import KeyStore
from schemas import names
from tests.conftest import TLS, KindGateways


async def other_org_client(gateway: object) -> openai.AsyncOpenAI:
    _, secret = await KeyStore(gateway.redis).create("globex", "proj", "", "test")  # type: ignore[attr-defined]
    return gateway.client(api_key=secret)  # type: ignore[attr-defined, no-any-return]


async def test_retrieve_delete_and_input_items(kind_gateway: KindGateways) -> None:
    gateway = await kind_gateway("openai")
    client = gateway.client()
    created = await client.responses.create(
        model=gateway.slug, input=[{"role": "user", "content": "first"},
                                   {"role": "user", "content": [{"type": "input_text",
                                                                 "text": "second"}]}])
    again = await client.responses.retrieve(created.id)
    assert again.id == created.id and again.output_text == created.output_text
    items = await client.responses.input_items.list(created.id, order="asc")
    texts = [item.content[0].text if isinstance(item.content, list)  # type: ignore[union-attr]
             else item.content for item in items.data]  # type: ignore[union-attr]
    assert texts == ["first", "second"]
    assert items.first_id == items.data[0].id and not items.has_more
    page = await client.responses.input_items.list(created.id, limit=1)  # newest first
    assert len(page.data) == 1 and page.has_more
    rest = await client.responses.input_items.list(created.id, limit=1, after=page.data[0].id)
    assert rest.data[0].id != page.data[0].id and not rest.has_more
    await client.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(created.id)


async def test_stored_with_the_configured_retention(kind_gateway: KindGateways) -> None:
    gateway = await kind_gateway("openai")
    created = await gateway.client().responses.create(model=gateway.slug, input="keep me")
    ttl = await gateway.redis.ttl(names.response(created.id))
    assert 29 * 86_400 < ttl <= 30 * 86_400  # [responses] retention_days defaults to 30
    stored = await gateway.redis.hgetall(names.response(created.id))
    assert stored[b"org"] == b"acme" and b"keep me" in stored[b"input"]


async def test_store_false_keeps_nothing(kind_gateway: KindGateways) -> None:
    gateway = await kind_gateway("openai")
    client = gateway.client()
    created = await client.responses.create(model=gateway.slug, input="forget", store=False)
    assert created.store is False
    assert not await gateway.redis.exists([names.response(created.id)])
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(created.id)


async def test_another_org_gets_404_everywhere(kind_gateway: KindGateways) -> None:
    gateway = await kind_gateway("openai")
    created = await gateway.client().responses.create(model=gateway.slug, input="ours")
    other = await other_org_client(gateway)
    with pytest.raises(openai.NotFoundError):
        await other.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        await other.responses.input_items.list(created.id)
    with pytest.raises(openai.NotFoundError):
        await other.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError) as caught:
        await other.responses.create(model=gateway.slug, input="more",
                                     previous_response_id=created.id)
    assert caught.value.body["param"] == "previous_response_id"  # type: ignore[index]
    assert len(gateway.fake.requests) == 1  # the refused continuation never went upstream
    # ...and the owner still has it.
    assert (await gateway.client().responses.retrieve(created.id)).id == created.id


async def test_unknown_ids_and_bad_pages_are_clear_errors(kind_gateway: KindGateways) -> None:
    gateway = await kind_gateway("openai")
    client = gateway.client()
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve("resp_nope")
    with pytest.raises(openai.NotFoundError):
        await client.responses.create(model=gateway.slug, input="x",
                                      previous_response_id="resp_nope")
    created = await client.responses.create(model=gateway.slug, input="paged")
    async with httpx.AsyncClient(verify=TLS) as http:
        answer = await http.get(f"{gateway.base_url}/v1/responses/{created.id}/input_items",
                                params={"limit": "0"},
                                headers={"authorization": f"Bearer {gateway.secret}"})
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "limit"
