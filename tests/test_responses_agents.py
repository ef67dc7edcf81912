"""`{{variables}}` (a secret one never reaches a log line, the request log or a stored
response) and agents from the config (`model: "agent/<name>"`)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest
import trio

from ingress.keys import KeyStore
from schemas import names
from tests.conftest import SLUG, FakeUpstreams, make_config, start_gateway

SECRET = "s3cr3t-token-value-9931"


async def openai_gateway(nursery: trio.Nursery, redis_url: str, fake_upstream: FakeUpstreams,
                         monkeypatch: pytest.MonkeyPatch, **extra: Any) -> tuple[Any, Any]:
    fake = await fake_upstream("openai")
    monkeypatch.setenv("SB_TEST_RESP_KEY", "sk-test")
    config = make_config(redis_url, {"primary": {"kind": "openai", "base_url": fake.base_url,
                                                 "api_key_env": "SB_TEST_RESP_KEY"}},
                         [{"slug": SLUG, "routes": [{"provider": "primary", "model": "up-1"}]}],
                         **extra)
    return await start_gateway(nursery, config), fake


AGENTS = {"agents": {
    "helper": {"model": SLUG, "instructions": "You are {{persona}}.",
               "variables": {"persona": {"value": "a pirate"}},
               "tools": [{"type": "function", "name": "lookup",
                          "parameters": {"type": "object", "properties": {}}}],
               "max_tool_calls": 3}}}


async def request_log_text(redis: Any) -> str:
    """The org's request log, once the request's record was written (its own task)."""
    for _ in range(100):
        entries = await redis.xrange(names.request_log("acme"))
        if entries:
            return repr(entries)
        await trio.sleep(0.02)
    raise AssertionError("no request log record")


@pytest.mark.parametrize("stream", [False, True])
async def test_secret_variables_never_leak(stream: bool, nursery: trio.Nursery, redis_url: str,
                                           fake_upstream: FakeUpstreams,
                                           monkeypatch: pytest.MonkeyPatch,
                                           switchboard_logs: pytest.LogCaptureFixture) -> None:
    gateway, fake = await openai_gateway(nursery, redis_url, fake_upstream, monkeypatch)
    client = gateway.client()
    variables = {"token": {"value": SECRET, "secret": True}, "name": {"value": "Ada"}}
    kwargs: dict[str, Any] = {"model": SLUG, "instructions": "Use {{token}} for {{name}}.",
                              "input": "echo {{token}} please",
                              "extra_body": {"variables": variables}}
    if stream:
        events = [e async for e in await client.responses.create(stream=True, **kwargs)]
        response = events[-1].response  # type: ignore[union-attr]
    else:
        response = await client.responses.create(**kwargs)
    assert response.output_text == f"echo {SECRET} please"  # the caller gets its own answer
    upstream = json.dumps(fake.requests[-1].body)
    assert f"Use {SECRET} for Ada." in upstream  # substituted on the way up
    stored = await gateway.redis.hgetall(names.response(response.id))
    dump = repr(stored)
    assert SECRET not in dump and "{{token}}" in dump and "Ada" in dump
    assert SECRET not in await request_log_text(gateway.redis)
    assert SECRET not in "\n".join(r.getMessage() for r in switchboard_logs.records)
    # The continuation gets the secret back from this request's variables.
    await client.responses.create(model=SLUG, previous_response_id=response.id, input="again",
                                  extra_body={"variables": variables})
    assert f"echo {SECRET} please" in json.dumps(fake.requests[-1].body)


async def test_a_missing_variable_is_400_naming_it(nursery: trio.Nursery, redis_url: str,
                                                   fake_upstream: FakeUpstreams,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    gateway, fake = await openai_gateway(nursery, redis_url, fake_upstream, monkeypatch)
    with pytest.raises(openai.BadRequestError) as caught:
        await gateway.client().responses.create(model=SLUG, input="hi {{who}}")
    assert caught.value.code == "missing_variable" and "who" in caught.value.message
    with pytest.raises(openai.BadRequestError) as caught:
        await gateway.client().responses.create(model=SLUG, input="hi",
                                                instructions="as {{role}}")
    assert caught.value.body["param"] == "instructions"  # type: ignore[index]
    assert fake.requests == []


async def test_an_agent_merges_its_settings(nursery: trio.Nursery, redis_url: str,
                                            fake_upstream: FakeUpstreams,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    gateway, fake = await openai_gateway(nursery, redis_url, fake_upstream, monkeypatch,
                                         **AGENTS)
    client = gateway.client()
    response = await client.responses.create(model="agent/helper", input="ahoy")
    assert response.model == "agent/helper" and response.output_text == "ahoy"
    assert response.max_tool_calls == 3 and response.instructions == "You are a pirate."
    sent = fake.requests[-1].body
    assert sent["model"] == "up-1"
    assert sent["messages"][0] == {"role": "system", "content": "You are a pirate."}
    assert [t["function"]["name"] for t in sent["tools"]] == ["lookup"]
    # The client's values override the agent's and add to them.
    await client.responses.create(
        model="agent/helper", input="beep",
        tools=[{"type": "function", "name": "extra", "parameters": {"type": "object"}}],
        extra_body={"variables": {"persona": {"value": "a robot"}}})
    sent = fake.requests[-1].body
    assert sent["messages"][0]["content"] == "You are a robot."
    assert [t["function"]["name"] for t in sent["tools"]] == ["lookup", "extra"]


async def test_an_unknown_agent_is_400(nursery: trio.Nursery, redis_url: str,
                                       fake_upstream: FakeUpstreams,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    gateway, fake = await openai_gateway(nursery, redis_url, fake_upstream, monkeypatch,
                                         **AGENTS)
    with pytest.raises(openai.BadRequestError) as caught:
        await gateway.client().responses.create(model="agent/nobody", input="hi")
    assert caught.value.code == "model_not_found"
    assert fake.requests == []


async def test_identity_and_thread_are_recorded_not_sent(
        nursery: trio.Nursery, redis_url: str, fake_upstream: FakeUpstreams,
        monkeypatch: pytest.MonkeyPatch) -> None:
    gateway, fake = await openai_gateway(nursery, redis_url, fake_upstream, monkeypatch)
    await gateway.client().responses.create(
        model=SLUG, input="hi", extra_body={"identity": {"id": "user-9"},
                                            "thread": {"id": "thread-3"}})
    assert "user-9" not in json.dumps(fake.requests[-1].body)
    log = await request_log_text(gateway.redis)
    assert "user-9" in log and "thread-3" in log


async def test_an_agent_made_over_the_admin_api_runs_for_its_org_only(
        nursery: trio.Nursery, redis_url: str, fake_upstream: FakeUpstreams,
        monkeypatch: pytest.MonkeyPatch) -> None:
    gateway, fake = await openai_gateway(nursery, redis_url, fake_upstream, monkeypatch)
    _, admin = await KeyStore(gateway.redis).create("acme", "", name="admin", role="admin")
    async with httpx.AsyncClient(base_url=gateway.base_url, trust_env=False) as http:
        made = await http.put("/v1/admin/agents/reviewer", json={
            "model": SLUG, "instructions": "Review as {{style}}.",
            "variables": {"style": {"value": "a strict editor"}}},
            headers={"authorization": f"Bearer {admin}"})
    assert made.status_code == 201, made.text
    response = await gateway.client().responses.create(model="agent/reviewer", input="my draft")
    assert response.model == "agent/reviewer"
    assert fake.requests[-1].body["messages"][0] == {"role": "system",
                                                     "content": "Review as a strict editor."}
    _, other = await KeyStore(gateway.redis).create("globex", "", name="other")
    outsider = openai.AsyncOpenAI(base_url=gateway.base_url + "/v1", api_key=other,
                                  max_retries=0)
    with pytest.raises(openai.BadRequestError) as caught:
        await outsider.responses.create(model="agent/reviewer", input="hi")
    assert caught.value.code == "model_not_found"  # another org's agent does not exist for it
    assert len(fake.requests) == 1
