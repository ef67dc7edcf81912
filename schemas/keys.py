"""Access-key, project and org records as stored in Redis (a hash each, fields as below)."""

from __future__ import annotations

from typing import Literal

from msgspec import Struct

from schemas.limits import NO_LIMITS, LimitSet

Role = Literal["member", "admin", "operator"]
"""`member`: inference and the catalog. `admin`: also manages its own org (keys, projects,
limits, budget, usage). `operator`: manages every org (created with the CLI only); an
operator key has no org and serves no inference."""
ROLES: tuple[Role, ...] = ("member", "admin", "operator")


class KeyRecord(Struct, kw_only=True):
    key_id: str
    org: str
    project: str = ""
    name: str = ""
    plan: str = ""
    role: Role = "member"  # keys made before roles existed are members
    limits: LimitSet = NO_LIMITS
    created: int = 0
    last_used: int | None = None
    revoked: bool = False
    secret_hash: str = ""


class KeyChange(Struct, kw_only=True, forbid_unknown_fields=False):
    """Published on `names.KEYS_CHANGED` (JSON): cached keys every ingress must drop.

    By secret hash (a revoked or rotated key, a key's limits) or by org (its plan or
    limits, or one of its projects' limits, changed).
    """

    secret_hashes: list[str] = []
    orgs: list[str] = []
