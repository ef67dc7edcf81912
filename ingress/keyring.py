"""Key records in Redis: create, read, list, revoke, rotate and update them.

A key is the hash `names.key_by_hash(sha256(secret))` (fields `key_id`, `org`, `project`,
`name`, `role`, `limits`, `created`, `revoked`) plus `names.key_by_id(id)` -> that hash,
and its id in `names.KEY_IDS`. Changes go through one Lua step that checks the id still
points at the hash it read, so a rotation racing a revocation cannot resurrect or lose
either; after each change the caller's `invalidate` drops the key from every ingress's cache.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Awaitable, Callable

from schemas import names
from schemas.admin import valid_id
from schemas.keys import ROLES, KeyChange, KeyRecord, Role
from schemas.limits import NO_LIMITS, LimitSet, decode_limits, limits_encoder
from workers.connection import RedisClient

SECRET_PREFIX = "sb-"
_ATTEMPTS = 5  # re-reads of a key id whose secret changed meanwhile (a racing rotation)

# KEYS: key_by_id(id), key_by_hash(hash read); ARGV: that hash, then field, value pairs.
# 1: stored; 0: the id points elsewhere now (read again); -1: no such key.
_UPDATE = """
local current = redis.call('GET', KEYS[1])
if not current then return -1 end
if current ~= ARGV[1] then return 0 end
if redis.call('EXISTS', KEYS[2]) == 0 then return -1 end
redis.call('HSET', KEYS[2], unpack(ARGV, 2))
return 1
"""
# KEYS: key_by_id(id), key_by_hash(old), key_by_hash(new); ARGV: old hash, new hash.
# 1: rotated; 0: the id points elsewhere now; -1: no such key; -2: revoked.
_ROTATE = """
local current = redis.call('GET', KEYS[1])
if not current or redis.call('EXISTS', KEYS[2]) == 0 then return -1 end
if current ~= ARGV[1] then return 0 end
if redis.call('HGET', KEYS[2], 'revoked') == '1' then return -2 end
redis.call('RENAME', KEYS[2], KEYS[3])
redis.call('SET', KEYS[1], ARGV[2])
return 1
"""


class KeyRevoked(Exception):
    """A revoked key cannot be rotated."""


def hash_secret(secret: str) -> str:
    """The form a secret is stored and looked up in (invariant 6)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> tuple[str, str]:
    """A fresh secret and its SHA-256 (the only form stored)."""
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    return secret, hash_secret(secret)


def _text(raw: dict[bytes, bytes], field: str) -> str:
    return raw.get(field.encode(), b"").decode()


def check_id(value: str, field: str) -> None:
    """ValueError naming `field` unless `value` may name an org or project."""
    if not valid_id(value):
        raise ValueError(f"{field} {value!r} is not a valid id: 1-64 letters, digits, "
                         "'.', '_' or '-', starting with a letter or digit")


class KeyRing:
    """The management half of the key store (the lookup half is `ingress.keys.KeyStore`)."""

    def __init__(self, redis: RedisClient,
                 invalidate: Callable[[KeyChange], Awaitable[None]]) -> None:
        self.redis = redis
        self._invalidate = invalidate
        self._update = redis.register_script(_UPDATE)
        self._rotate = redis.register_script(_ROTATE)

    async def create(self, org: str, project: str = "", plan: str = "", name: str = "", *,
                     role: Role = "member", limits: LimitSet = NO_LIMITS
                     ) -> tuple[KeyRecord, str]:
        """Store a new key; returns its record and the secret (never stored).

        Operator keys have no org and no project; every other key names a valid org. The
        project, if any, is created when missing; `plan` is given to an org without one.
        """
        if role == "operator":
            if org or project:
                raise ValueError("an operator key belongs to no org and no project")
        else:
            check_id(org, "org")
            if project:
                check_id(project, "project")
        key_id = "key_" + secrets.token_hex(8)
        secret, secret_hash = new_secret()
        created = int(time.time())
        if plan:
            await self.redis.hsetnx(names.org(org), "plan", plan)
        fields = {"key_id": key_id, "org": org, "project": project, "name": name, "role": role,
                  "created": str(created), "revoked": "0"}
        if limits.any():
            fields["limits"] = limits_encoder.encode(limits).decode()
        async with self.redis.pipeline(transaction=True) as pipe:
            if project:
                pipe.hsetnx(names.project(org, project), "created", str(created))
                pipe.sadd(names.projects(org), [project])
            pipe.hset(names.key_by_hash(secret_hash), fields)
            pipe.set(names.key_by_id(key_id), secret_hash)
            pipe.sadd(names.KEY_IDS, [key_id])
        record = await self.get(key_id)
        assert record is not None
        return record, secret

    async def get(self, key_id: str) -> KeyRecord | None:
        """A key's record (revoked ones too), or None."""
        secret_hash = await self.redis.get(names.key_by_id(key_id))
        if secret_hash is None:
            return None
        async with self.redis.pipeline(transaction=False) as pipe:
            fields = pipe.hgetall(names.key_by_hash(secret_hash.decode()))
            used = pipe.hget(names.KEYS_LAST_USED, key_id)
        raw, last_used = await fields, await used
        if not raw:
            return None
        org = _text(raw, "org")
        plan = (await self.redis.hget(names.org(org), "plan") or b"").decode() if org else ""
        role = _text(raw, "role") or "member"
        return KeyRecord(key_id=key_id, org=org, project=_text(raw, "project"),
                         name=_text(raw, "name"), plan=plan,
                         role=role if role in ROLES else "member",  # type: ignore[arg-type]
                         limits=decode_limits(raw.get(b"limits")),
                         created=int(_text(raw, "created") or 0),
                         last_used=int(last_used) if last_used else None,
                         revoked=_text(raw, "revoked") == "1", secret_hash=secret_hash.decode())

    async def list(self, org: str | None = None, project: str | None = None) -> list[KeyRecord]:
        """Every key (of one org, one project, if given), oldest first; never a secret."""
        records = []
        for key_id in await self.redis.smembers(names.KEY_IDS):
            record = await self.get(key_id.decode())
            if record is None or (org is not None and record.org != org):
                continue
            if project is None or record.project == project:
                records.append(record)
        return sorted(records, key=lambda r: (r.created, r.key_id))

    async def revoke(self, key_id: str) -> KeyRecord | None:
        """Mark a key revoked (its record stays readable); None if there is no such key."""
        return await self._change(key_id, {"revoked": "1"})

    async def update(self, key_id: str, *, name: str | None = None,
                     limits: LimitSet | None = None) -> KeyRecord | None:
        """Replace a key's name and/or limits; None if there is no such key."""
        fields = {}
        if name is not None:
            fields["name"] = name
        if limits is not None:
            fields["limits"] = limits_encoder.encode(limits).decode()
        return await self._change(key_id, fields)

    async def rotate(self, key_id: str) -> tuple[KeyRecord, str] | None:
        """A new secret for the same key (id, settings); the old secret stops working.
        None if there is no such key; KeyRevoked if it is revoked."""
        for _ in range(_ATTEMPTS):
            old = await self.redis.get(names.key_by_id(key_id))
            if old is None:
                return None
            secret, new_hash = new_secret()
            done = await self._rotate.execute(
                keys=[names.key_by_id(key_id), names.key_by_hash(old.decode()),
                      names.key_by_hash(new_hash)], args=[old.decode(), new_hash])
            if done == -1:
                return None
            if done == -2:
                raise KeyRevoked(key_id)
            if done == 1:
                # Stored first: an ingress that misses the broadcast still stops within cache_s.
                await self._invalidate(KeyChange(secret_hashes=[old.decode()]))
                record = await self.get(key_id)
                return (record, secret) if record is not None else None
        raise RuntimeError(f"key {key_id} kept changing while being rotated")

    async def _change(self, key_id: str, fields: dict[str, str]) -> KeyRecord | None:
        for _ in range(_ATTEMPTS):
            secret_hash = await self.redis.get(names.key_by_id(key_id))
            if secret_hash is None:
                return None
            if not fields:
                return await self.get(key_id)
            args = [secret_hash.decode(), *(part for item in fields.items() for part in item)]
            done = await self._update.execute(
                keys=[names.key_by_id(key_id), names.key_by_hash(secret_hash.decode())],
                args=args)
            if done == -1:
                return None
            if done == 1:
                await self._invalidate(KeyChange(secret_hashes=[secret_hash.decode()]))
                return await self.get(key_id)
        raise RuntimeError(f"key {key_id} kept changing while being updated")
