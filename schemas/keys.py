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
