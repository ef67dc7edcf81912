"""Where `model: "agent/<name>"` finds its agent: the org's own, else the config's.

An org's agents are defined over the admin API (`/v1/admin/agents`, ingress/admin.py) and
kept in Redis: `names.agent(org, name)` holds the `Agent` as JSON, `names.agents(org)` the
set of its names. An org's agent may take the name of a config agent: for that org it
replaces the config's (and deleting it brings the config's back). Config agents are
read-only over the API; they change with the config.

Access is checked here, as `ingress.control` does for keys: admins manage their own org,
the operator the org it names, members nothing.
"""

from __future__ import annotations

import re

import msgspec

from ingress.access import managing_org
from ingress.control import check_query_id
from ingress.keys import Identity
from schemas import names
from schemas.admin import AgentList, AgentView, Source
from schemas.agents import NAME, Agent, Variable
from schemas.config import Config
from schemas.errors import GatewayError
from workers.connection import RedisClient

_NAME = re.compile(NAME)
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Agent).decode
HIDDEN = ""  # what a secret variable's value reads as over the API: it is never shown back


def check_name(name: str) -> None:
    """422 for an agent name that `model: "agent/<name>"` could not name."""
    if not _NAME.fullmatch(name):
        raise GatewayError(422, "validation_error",
                           f"invalid request: agent name {name!r} is not valid (1-64 letters, "
                           "digits, '.', '_' or '-', starting with a letter or digit)",
                           param="name", details={"field": "$.name", "reason": "invalid name"})


def _view(name: str, source: Source, agent: Agent, active: bool) -> AgentView:
    variables = {k: Variable(HIDDEN, True) if v.secret else v for k, v in agent.variables.items()}
    return AgentView(name=name, source=source, active=active, model=agent.model,
                     instructions=agent.instructions, tools=agent.tools, variables=variables,
                     max_tool_calls=agent.max_tool_calls)


class Agents:
    """The agents a caller may invoke, and their management over the admin API."""

    MAX_PER_ORG = 1000  # an org's own agents: a list answer stays small, Redis bounded

    def __init__(self, config: Config, redis: RedisClient) -> None:
        self.config = config
        self.redis = redis
        self.slugs = frozenset(model.slug for model in config.models)

    async def get(self, org: str, name: str) -> Agent | None:
        """The agent `name` as `org` sees it (its own first, else the config's); None if
        there is none."""
        if org and _NAME.fullmatch(name):
            raw = await self.redis.get(names.agent(org, name))
            if raw is not None:
                return _decode(raw)
        return self.config.agents.get(name)

    async def _own(self, org: str) -> dict[str, Agent]:
        wanted = sorted(n.decode() for n in await self.redis.smembers(names.agents(org)))
        if not wanted:
            return {}
        values = await self.redis.mget([names.agent(org, n) for n in wanted])
        return {n: _decode(raw) for n, raw in zip(wanted, values, strict=True) if raw is not None}

    async def list(self, caller: Identity, org: str | None = None) -> AgentList:
        """Every agent the org may invoke: its own and the config's, each marked by source;
        `active: false` marks a config agent the org's own of the same name replaces."""
        org = self._org(caller, org)
        own = await self._own(org)
        views = [_view(n, "org", a, True) for n, a in own.items()]
        views += [_view(n, "config", a, n not in own) for n, a in sorted(self.config.agents.items())]
        return AgentList(sorted(views, key=lambda v: (v.name, v.source != "org")))

    async def read(self, caller: Identity, name: str, org: str | None = None) -> AgentView:
        """The agent `name` invokes for the org (404 when there is none)."""
        org = self._org(caller, org)
        check_name(name)
        raw = await self.redis.get(names.agent(org, name))
        if raw is not None:
            return _view(name, "org", _decode(raw), True)
        if name in self.config.agents:
            return _view(name, "config", self.config.agents[name], True)
        raise _missing(name)

    async def put(self, caller: Identity, name: str, agent: Agent,
                  org: str | None = None) -> tuple[AgentView, bool]:
        """Create or replace the org's agent `name`; True when it was created."""
        org = self._org(caller, org)
        check_name(name)
        if agent.model not in self.slugs:
            raise GatewayError(422, "validation_error",
                               f"invalid request: model {agent.model!r} is not a slug of the "
                               "catalog (GET /v1/models lists them)", param="model",
                               details={"field": "$.model", "reason": "unknown model"})
        if (await self.redis.scard(names.agents(org)) >= self.MAX_PER_ORG
                and not await self.redis.sismember(names.agents(org), name)):
            raise GatewayError(409, "too_many_agents",
                               f"org {org!r} has {self.MAX_PER_ORG} agents, the most it may "
                               "have: delete one first", param="name")
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(names.agent(org, name), _encode(agent))
            added = pipe.sadd(names.agents(org), [name])
        return _view(name, "org", agent, True), bool(await added)

    async def delete(self, caller: Identity, name: str, org: str | None = None) -> AgentView:
        """Delete the org's agent `name`; a config agent is read-only (409)."""
        org = self._org(caller, org)
        check_name(name)
        raw = await self.redis.get(names.agent(org, name))
        if raw is None:
            if name in self.config.agents:
                raise GatewayError(409, "agent_read_only",
                                   f"agent {name!r} is defined in the gateway's config: it "
                                   "cannot be deleted over the API (an org's own agent of "
                                   "the same name replaces it for that org)", param="name")
            raise _missing(name)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete([names.agent(org, name)])
            pipe.srem(names.agents(org), [name])
        return _view(name, "org", _decode(raw), False)

    @staticmethod
    def _org(caller: Identity, org: str | None) -> str:
        check_query_id(org, "org")
        return managing_org(caller, org)


def _missing(name: str) -> GatewayError:
    return GatewayError(404, "not_found", f"no agent {name!r}", param="name")
