"""The admin API under `/v1/admin`: keys, orgs and projects (see `ingress.control`), and
agents (see `ingress.agents`).

Authenticated like inference; each handler decodes its body once (`decode_body`), calls
the one `Control` operation the CLI calls too, and answers its Struct as JSON.
"""

from __future__ import annotations

from typing import Any

import msgspec
from quart import Blueprint, Response, request

from ingress.bodies import decode_body
from ingress.respond import gateway, identity, json_response
from schemas.admin import AgentList, AgentView, KeyCreate, KeyPatch, OrgUpdate, ProjectCreate, ProjectPatch
from schemas.agents import Agent

admin = Blueprint("admin", __name__, url_prefix="/v1/admin")

_key_create = msgspec.json.Decoder(KeyCreate)
_key_patch = msgspec.json.Decoder(KeyPatch)
_org_update = msgspec.json.Decoder(OrgUpdate)
_project_create = msgspec.json.Decoder(ProjectCreate)
_project_patch = msgspec.json.Decoder(ProjectPatch)


async def _body() -> bytes:
    body = await request.get_data(cache=False)
    assert isinstance(body, bytes)
    return body


@admin.post("/keys")
async def create_key() -> Response:
    caller = await identity()
    body = decode_body(_key_create, await _body())
    gw = gateway()
    return json_response(await gw.redis_call(gw.control.create_key(caller, body)), 201)


@admin.get("/keys")
async def list_keys() -> Response:
    caller = await identity()
    gw = gateway()
    return json_response(await gw.redis_call(gw.control.list_keys(
        caller, request.args.get("org") or None, request.args.get("project") or None)))


@admin.get("/keys/<key_id>")
async def get_key(key_id: str) -> Response:
    caller = await identity()
    gw = gateway()
    return json_response(await gw.redis_call(gw.control.get_key(caller, key_id)))


@admin.patch("/keys/<key_id>")
async def update_key(key_id: str) -> Response:
    caller = await identity()
    body = decode_body(_key_patch, await _body())
    gw = gateway()
    return json_response(await gw.redis_call(gw.control.update_key(caller, key_id, body)))


@admin.delete("/keys/<key_id>")
async def revoke_key(key_id: str) -> Response:
    caller = await identity()
    gw = gateway()
    return json_response(await gw.redis_call(gw.control.revoke_key(caller, key_id)))


@admin.post("/keys/<key_id>/rotate")
async def rotate_key(key_id: str) -> Response:
    caller = await identity()
    gw = gateway()
    return json_response(await gw.redis_call(gw.control.rotate_key(caller, key_id)))


@admin.get("/orgs/<org>")
async def get_org(org: str) -> Response:
    caller = await identity()
    gw = gateway()
    return json_response(await gw.redis_call(gw.control.get_org(caller, org)))


@admin.put("/orgs/<org>")
async def update_org(org: str) -> Response:
    caller = await identity()
    body = decode_body(_org_update, await _body())
    gw = gateway()
    return json_response(await gw.redis_call(gw.control.update_org(caller, org, body)))


@admin.get("/projects")
async def list_projects() -> Response:
    caller = await identity()
    gw = gateway()
    return json_response(await gw.redis_call(gw.control.list_projects(
        caller, request.args.get("org") or None)))


@admin.post("/projects")
async def create_project() -> Response:
    caller = await identity()
    body = decode_body(_project_create, await _body())
    gw = gateway()
    return json_response(await gw.redis_call(gw.control.create_project(caller, body)), 201)


@admin.patch("/projects/<name>")
async def update_project(name: str) -> Response:
    caller = await identity()
    body = decode_body(_project_patch, await _body())
    gw = gateway()
    return json_response(await gw.redis_call(gw.control.update_project(caller, name, body)))


# ── agents (`model: "agent/<name>"`): the org's own, beside the config's (ingress/agents.py)
_agent = msgspec.json.Decoder(Agent)


@admin.get("/agents")
async def list_agents() -> Response:
    caller = await identity()
    gw = gateway()
    return json_response(await gw.redis_call(gw.agents.list(caller, request.args.get("org"))))


@admin.get("/agents/<name>")
async def get_agent(name: str) -> Response:
    caller = await identity()
    gw = gateway()
    return json_response(await gw.redis_call(gw.agents.read(caller, name,
                                                            request.args.get("org"))))


@admin.put("/agents/<name>")
async def put_agent(name: str) -> Response:
    caller = await identity()
    body = decode_body(_agent, await _body())
    gw = gateway()
    view, created = await gw.redis_call(gw.agents.put(caller, name, body, request.args.get("org")))
    return json_response(view, 201 if created else 200)


@admin.delete("/agents/<name>")
async def delete_agent(name: str) -> Response:
    caller = await identity()
    gw = gateway()
    return json_response(await gw.redis_call(gw.agents.delete(caller, name,
                                                              request.args.get("org"))))


AGENT_TYPES = (Agent, AgentView, AgentList)


def agent_paths(ref: str, secured: list[dict[str, list[str]]]) -> dict[str, Any]:
    """The OpenAPI paths of the agent endpoints (`ref`: the components reference template).
    `org`: the org an operator key names (an admin's own is implied); 400 when it names none."""

    def json_of(name: str) -> dict[str, Any]:
        return {"application/json": {"schema": {"$ref": ref.format(name=name)}}}

    def op(summary: str, answer: str, errors: tuple[int, ...], one: bool = True,
           created: bool = False, body: bool = False) -> dict[str, Any]:
        responses = {"200": {"description": "ok", "content": json_of(answer)}}
        if created:
            responses["201"] = {"description": "created", "content": json_of(answer)}
        for status in (400, 401, 403, 422, 503, *errors):
            responses[str(status)] = {"description": "error", "content": json_of("ErrorBody")}
        parameters = [{"name": "org", "in": "query", "required": False,
                       "schema": {"type": "string"}}]
        if one:
            parameters.append({"name": "name", "in": "path", "required": True,
                               "schema": {"type": "string"}})
        operation = {"summary": summary, "security": secured, "parameters": parameters,
                     "responses": responses}
        if body:
            operation["requestBody"] = {"required": True, "content": json_of("Agent")}
        return operation

    return {
        "/v1/admin/agents": {"get": op("The org's agents and the config's, marked by source",
                                       "AgentList", (), one=False)},
        "/v1/admin/agents/{name}": {
            "get": op("The agent `agent/<name>` invokes for the org", "AgentView", (404,)),
            "put": op("Create or replace one of the org's agents (`model`: a catalog slug)",
                      "AgentView", (404, 408, 409, 413), created=True, body=True),
            "delete": op("Delete one of the org's agents (config agents: 409)", "AgentView",
                         (404, 409))},
    }
