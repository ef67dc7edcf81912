"""Access keys: created and revoked by the CLI, looked up (and cached) by the ingress.

Secrets are shown once and stored only as their SHA-256 (invariant 6). A key's org
gets its plan when the org's first key is created.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

import coredis

from schemas import names
from schemas.errors import GatewayError
from schemas.keys import KeyRecord

SECRET_PREFIX = "sb-"
_CACHE_MAX = 100_000


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is calling: the key's id, org, project, and the org's plan (may be empty)."""

    key_id: str
    org: str
    project: str
    plan: str


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _text(raw: dict[bytes, bytes], field: str) -> str:
    return raw.get(field.encode(), b"").decode()


class KeyStore:
    """Keys in Redis, with a short positive cache so revocation lands within `cache_s`."""

    def __init__(self, redis: coredis.Redis[bytes], cache_s: float = 5.0) -> None:
        self.redis = redis
        self.cache_s = cache_s
        self._cache: dict[str, tuple[float, Identity]] = {}

    async def create(self, org: str, project: str = "", plan: str = "",
                     name: str = "") -> tuple[KeyRecord, str]:
        """Store a new key; returns its record and the secret (never stored)."""
        if not org:
            raise ValueError("org must not be empty")
        key_id = "key_" + secrets.token_hex(8)
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        secret_hash = hash_secret(secret)
        if plan:
            await self.redis.hsetnx(names.org(org), "plan", plan)
        org_plan = (await self.redis.hget(names.org(org), "plan") or b"").decode()
        record = KeyRecord(key_id=key_id, org=org, project=project, name=name, plan=org_plan,
                           created=int(time.time()), secret_hash=secret_hash)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(names.key_by_hash(secret_hash), {
                "key_id": key_id, "org": org, "project": project, "name": name,
                "created": str(record.created), "revoked": "0"})
            pipe.set(names.key_by_id(key_id), secret_hash)
            pipe.sadd(names.KEY_IDS, [key_id])
        return record, secret

    async def list(self, org: str | None = None) -> list[KeyRecord]:
        """Every key (of one org if given), oldest first; secrets are never listed."""
        records = []
        for key_id in await self.redis.smembers(names.KEY_IDS):
            record = await self._record_by_id(key_id.decode())
            if record is not None and (org is None or record.org == org):
                records.append(record)
        return sorted(records, key=lambda r: (r.created, r.key_id))

    async def revoke(self, key_id: str) -> bool:
        """Mark a key revoked; False if there is no such key."""
        secret_hash = await self.redis.get(names.key_by_id(key_id))
        if secret_hash is None:
            return False
        await self.redis.hset(names.key_by_hash(secret_hash.decode()), {"revoked": "1"})
        return True

    async def _record_by_id(self, key_id: str) -> KeyRecord | None:
        secret_hash = await self.redis.get(names.key_by_id(key_id))
        if secret_hash is None:
            return None
        raw = await self.redis.hgetall(names.key_by_hash(secret_hash.decode()))
        if not raw:
            return None
        org = _text(raw, "org")
        plan = (await self.redis.hget(names.org(org), "plan") or b"").decode()
        return KeyRecord(key_id=key_id, org=org, project=_text(raw, "project"),
                         name=_text(raw, "name"), plan=plan,
                         created=int(_text(raw, "created") or 0),
                         revoked=_text(raw, "revoked") == "1", secret_hash=secret_hash.decode())

    async def authenticate(self, secret: str | None) -> Identity:
        """The identity behind a secret, or a 401 GatewayError."""
        if not secret:
            raise GatewayError(401, "unauthorized", "missing access key: send 'Authorization: Bearer <key>'")
        secret_hash = hash_secret(secret)
        now = time.monotonic()
        cached = self._cache.get(secret_hash)
        if cached is not None and cached[0] > now:
            return cached[1]
        raw = await self.redis.hgetall(names.key_by_hash(secret_hash))
        if not raw or _text(raw, "revoked") == "1":
            self._cache.pop(secret_hash, None)
            raise GatewayError(401, "unauthorized", "invalid or revoked access key")
        org = _text(raw, "org")
        plan = (await self.redis.hget(names.org(org), "plan") or b"").decode()
        identity = Identity(_text(raw, "key_id"), org, _text(raw, "project"), plan)
        if self.cache_s > 0:
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
            self._cache[secret_hash] = (now + self.cache_s, identity)
        return identity
