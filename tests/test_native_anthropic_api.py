"""The rest of the Anthropic API that the official SDK calls: `messages.count_tokens`
(relayed on anthropic routes, estimated elsewhere) and `models.list` / `models.retrieve`
from the catalog; error types per status and the 401 naming `x-api-key`."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx
import pytest

from schemas.anthropic import error_type
from tests.conftest import TLS, KindGateway, KindGateways
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.kinds import CASES

SECRET = CASES["anthropic"].credential
UPSTREAM_MODEL = CASES["anthropic"].upstream_model


@pytest.fixture
async def gateway(kind_gateway: KindGateways) -> KindGateway:
    """`claude-test` and `claude-two` on the fake Anthropic API; `echo` on a mock."""
    return await kind_gateway("anthropic", slug="claude-test", echo=True, models=[
        {"slug": "claude-two", "name": "Claude Two",
         "routes": [{"provider": "primary", "model": "claude-two-upstream"}]}])


def client(gateway: KindGateway, api_key: str | None = None) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=gateway.base_url + "/anthropic",
                                    api_key=api_key or gateway.secret, max_retries=0,
                                    http_client=anthropic.DefaultAsyncHttpxClient(verify=TLS))


MESSAGES: Any = [{"role": "user", "content": "one two three"}]


async def test_count_tokens_is_relayed(gateway: KindGateway, fake: FakeAnthropic) -> None:
    counted = await client(gateway).messages.count_tokens(
        model="claude-test", messages=MESSAGES, system="be brief")
    (seen,) = fake.requests
    assert seen.path == "/v1/messages/count_tokens"
    assert seen.body == {"model": UPSTREAM_MODEL, "messages": MESSAGES, "system": "be brief"}
    assert seen.headers["x-api-key"] == SECRET and seen.headers["anthropic-version"]
    assert counted.input_tokens == json.loads(fake.answers[0])["input_tokens"] > 0
    assert await gateway.usage() == {"tokens": 0, "prompt_tokens": 0, "completion_tokens": 0,
                                     "requests": 1}


async def test_count_tokens_is_estimated_on_other_kinds(gateway: KindGateway,
                                                        fake: FakeAnthropic) -> None:
    counted = await client(gateway).messages.count_tokens(
        model="echo", messages=[{"role": "user", "content": "y" * 41}])
    assert counted.input_tokens == 11  # ceil(41 / 4): the estimate, documented
    assert fake.requests == []


async def test_count_tokens_refuses_bad_input_in_anthropics_shape(gateway: KindGateway,
                                                                  fake: FakeAnthropic) -> None:
    with pytest.raises(anthropic.UnprocessableEntityError) as caught:
        await client(gateway).messages.count_tokens(model="claude-test", messages=[])
    assert caught.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError) as unknown:
        await client(gateway).messages.count_tokens(model="nope", messages=MESSAGES)
    assert unknown.value.body["error"]["code"] == "model_not_found"  # type: ignore[index]
    assert fake.requests == []


async def test_models_list_and_retrieve(gateway: KindGateway, fake: FakeAnthropic) -> None:
    page = await client(gateway).models.list()
    # `echo` is on the mock, which answers the Messages API too.
    assert [m.id for m in page.data] == ["claude-test", "claude-two", "echo"]
    assert [m.display_name for m in page.data][:2] == ["claude-test", "Claude Two"]
    assert all(m.type == "model" and m.created_at.year >= 2024 for m in page.data)
    paged = [m.id async for m in await client(gateway).models.list(limit=1)]  # auto-paging
    assert paged == ["claude-test", "claude-two", "echo"]
    two = await client(gateway).models.retrieve("claude-two")
    assert two.id == "claude-two"
    with pytest.raises(anthropic.NotFoundError) as caught:
        await client(gateway).models.retrieve("nope")
    assert caught.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    assert fake.requests == []


async def test_405_and_401_in_anthropics_shape(gateway: KindGateway) -> None:
    async with httpx.AsyncClient(verify=TLS, timeout=10) as http:
        wrong = await http.delete(gateway.base_url + "/anthropic/v1/models",
                                  headers={"x-api-key": gateway.secret})
        missing = await http.get(gateway.base_url + "/anthropic/v1/models")
    assert wrong.status_code == 405
    assert wrong.json()["type"] == "error"
    assert wrong.json()["error"]["type"] == "invalid_request_error"
    assert missing.status_code == 401
    assert missing.json()["error"]["type"] == "authentication_error"
    assert "x-api-key" in missing.json()["error"]["message"]
    with pytest.raises(anthropic.AuthenticationError):
        await client(gateway, api_key="sk-wrong").models.list()
    async with httpx.AsyncClient(verify=TLS, timeout=10) as http:
        count = await http.post(gateway.base_url + "/anthropic/v1/messages/count_tokens",
                                json={"model": "echo", "messages": MESSAGES})
    assert count.status_code == 401 and "x-api-key" in count.json()["error"]["message"]


def test_error_types_per_status() -> None:
    assert [error_type(s) for s in (400, 401, 402, 403, 404, 405, 408, 413, 422, 429, 500, 502,
                                    503, 504, 529)] == [
        "invalid_request_error", "authentication_error", "billing_error", "permission_error",
        "not_found_error", "invalid_request_error", "invalid_request_error", "request_too_large",
        "invalid_request_error", "rate_limit_error", "api_error", "api_error", "overloaded_error",
        "api_error", "overloaded_error"]
