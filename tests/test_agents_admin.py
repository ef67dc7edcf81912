"""`/v1/admin/agents`: an org's own agents beside the config's, who may manage them, how a
bad one is refused, and that `model: "agent/<name>"` (through `Agents.get`) finds them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import trio

from ingress.agents import Agents
from ingress.keys import KeyStore
from schemas.agents import Agent, Variable
from tests.conftest import TLS, Gateway, make_config, start_gateway

SUPPORT = {"model": "echo", "instructions": "Help with {{product}}.",
           "tools": [{"type": "function", "name": "lookup", "parameters": {"type": "object"}}],
           "variables": {"product": {"value": "Switchboard"},
                         "token": {"value": "s3cret-agent-token", "secret": True}},
           "max_tool_calls": 3}


@pytest.fixture
async def gateway(nursery: trio.Nursery, redis_url: str) -> Gateway:
    config = make_config(
        redis_url, {"local": {"kind": "mock"}},
        [{"slug": "echo", "routes": [{"provider": "local", "model": "echo"}]},
         {"slug": "other", "routes": [{"provider": "local", "model": "echo"}]}],
        agents={"house": {"model": "echo", "instructions": "The config's agent."}})
    return await start_gateway(nursery, config)


async def _key(gateway: Gateway, org: str, role: str) -> str:
    _, secret = await KeyStore(gateway.redis).create(org, "", name="t", role=role)  # type: ignore[arg-type]
    return secret


@pytest.fixture
async def http(gateway: Gateway) -> AsyncIterator[Any]:
    """A client factory: `http(secret)` calls the gateway with that key."""
    clients: list[httpx.AsyncClient] = []

    def make(secret: str) -> httpx.AsyncClient:
        client = httpx.AsyncClient(base_url=gateway.base_url + "/v1/admin", verify=TLS,
                                   headers={"authorization": f"Bearer {secret}"})
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


async def test_round_trip_and_agents_get_sees_it(gateway: Gateway, http: Any) -> None:
    admin = http(await _key(gateway, "acme", "admin"))
    agents = Agents(gateway.config, gateway.redis)
    assert await agents.get("acme", "support") is None

    created = await admin.put("/agents/support", json=SUPPORT)
    assert created.status_code == 201, created.text
    view = created.json()
    assert (view["name"], view["source"], view["active"], view["model"]) == (
        "support", "org", True, "echo")
    # A secret variable's value is never shown back; the other fields are as sent.
    assert view["variables"] == {"product": {"value": "Switchboard", "secret": False},
                                 "token": {"value": "", "secret": True}}
    assert (await admin.get("/agents/support")).json() == view
    assert "s3cret-agent-token" not in (await admin.get("/agents")).text

    # What `model: "agent/support"` runs: the stored agent, secret value and all.
    found = await agents.get("acme", "support")
    assert found == Agent(model="echo", instructions="Help with {{product}}.",
                          tools=SUPPORT["tools"], max_tool_calls=3,
                          variables={"product": Variable("Switchboard"),
                                     "token": Variable("s3cret-agent-token", True)})
    assert await agents.get("other-org", "support") is None  # only its own org sees it

    replaced = await admin.put("/agents/support", json={"model": "other"})
    assert replaced.status_code == 200 and replaced.json()["model"] == "other"
    assert (await agents.get("acme", "support")) == Agent(model="other")

    listed = (await admin.get("/agents")).json()["data"]
    assert [(a["name"], a["source"], a["active"]) for a in listed] == [
        ("house", "config", True), ("support", "org", True)]

    deleted = await admin.delete("/agents/support")
    assert deleted.status_code == 200 and deleted.json()["name"] == "support"
    assert (await admin.get("/agents/support")).status_code == 404
    assert (await admin.delete("/agents/support")).status_code == 404
    assert await agents.get("acme", "support") is None


async def test_config_agents_are_listed_read_only_and_an_org_may_replace_one(
        gateway: Gateway, http: Any) -> None:
    admin = http(await _key(gateway, "acme", "admin"))
    agents = Agents(gateway.config, gateway.redis)
    house = (await admin.get("/agents/house")).json()
    assert (house["source"], house["instructions"]) == ("config", "The config's agent.")
    refused = await admin.delete("/agents/house")
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "agent_read_only"
    assert "config" in refused.json()["error"]["message"]

    # The org's own of the same name replaces it for this org only.
    assert (await admin.put("/agents/house", json={"model": "other"})).status_code == 201
    assert (await agents.get("acme", "house")) == Agent(model="other")
    assert (await agents.get("elsewhere", "house")).instructions == "The config's agent."  # type: ignore[union-attr]
    listed = (await admin.get("/agents")).json()["data"]
    assert [(a["source"], a["active"]) for a in listed] == [("org", True), ("config", False)]
    assert (await admin.delete("/agents/house")).status_code == 200  # the org's own
    assert (await agents.get("acme", "house")).model == "echo"  # type: ignore[union-attr]


async def test_who_may_manage_agents(gateway: Gateway, http: Any) -> None:
    acme = http(await _key(gateway, "acme", "admin"))
    assert (await acme.put("/agents/support", json=SUPPORT)).status_code == 201
    member = http(await _key(gateway, "acme", "member"))
    for method, path in (("GET", "/agents"), ("GET", "/agents/support"),
                         ("PUT", "/agents/support"), ("DELETE", "/agents/support")):
        answer = await member.request(method, path, json=SUPPORT if method == "PUT" else None)
        assert answer.status_code == 403, (method, path)
        assert answer.json()["error"]["code"] == "forbidden"

    rival = http(await _key(gateway, "rival", "admin"))
    assert (await rival.get("/agents/support")).status_code == 404  # another org's: unseen
    assert (await rival.delete("/agents/support")).status_code == 404
    assert "support" not in (await rival.get("/agents")).text
    for method in ("GET", "DELETE"):
        assert (await rival.request(method, "/agents/support", params={"org": "acme"})
                ).status_code == 403
    assert (await rival.get("/agents", params={"org": "acme"})).status_code == 403
    assert (await rival.put("/agents/support", params={"org": "acme"}, json=SUPPORT)
            ).status_code == 403
    assert (await acme.get("/agents/support")).json()["model"] == "echo"  # untouched

    operator = http(await _key(gateway, "", "operator"))
    assert (await operator.get("/agents")).status_code == 400  # must name the org
    assert (await operator.get("/agents/support", params={"org": "acme"})).json()["source"] == "org"
    made = await operator.put("/agents/helper", params={"org": "rival"}, json={"model": "echo"})
    assert made.status_code == 201
    assert [a["name"] for a in (await rival.get("/agents")).json()["data"]] == ["helper", "house"]


@pytest.mark.parametrize(("name", "body", "param"), [
    ("ok", {"instructions": "no model"}, None),
    ("ok", {"model": "echo", "temperature": 2}, None),  # not an agent field
    ("ok", {"model": "echo", "max_tool_calls": 1000}, "max_tool_calls"),
    ("ok", {"model": "echo", "variables": {"v": {"value": 1}}}, "variables[...].value"),
    ("ok", {"model": "gpt-nope"}, "model"),  # not a catalog slug
    ("ok", {"model": "agent/house"}, "model"),
    ("-dash-first", {"model": "echo"}, "name"),
    ("x" * 65, {"model": "echo"}, "name"),
    ("sp ace", {"model": "echo"}, "name"),
])
async def test_a_bad_agent_is_a_422_naming_the_field_and_stores_nothing(
        gateway: Gateway, http: Any, name: str, body: dict[str, Any], param: str | None) -> None:
    admin = http(await _key(gateway, "acme", "admin"))
    answer = await admin.put(f"/agents/{name}", json=body)
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["code"] == "validation_error"
    if param:
        assert error["param"] == param
    assert [a["name"] for a in (await admin.get("/agents")).json()["data"]] == ["house"]
    assert not await gateway.redis.keys("{sb}:agent*")
    assert (await admin.get(f"/agents/{name}")).status_code in (404, 422)


async def test_bad_json_is_a_400(gateway: Gateway, http: Any) -> None:
    admin = http(await _key(gateway, "acme", "admin"))
    answer = await admin.put("/agents/ok", content=b"{not json",
                             headers={"content-type": "application/json"})
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "invalid_json"


def test_the_openapi_document_describes_the_agent_endpoints() -> None:
    from ingress.openapi import openapi_document

    document = openapi_document()
    one = document["paths"]["/v1/admin/agents/{name}"]
    assert set(one) == {"get", "put", "delete"}
    assert one["put"]["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/Agent")
    assert {"201", "422"} <= set(one["put"]["responses"]) and "409" in one["delete"]["responses"]
    assert "get" in document["paths"]["/v1/admin/agents"]
    assert {"Agent", "AgentView", "AgentList"} <= set(document["components"]["schemas"])


async def test_an_org_has_a_bounded_number_of_agents(gateway: Gateway) -> None:
    from ingress.keys import Identity
    from schemas.errors import GatewayError

    agents = Agents(gateway.config, gateway.redis)
    agents.MAX_PER_ORG = 2
    admin = Identity(key_id="k", org="acme", project="", plan="", role="admin")
    for name in ("a1", "a2"):
        await agents.put(admin, name, Agent(model="echo"))
    with pytest.raises(GatewayError) as refused:
        await agents.put(admin, "a3", Agent(model="echo"))
    assert (refused.value.status, refused.value.code) == (409, "too_many_agents")
    assert (await agents.put(admin, "a2", Agent(model="other")))[1] is False  # replacing is fine
    await agents.delete(admin, "a1")
    assert (await agents.put(admin, "a3", Agent(model="echo")))[1] is True
