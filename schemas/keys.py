"""Access-key records as stored in Redis (a hash per key, fields as below)."""

from __future__ import annotations

from msgspec import Struct


class KeyRecord(Struct, kw_only=True):
    key_id: str
    org: str
    project: str = ""
    name: str = ""
    plan: str = ""
    created: int = 0
    revoked: bool = False
    secret_hash: str = ""


class KeyChange(Struct, kw_only=True, forbid_unknown_fields=False):
    """Published on `names.KEYS_CHANGED` (JSON): cached keys every ingress must drop.

    By secret hash (a revoked or rotated key) or by org (its plan or limits changed).
    """

    secret_hashes: list[str] = []
    orgs: list[str] = []
