"""The OpenAI Responses API: `POST /v1/responses` and the stored responses' endpoints.

A request is resolved here, at the edge, into the job body the worker reads
(`schemas.responses.Resolved`): the agent of `model: "agent/<name>"` merged in, the
`{{variables}}` substituted, a `previous_response_id`'s items prepended. It then goes
through `relay` like every other endpoint (keys, limits, queue, metering). Stored
responses are read, listed and deleted by their own org only; another org gets 404.
"""

from __future__ import annotations

import msgspec
from quart import Blueprint, Response, g, request

from ingress.bodies import decode_body
from ingress.gateway import Submission
from ingress.keys import Identity
from ingress.respond import gateway, identity, json_response, relay
from schemas import names
from schemas.agents import AGENT_PREFIX, PLACEHOLDER, Variable, substitute
from schemas.chat import raw_object_decoder
from schemas.errors import GatewayError
from schemas.responses import (
    DEFAULT_MAX_TOOL_CALLS,
    HARMLESS_FIELDS,
    KNOWN_FIELDS,
    Deleted,
    Item,
    ItemList,
    Part,
    Resolved,
    ResponsesRequest,
    Tool,
    items_decoder,
    request_decoder,
)
from schemas.tracking import identity_id

responses = Blueprint("responses", __name__)
_encode = msgspec.json.Encoder().encode
_ABSENT = frozenset({b"null", b"{}", b"[]"})
_DEFAULTS = {"background": b"false", "truncation": b'"disabled"'}  # harmless only so
PREFIXES = ("/v1", "/v3/router")


def not_found(response_id: str, param: str | None = None) -> GatewayError:
    """OpenAI's answer for a response that is absent, expired or another org's."""
    return GatewayError(404, "not_found", f"Response with id {response_id!r} not found.",
                        param=param)


def _screen(body: bytes) -> None:
    """400 for a set field the gateway does not honour: it could change the answer."""
    for key, value in raw_object_decoder.decode(body).items():
        raw = bytes(value)
        if key in KNOWN_FIELDS or raw in _ABSENT:
            continue
        if key in HARMLESS_FIELDS and raw == _DEFAULTS.get(key, raw):
            continue
        raise GatewayError(400, "unsupported_parameter",
                           f"`{key}` is not supported by the gateway's Responses API", param=key)


async def _stored(org: str, response_id: str, param: str | None = None) -> dict[bytes, bytes]:
    """The stored hash of `response_id` if `org` owns it, else 404."""
    if not response_id or len(response_id) > 128:
        raise not_found(response_id[:128], param)
    found = await gateway().redis_call(gateway().redis.hgetall(names.response(response_id)))
    if not found or found.get(b"org", b"").decode() != org:
        raise not_found(response_id, param)
    return found


def _text_of(item: Item, variables: dict[str, Variable], param: str, strict: bool) -> Item:
    """The item with `{{variables}}` filled into its text (`strict`: a missing one is 400)."""
    def fill(text: str) -> str:
        if strict:
            return substitute(text, variables, param)
        # History may name variables this request does not give: those stay as written.
        return PLACEHOLDER.sub(lambda m: variables[m.group(1)].value
                               if m.group(1) in variables else m.group(0), text)

    def parts(content: list[Part]) -> list[Part]:
        return [msgspec.structs.replace(p, text=fill(p.text)) if isinstance(p.text, str) else p
                for p in content]

    changes: dict[str, object] = {}
    if isinstance(item.content, str):
        changes["content"] = fill(item.content)
    elif isinstance(item.content, list):
        changes["content"] = parts(item.content)
    if isinstance(item.output, str):
        changes["output"] = fill(item.output)
    return msgspec.structs.replace(item, **changes) if changes else item


def _merge_tools(base: list[Tool], own: list[Tool] | None) -> list[Tool]:
    """The agent's tools, then the client's; a client tool replaces one of the same name."""
    mine = own or []
    named = {(t.type, t.name) for t in mine}
    return [t for t in base if (t.type, t.name) not in named] + mine


async def resolve(caller: Identity, body: bytes, request_id: str) -> Submission:
    """Decode, screen and resolve one Responses request into its job."""
    req: ResponsesRequest = decode_body(request_decoder, body)
    _screen(body)
    model, tools = req.model, req.tools or []
    instructions, max_tool_calls = req.instructions, req.max_tool_calls
    variables = dict(req.variables or {})
    if model.startswith(AGENT_PREFIX):
        name = model.removeprefix(AGENT_PREFIX)
        agent = await gateway().agents.get(caller.org, name)
        if agent is None:
            raise GatewayError(400, "model_not_found", f"no agent named {name!r}", param="model")
        model = agent.model
        instructions = instructions if instructions is not None else agent.instructions or None
        try:
            agent_tools = msgspec.convert(agent.tools, list[Tool])
        except msgspec.ValidationError as exc:  # the operator's mistake, said as such
            raise GatewayError(500, "agent_misconfigured",
                               f"agent {name!r} has an invalid tool: {exc}") from None
        tools = _merge_tools(agent_tools, req.tools)
        variables = {**agent.variables, **variables}
        max_tool_calls = max_tool_calls if max_tool_calls is not None else agent.max_tool_calls
    gateway().bounds.count("tools", tools, "max_tools")
    if instructions is not None:
        instructions = substitute(instructions, variables, "instructions")
    own = [Item(role="user", content=req.input)] if isinstance(req.input, str) else req.input
    own = [_text_of(item, variables, "input", strict=True) for item in own]
    history: list[Item] = []
    if req.previous_response_id is not None:
        stored = await _stored(caller.org, req.previous_response_id, "previous_response_id")
        history = [_text_of(item, variables, "input", strict=False)
                   for item in items_decoder.decode(stored.get(b"context", b"[]"))]
    context = history + _with_ids(own, request_id)
    if not context:
        raise GatewayError(400, "invalid_request", "`input` is empty", param="input")
    gateway().bounds.count("input", context, "max_messages")
    resolved = Resolved(
        model=req.model, context=context, new_from=len(history), instructions=instructions,
        tools=tools, tool_choice=req.tool_choice, parallel_tool_calls=req.parallel_tool_calls,
        text=req.text, max_output_tokens=req.max_output_tokens,
        max_tool_calls=DEFAULT_MAX_TOOL_CALLS if max_tool_calls is None else max_tool_calls,
        temperature=req.temperature, top_p=req.top_p, metadata=req.metadata or {},
        store=req.store is not False, previous_response_id=req.previous_response_id,
        stream=req.stream, secrets={k: v for k, v in variables.items() if v.secret})
    return Submission("responses", model, _encode(resolved), req.stream,
                      max_output_tokens=req.max_output_tokens,
                      identity=identity_id(req.identity, req.user),
                      thread=req.thread.id if req.thread else "")


def _with_ids(items: list[Item], request_id: str) -> list[Item]:
    """This request's input items, each with an id (the input_items list pages by it)."""
    stem = request_id.removeprefix("req_")
    return [item if isinstance(item.id, str) else
            msgspec.structs.replace(item, id=f"{'msg' if item.type == 'message' else 'fc'}_{stem}_{i}")
            for i, item in enumerate(items)]


async def create() -> Response:
    """`POST /v1/responses`."""
    async def submission(body: bytes) -> Submission:
        return await resolve(g.caller, body, g.request_id)

    return await relay(submission)


async def retrieve(response_id: str) -> Response:
    """`GET /v1/responses/{id}`: the stored response object."""
    caller = await identity()
    return json_response((await _stored(caller.org, response_id))[b"response"])


async def delete(response_id: str) -> Response:
    """`DELETE /v1/responses/{id}`."""
    caller = await identity()
    await _stored(caller.org, response_id)
    await gateway().redis_call(gateway().redis.delete([names.response(response_id)]))
    return json_response(Deleted(response_id))


async def input_items(response_id: str) -> Response:
    """`GET /v1/responses/{id}/input_items`: `limit` (1-100, 20), `order` (desc), `after`."""
    caller = await identity()
    items = items_decoder.decode((await _stored(caller.org, response_id)).get(b"input", b"[]"))
    try:
        limit = int(request.args.get("limit", "20"))
    except ValueError:
        limit = 0
    if not 1 <= limit <= 100:
        raise GatewayError(400, "invalid_request", "`limit` is 1 to 100", param="limit")
    order = request.args.get("order", "desc")
    if order not in ("asc", "desc"):
        raise GatewayError(400, "invalid_request", "`order` is asc or desc", param="order")
    if order == "desc":
        items.reverse()
    after = request.args.get("after")
    if after:
        ids = [item.id for item in items]
        items = items[ids.index(after) + 1:] if after in ids else []
    page = items[:limit]
    return json_response(ItemList(data=page, first_id=_id(page, 0), last_id=_id(page, -1),
                                  has_more=len(items) > limit))


def _id(items: list[Item], index: int) -> str | None:
    return str(items[index].id) if items and isinstance(items[index].id, str) else None


for _prefix in PREFIXES:
    _name = _prefix.replace("/", "_")
    responses.add_url_rule(f"{_prefix}/responses", f"create{_name}", create, methods=["POST"])
    responses.add_url_rule(f"{_prefix}/responses/<response_id>", f"retrieve{_name}", retrieve,
                           methods=["GET"])
    responses.add_url_rule(f"{_prefix}/responses/<response_id>", f"delete{_name}", delete,
                           methods=["DELETE"])
    responses.add_url_rule(f"{_prefix}/responses/<response_id>/input_items",
                           f"input_items{_name}", input_items, methods=["GET"])
