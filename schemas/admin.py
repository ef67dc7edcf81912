"""The admin API's wire shapes (`/v1/admin/...`): requests decoded once at the edge, and
the records answered (never a secret's hash; a secret only in a create or rotate answer).

Org and project ids are names inside Redis keys (`:` separates their parts), so they are
restricted to `ID_PATTERN`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from msgspec import UNSET, Meta, Struct, UnsetType

from schemas.agents import Variable
from schemas.limits import NO_LIMITS, LimitSet

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_ID = re.compile(ID_PATTERN)
Id = Annotated[str, Meta(pattern=ID_PATTERN,
                         description="letters, digits, `.`, `_`, `-`; 1-64, not starting "
                         "with a punctuation mark")]
Name = Annotated[str, Meta(max_length=200)]


def valid_id(value: str) -> bool:
    """Whether `value` may name an org or a project."""
    return _ID.fullmatch(value) is not None


class KeyCreate(Struct, forbid_unknown_fields=True, kw_only=True):
    """`POST /v1/admin/keys`. `org` defaults to an admin's own (an operator must name it);
    `project` must name an existing project of the org. Operator keys are made by the CLI only."""

    role: Literal["member", "admin"]
    org: Id | None = None
    project: Id | None = None
    name: Name = ""
    limits: LimitSet = NO_LIMITS


class KeyPatch(Struct, forbid_unknown_fields=True, kw_only=True):
    """`PATCH /v1/admin/keys/{id}`: what is given replaces what is stored (`limits` as a
    whole: a limit left out or null is no limit)."""

    name: Name | UnsetType = UNSET
    limits: LimitSet | UnsetType | None = UNSET


class OrgUpdate(Struct, forbid_unknown_fields=True, kw_only=True):
    """`PUT /v1/admin/orgs/{org}`: `plan` names a plan of the config ("" or null: none,
    unlimited); `limits` replaces the org's limits. Fields left out stay as they are."""

    plan: Name | UnsetType | None = UNSET
    limits: LimitSet | UnsetType | None = UNSET


class ProjectCreate(Struct, forbid_unknown_fields=True, kw_only=True):
    """`POST /v1/admin/projects`: `name` is the project's id inside its org."""

    name: Id
    org: Id | None = None
    limits: LimitSet = NO_LIMITS


class ProjectPatch(Struct, forbid_unknown_fields=True, kw_only=True):
    """`PATCH /v1/admin/projects/{name}`: `limits` replaces the project's limits as a whole
    (a limit left out or null is no limit). `org` as in `ProjectCreate`."""

    org: Id | None = None
    limits: LimitSet | None = None


class KeyView(Struct, kw_only=True):
    """A key's record as the admin API shows it. `last_used`: unix time, recorded by the
    ingresses every few seconds (null: never used)."""

    id: str
    org: str
    project: str
    role: Literal["member", "admin", "operator"]
    name: str
    limits: LimitSet
    created: int
    last_used: int | None
    revoked: bool


class KeyCreated(KeyView, kw_only=True):
    """A created or rotated key: its record and its secret (shown this once only)."""

    secret: str


class KeyList(Struct):
    data: list[KeyView]


class OrgView(Struct, kw_only=True):
    """An org's settings; an org nobody configured has no plan and no limits."""

    org: str
    plan: str
    limits: LimitSet


class ProjectView(Struct, kw_only=True):
    org: str
    name: str
    limits: LimitSet
    created: int


class ProjectList(Struct):
    data: list[ProjectView]


Source = Literal["config", "org"]


class AgentView(Struct, kw_only=True):
    """An agent as `/v1/admin/agents` shows it (the body of a PUT is a `schemas.agents.Agent`).

    `source`: `config` (read-only, from `[agents.<name>]`) or `org` (the org's own, made
    over the API). `active`: whether `model: "agent/<name>"` invokes this one (an org's
    own agent replaces a config agent of the same name for that org). A secret variable's
    value is never shown back: it reads as "".
    """

    name: str
    source: Source
    active: bool
    model: str
    instructions: str
    tools: list[dict[str, Any]]
    variables: dict[str, Variable]
    max_tool_calls: int


class AgentList(Struct):
    data: list[AgentView]
