"""Access keys: created and revoked by the CLI, looked up (and cached) by the ingress.

Secrets are shown once and stored only as their SHA-256 (invariant 6). A key's org
gets its plan when the org's first key is created.

Each ingress caches what it looked up: found keys for `cache_s`, unknown ones for
`miss_cache_s` (bounded in number, so guessing costs no Redis lookup per guess). A change
that must reach every ingress at once (revocation; later rotation and limit changes) goes
through `invalidate`, which publishes a `KeyChange`; every ingress listens
(`serve_invalidations`) and drops those entries within milliseconds. While that
subscription is down the cache lifetimes still bound the delay, and on every
(re-)subscription the whole cache is dropped, since changes may have been missed.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

import coredis
import msgspec
import trio

from schemas import names
from schemas.errors import GatewayError
from schemas.keys import ROLES, KeyChange, KeyRecord, Role
from schemas.limits import ScopedLimits, decode_limits
from workers.connection import subscription
from workers.logs import log_event

SECRET_PREFIX = "sb-"
_CACHE_MAX = 100_000
MISS_CACHE_MAX = 10_000  # unknown keys remembered at most (oldest forgotten first)
RESUBSCRIBE_S = 0.5
_change_encoder = msgspec.json.Encoder()
_change_decoder = msgspec.json.Decoder(KeyChange)


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is calling: the key's id, org, project, the org's plan (may be empty), the
    key's role, and the limits of each scope it falls under that sets any (org, then
    project, then key)."""

    key_id: str
    org: str
    project: str
    plan: str
    role: Role = "member"
    limits: tuple[ScopedLimits, ...] = ()


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _text(raw: dict[bytes, bytes], field: str) -> str:
    return raw.get(field.encode(), b"").decode()


class KeyStore:
    """Keys in Redis, with short caches of found and unknown keys, dropped on change."""

    def __init__(self, redis: coredis.Redis[bytes], cache_s: float = 5.0,
                 miss_cache_s: float = 5.0, miss_cache_max: int = MISS_CACHE_MAX) -> None:
        self.redis = redis
        self.cache_s = cache_s
        self.miss_cache_s = miss_cache_s
        self.miss_cache_max = miss_cache_max
        self._cache: dict[str, tuple[float, Identity]] = {}
        self._misses: dict[str, float] = {}  # secret hash -> until when it is known unknown
        # Bumped by every drop: a lookup that began before a drop caches nothing, so a
        # revocation racing a lookup cannot be undone by it.
        self._generation = 0
        self._listening = trio.Event()

    def statistics(self) -> dict[str, int]:
        return {"cached": len(self._cache), "misses_cached": len(self._misses)}

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
        # Stored first: an ingress that misses the broadcast still sees it within cache_s.
        await self.invalidate(KeyChange(secret_hashes=[secret_hash.decode()]))
        return True

    async def invalidate(self, change: KeyChange) -> None:
        """Make every ingress drop the cached keys `change` names (this process at once).

        The one entry point for changes to a key or an org that caches must not outlive
        (revocation; rotation and limit changes): call it after the change is stored.
        """
        self.drop(change)
        await self.redis.publish(names.KEYS_CHANGED, _change_encoder.encode(change))

    def drop(self, change: KeyChange | None = None) -> None:
        """Forget cached keys: those `change` names, or all of them."""
        self._generation += 1
        if change is None:
            self._cache.clear()
            self._misses.clear()
            return
        for secret_hash in change.secret_hashes:
            self._cache.pop(secret_hash, None)
            self._misses.pop(secret_hash, None)
        if change.orgs:
            orgs = set(change.orgs)
            for secret_hash in [h for h, (_, who) in self._cache.items() if who.org in orgs]:
                del self._cache[secret_hash]

    async def serve_invalidations(self, *,
                                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                                  ) -> None:
        """Listen on `sb:keys:changed` and drop what each change names, until cancelled.

        `started()` at once (lookups work meanwhile; the cache lifetimes bound staleness);
        `wait_listening` tells when the first subscription is in place. A lost
        subscription is re-made, and every (re-)subscription drops the whole cache.
        """
        task_status.started()
        while True:
            try:
                async with subscription(self.redis, names.KEYS_CHANGED) as pubsub:
                    async for message in pubsub:
                        if message["type"] == "subscribe":
                            self.drop()
                            self._listening.set()
                        elif message["type"] == "message" and isinstance(message["data"], bytes):
                            self._apply(message["data"])
            except Exception as exc:
                log_event("key_changes_error", error=type(exc).__name__)
            await trio.sleep(RESUBSCRIBE_S)

    async def wait_listening(self) -> None:
        """Wait until changes published by other processes reach this one."""
        await self._listening.wait()

    def _apply(self, data: bytes) -> None:
        try:
            change = _change_decoder.decode(data)
        except msgspec.DecodeError:
            log_event("key_change_undecodable", size=len(data))
            self.drop()  # something changed; forgetting everything is always safe
            return
        self.drop(change)

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
        if self._misses.get(secret_hash, 0.0) > now:
            raise GatewayError(401, "unauthorized", "invalid or revoked access key")
        generation = self._generation
        raw = await self.redis.hgetall(names.key_by_hash(secret_hash))
        if not raw or _text(raw, "revoked") == "1":
            self._cache.pop(secret_hash, None)
            if generation == self._generation:
                self._remember_miss(secret_hash, now)
            raise GatewayError(401, "unauthorized", "invalid or revoked access key")
        identity = await self._identity(raw)
        if self.cache_s > 0 and generation == self._generation:
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
            self._cache[secret_hash] = (now + self.cache_s, identity)
        return identity

    async def _identity(self, raw: dict[bytes, bytes]) -> Identity:
        """A key's identity from its hash, with its org's plan and the limits of its org,
        project and key (one more round trip, pipelined)."""
        org, project = _text(raw, "org"), _text(raw, "project")
        async with self.redis.pipeline(transaction=False) as pipe:
            org_fields = pipe.hmget(names.org(org), ["plan", "limits"])
            project_fields = pipe.hmget(names.project(org, project), ["limits"]) if project else None
        plan, org_limits = await org_fields
        scoped = [ScopedLimits(scope="org", id=org, limits=decode_limits(org_limits))]
        if project_fields is not None:
            (project_limits,) = await project_fields
            scoped.append(ScopedLimits(scope="project", id=f"{org}/{project}",
                                       limits=decode_limits(project_limits)))
        scoped.append(ScopedLimits(scope="key", id=_text(raw, "key_id"),
                                   limits=decode_limits(raw.get(b"limits"))))
        role = _text(raw, "role") or "member"
        return Identity(_text(raw, "key_id"), org, project, (plan or b"").decode(),
                        role if role in ROLES else "member",  # type: ignore[arg-type]
                        tuple(s for s in scoped if s.limits.any()))

    def _remember_miss(self, secret_hash: str, now: float) -> None:
        if self.miss_cache_s <= 0 or self.miss_cache_max <= 0:
            return
        self._misses.pop(secret_hash, None)
        while len(self._misses) >= self.miss_cache_max:
            del self._misses[next(iter(self._misses))]  # the oldest entry
        self._misses[secret_hash] = now + self.miss_cache_s
