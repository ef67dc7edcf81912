"""The management operations, for the admin API and the CLI alike (one copy of each).

Every operation takes the caller's `Identity` and, where it has one, the request Struct
the edge decoded; it checks access with `ingress.access` and answers a wire Struct, or
raises a `GatewayError`. The CLI calls them as `OPERATOR`. Access rules:
- members manage nothing (403); admins manage their own org (naming another: 403; an id
  of another org: 404, as a missing one); the operator manages every org and names it.
- an org's plan is set by the operator only; its admins set the org's limits and their
  keys' and projects' limits (what the org's own keys may use, within its plan).
"""

from __future__ import annotations

from msgspec import UnsetType

from ingress.access import forbidden, managing_org, require_manager, visible
from ingress.keyring import KeyRevoked
from ingress.keys import Identity, KeyStore
from ingress.orgs import Org, OrgStore, Project
from schemas.admin import (
    KeyCreate,
    KeyCreated,
    KeyList,
    KeyPatch,
    KeyView,
    OrgUpdate,
    OrgView,
    ProjectCreate,
    ProjectList,
    ProjectPatch,
    ProjectView,
    valid_id,
)
from schemas.errors import GatewayError
from schemas.keys import KeyRecord
from schemas.limits import NO_LIMITS, LimitSet

OPERATOR = Identity(key_id="cli", org="", project="", plan="", role="operator")
"""The CLI's caller: whoever runs it can reach Redis, so it may do everything."""


def key_view(record: KeyRecord) -> KeyView:
    """A key record as the API shows it (no secret hash)."""
    return KeyView(id=record.key_id, org=record.org, project=record.project, role=record.role,
                   name=record.name, limits=record.limits, created=record.created,
                   last_used=record.last_used, revoked=record.revoked)


def _created(record: KeyRecord, secret: str) -> KeyCreated:
    view = key_view(record)
    return KeyCreated(**{f: getattr(view, f) for f in view.__struct_fields__}, secret=secret)


def _org_view(org: Org) -> OrgView:
    return OrgView(org=org.org, plan=org.plan, limits=org.limits)


def _project_view(project: Project) -> ProjectView:
    return ProjectView(org=project.org, name=project.name, limits=project.limits,
                       created=project.created)


def check_query_id(value: str | None, field: str) -> None:
    """422 naming `field` for an org or project id that cannot exist (a query parameter or
    a path segment; bodies are checked by their Struct)."""
    if value is not None and not valid_id(value):
        raise GatewayError(422, "validation_error",
                           f"invalid request: {field} {value!r} is not a valid id (1-64 "
                           "letters, digits, '.', '_' or '-', starting with a letter or digit)",
                           param=field, details={"field": f"$.{field}", "reason": "invalid id"})


def _given_limits(body: KeyPatch | OrgUpdate) -> LimitSet | None:
    """The limits a PATCH / PUT sets (null: none at all), or None when it leaves them."""
    if isinstance(body.limits, UnsetType):
        return None
    return NO_LIMITS if body.limits is None else body.limits


def _no_key(key_id: str) -> GatewayError:
    return GatewayError(404, "not_found", f"no key {key_id!r}", param="id")


class Control:
    """The management operations over one deployment's keys, orgs and projects."""

    def __init__(self, keys: KeyStore, plans: frozenset[str]) -> None:
        self.keys = keys
        self.orgs = OrgStore(keys.redis, keys.invalidate)
        self.plans = plans

    async def create_key(self, caller: Identity, body: KeyCreate, *,
                         make_project: bool = False) -> KeyCreated:
        """A new key in the caller's org (or the one an operator names). Its project must
        exist, unless `make_project` (the CLI) creates it when missing."""
        org = managing_org(caller, body.org)
        check_query_id(org, "org")
        project = body.project or ""
        if project and not make_project and await self.orgs.project(org, project) is None:
            raise GatewayError(404, "not_found", f"org {org!r} has no project {project!r}: "
                               "create it with POST /v1/admin/projects", param="project")
        record, secret = await self.keys.create(org, project, "", body.name, role=body.role,
                                                limits=body.limits)
        return _created(record, secret)

    async def create_operator_key(self, caller: Identity, name: str = "") -> KeyCreated:
        """A deployment-wide operator key (the CLI only: no HTTP path leads here)."""
        if caller.role != "operator":
            raise forbidden("only an operator may create operator keys")
        record, secret = await self.keys.create("", "", "", name, role="operator")
        return _created(record, secret)

    async def list_keys(self, caller: Identity, org: str | None = None,
                        project: str | None = None) -> KeyList:
        """The keys of the caller's org (the operator: of every org, or the one named)."""
        require_manager(caller)
        check_query_id(org, "org")
        check_query_id(project, "project")
        scope = org if caller.role == "operator" else managing_org(caller, org)
        records = await self.keys.list(scope, project)
        return KeyList([key_view(r) for r in records])

    async def _visible_key(self, caller: Identity, key_id: str) -> KeyRecord:
        require_manager(caller)
        record = await self.keys.get(key_id)
        # A key of another org is answered exactly as a missing one: ids reveal nothing.
        if record is None or not visible(caller, record.org):
            raise _no_key(key_id)
        if record.role == "operator" and caller.role != "operator":
            raise _no_key(key_id)
        return record

    async def get_key(self, caller: Identity, key_id: str) -> KeyView:
        """One key's record (revoked ones too)."""
        return key_view(await self._visible_key(caller, key_id))

    async def update_key(self, caller: Identity, key_id: str, body: KeyPatch) -> KeyView:
        """Set a key's name and/or limits; every ingress sees it at once."""
        await self._visible_key(caller, key_id)
        name = body.name if isinstance(body.name, str) else None
        record = await self.keys.ring.update(key_id, name=name, limits=_given_limits(body))
        if record is None:
            raise _no_key(key_id)
        return key_view(record)

    async def revoke_key(self, caller: Identity, key_id: str) -> KeyView:
        """Revoke a key on every ingress at once; its record stays readable."""
        await self._visible_key(caller, key_id)
        record = await self.keys.revoke(key_id)
        if record is None:
            raise _no_key(key_id)
        return key_view(record)

    async def rotate_key(self, caller: Identity, key_id: str) -> KeyCreated:
        """A new secret for the same key; the old one stops working on every ingress."""
        await self._visible_key(caller, key_id)
        try:
            rotated = await self.keys.ring.rotate(key_id)
        except KeyRevoked:
            raise GatewayError(409, "key_revoked", f"key {key_id!r} is revoked: create a "
                               "new one instead", param="id") from None
        if rotated is None:
            raise _no_key(key_id)
        return _created(*rotated)

    async def get_org(self, caller: Identity, org: str) -> OrgView:
        """An org's plan and limits."""
        check_query_id(org, "org")
        return _org_view(await self.orgs.get(managing_org(caller, org)))

    async def update_org(self, caller: Identity, org: str, body: OrgUpdate) -> OrgView:
        """Set an org's limits and budget (its admin or the operator) and/or its plan
        (one of the config's; the operator only: the plan is the org's deal with the
        deployment, while limits and budget are caps the org sets on itself)."""
        check_query_id(org, "org")
        org = managing_org(caller, org)
        plan = None if isinstance(body.plan, UnsetType) else body.plan or ""
        if plan is not None and caller.role != "operator":
            raise forbidden("an org's plan is set by the operator")
        if plan and plan not in self.plans:
            raise GatewayError(422, "validation_error",
                               f"invalid request: plan {plan!r} is not in the config "
                               f"(plans: {', '.join(sorted(self.plans)) or 'none'})",
                               param="plan", details={"field": "$.plan", "reason": "unknown plan"})
        updated = await self.orgs.update(org, plan=plan, limits=_given_limits(body))
        return _org_view(updated)

    async def create_project(self, caller: Identity, body: ProjectCreate) -> ProjectView:
        """A new project in the caller's org (or the one an operator names)."""
        org = managing_org(caller, body.org)
        check_query_id(org, "org")
        project = await self.orgs.create_project(org, body.name, body.limits)
        if project is None:
            raise GatewayError(409, "conflict", f"org {org!r} has a project {body.name!r} "
                               "already", param="name")
        return _project_view(project)

    async def list_projects(self, caller: Identity, org: str | None = None) -> ProjectList:
        """The projects of the caller's org (or the one an operator names)."""
        check_query_id(org, "org")
        return ProjectList([_project_view(p) for p in
                            await self.orgs.projects(managing_org(caller, org))])

    async def update_project(self, caller: Identity, name: str, body: ProjectPatch) -> ProjectView:
        """Replace a project's limits (its org's admin or the operator); 404 for a project
        the org does not have."""
        org = managing_org(caller, body.org)
        check_query_id(org, "org")
        check_query_id(name, "name")
        project = await self.orgs.update_project(org, name, body.limits or NO_LIMITS)
        if project is None:
            raise GatewayError(404, "not_found", f"org {org!r} has no project {name!r}",
                               param="name")
        return _project_view(project)
