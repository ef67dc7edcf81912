"""Orgs and their projects in Redis: an org's plan and limits, a project's limits.

An org is the hash `names.org(org)` (`plan`, `limits` JSON); it exists implicitly (no
plan, no limits) until configured. A project is the hash `names.project(org, project)`
(`name`, `limits`, `created`), listed in the set `names.projects(org)`. Each change to
an org is followed by `invalidate(KeyChange(orgs=[org]))`: every ingress drops the
cached keys of that org, so their identities pick up the new plan and limits at once.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ingress.keyring import check_id
from schemas import names
from schemas.keys import KeyChange
from schemas.limits import NO_LIMITS, LimitSet, decode_limits, limits_encoder
from workers.connection import RedisClient


@dataclass(frozen=True, slots=True)
class Org:
    """An org's stored settings (`plan` "" = none)."""

    org: str
    plan: str
    limits: LimitSet


@dataclass(frozen=True, slots=True)
class Project:
    """A project's stored settings."""

    org: str
    name: str
    limits: LimitSet
    created: int


class OrgStore:
    """Read and change orgs and projects; `invalidate` is `KeyStore.invalidate`."""

    def __init__(self, redis: RedisClient,
                 invalidate: Callable[[KeyChange], Awaitable[None]]) -> None:
        self.redis = redis
        self._invalidate = invalidate

    async def get(self, org: str) -> Org:
        """An org's settings (none stored: no plan, no limits)."""
        plan, limits = await self.redis.hmget(names.org(org), ["plan", "limits"])
        return Org(org, (plan or b"").decode(), decode_limits(limits))

    async def update(self, org: str, *, plan: str | None = None,
                     limits: LimitSet | None = None) -> Org:
        """Replace the plan ("" clears it) and/or the limits; every ingress sees it at once."""
        check_id(org, "org")
        fields = {}
        if plan is not None:
            fields["plan"] = plan
        if limits is not None:
            fields["limits"] = limits_encoder.encode(limits).decode()
        if fields:
            await self.redis.hset(names.org(org), fields)
            await self._invalidate(KeyChange(orgs=[org]))
        return await self.get(org)

    async def adopt_plan(self, org: str, plan: str) -> str:
        """Give `plan` to an org that has none; returns the org's plan now."""
        check_id(org, "org")
        if await self.redis.hsetnx(names.org(org), "plan", plan):
            await self._invalidate(KeyChange(orgs=[org]))
        return (await self.get(org)).plan

    async def project(self, org: str, name: str) -> Project | None:
        """One project of an org, or None."""
        raw = await self.redis.hgetall(names.project(org, name))
        if not raw:
            return None
        return Project(org, name, decode_limits(raw.get(b"limits")),
                       int(raw.get(b"created", b"0") or 0))

    async def create_project(self, org: str, name: str,
                             limits: LimitSet = NO_LIMITS) -> Project | None:
        """A new project; None if the org has one of that name already."""
        check_id(org, "org")
        check_id(name, "project")
        created = int(time.time())
        if not await self.redis.hsetnx(names.project(org, name), "created", str(created)):
            return None
        fields = {"name": name}
        if limits.any():
            fields["limits"] = limits_encoder.encode(limits).decode()
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(names.project(org, name), fields)
            pipe.sadd(names.projects(org), [name])
        if limits.any():  # keys made in it before (by the CLI) now fall under its limits
            await self._invalidate(KeyChange(orgs=[org]))
        return Project(org, name, limits, created)

    async def update_project(self, org: str, name: str, limits: LimitSet) -> Project | None:
        """Replace a project's limits; None if the org has no such project. Every ingress
        sees them at once (the org's cached keys are dropped)."""
        if await self.project(org, name) is None:
            return None
        await self.redis.hset(names.project(org, name),
                              {"limits": limits_encoder.encode(limits).decode()})
        await self._invalidate(KeyChange(orgs=[org]))
        return await self.project(org, name)

    async def projects(self, org: str) -> list[Project]:
        """An org's projects, by name."""
        found = []
        for name in sorted(n.decode() for n in await self.redis.smembers(names.projects(org))):
            if (project := await self.project(org, name)) is not None:
                found.append(project)
        return found
