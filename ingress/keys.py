"""Access keys looked up (and cached) by the ingress; their records are managed by
`ingress.keyring.KeyRing` (`KeyStore.ring`), through the admin API or the CLI.

Secrets are shown once and stored only as their SHA-256 (invariant 6). When each key
was last used is kept in memory and written every `LAST_USED_FLUSH_S` by
`serve_last_used` (a task of the server's nursery), never by the request itself.

Each ingress caches what it looked up: found keys for `cache_s`, unknown ones for
`miss_cache_s` (bounded in number, so guessing costs no Redis lookup per guess). A change
that must reach every ingress at once (revocation, rotation, limit and plan changes) goes
through `invalidate`, which publishes a `KeyChange`; every ingress listens
(`serve_invalidations`) and drops those entries within milliseconds. While that
subscription is down the cache lifetimes still bound the delay, and on every
(re-)subscription the whole cache is dropped, since changes may have been missed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import coredis
import msgspec
import trio

from ingress.keyring import SECRET_PREFIX, KeyRing, hash_secret
from schemas import names
from schemas.errors import GatewayError
from schemas.keys import ROLES, KeyChange, KeyRecord, Role
from schemas.limits import NO_LIMITS, LimitSet, ScopedLimits, decode_limits
from workers.connection import SUBSCRIBED, RedisClient, publish, subscription
from workers.logs import log_event

__all__ = ["SECRET_PREFIX", "Identity", "KeyStore", "hash_secret"]

_CACHE_MAX = 100_000
MISS_CACHE_MAX = 10_000  # unknown keys remembered at most (oldest forgotten first)
RESUBSCRIBE_S = 0.5
LAST_USED_FLUSH_S = 2.0  # how stale a key's `last_used` may be (and how often it is written)
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


def _text(raw: dict[bytes, bytes], field: str) -> str:
    return raw.get(field.encode(), b"").decode()


class KeyStore:
    """Keys in Redis, with short caches of found and unknown keys, dropped on change."""

    def __init__(self, redis: RedisClient, cache_s: float = 5.0,
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
        self.ring = KeyRing(redis, self.invalidate)
        # Keys seen since the last flush -> when (unix time); written by `serve_last_used`.
        self._used: dict[str, int] = {}

    def statistics(self) -> dict[str, int]:
        return {"cached": len(self._cache), "misses_cached": len(self._misses)}

    async def create(self, org: str, project: str = "", plan: str = "", name: str = "", *,
                     role: Role = "member", limits: LimitSet = NO_LIMITS
                     ) -> tuple[KeyRecord, str]:
        """Store a new key; returns its record and the secret (see `KeyRing.create`)."""
        return await self.ring.create(org, project, plan, name, role=role, limits=limits)

    async def get(self, key_id: str) -> KeyRecord | None:
        """A key's record (revoked ones too), or None."""
        return await self.ring.get(key_id)

    async def list(self, org: str | None = None, project: str | None = None) -> list[KeyRecord]:
        """Every key (of one org, one project, if given), oldest first; never a secret."""
        return await self.ring.list(org, project)

    async def revoke(self, key_id: str) -> KeyRecord | None:
        """Mark a key revoked, on every ingress at once; None if there is no such key."""
        return await self.ring.revoke(key_id)

    async def invalidate(self, change: KeyChange) -> None:
        """Make every ingress drop the cached keys `change` names (this process at once).

        The one entry point for changes to a key or an org that caches must not outlive
        (revocation; rotation and limit changes): call it after the change is stored.
        """
        self.drop(change)
        await publish(self.redis, names.KEYS_CHANGED, _change_encoder.encode(change))

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
        """Listen on `{sb}:keys:changed` and drop what each change names, until cancelled.

        `started()` at once (lookups work meanwhile; the cache lifetimes bound staleness);
        `wait_listening` tells when the first subscription is in place. A lost
        subscription is re-made, and every (re-)subscription drops the whole cache.
        """
        task_status.started()
        while True:
            try:
                async with subscription(self.redis, names.KEYS_CHANGED) as pubsub:
                    async for message in pubsub:
                        if message["type"] == SUBSCRIBED:
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

    async def authenticate(self, secret: str | None) -> Identity:
        """The identity behind a secret, or a 401 GatewayError."""
        if not secret:
            raise GatewayError(401, "unauthorized", "missing access key: send 'Authorization: Bearer <key>'")
        secret_hash = hash_secret(secret)
        now = time.monotonic()
        cached = self._cache.get(secret_hash)
        if cached is not None and cached[0] > now:
            self._used[cached[1].key_id] = int(time.time())
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
        self._used[identity.key_id] = int(time.time())
        return identity

    async def _identity(self, raw: dict[bytes, bytes]) -> Identity:
        """A key's identity from its hash, with its org's plan and the limits of its org,
        project and key (one more round trip, pipelined)."""
        org, project = _text(raw, "org"), _text(raw, "project")
        role = _text(raw, "role") or "member"
        if role == "operator":  # no org, no plan, no limits: it serves no inference
            return Identity(_text(raw, "key_id"), "", "", "", "operator")
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
        return Identity(_text(raw, "key_id"), org, project, (plan or b"").decode(),
                        role if role in ROLES else "member",  # type: ignore[arg-type]
                        tuple(s for s in scoped if s.limits.any()))

    async def serve_last_used(self, *, every_s: float = LAST_USED_FLUSH_S,
                              task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                              ) -> None:
        """Write when each key was last used, every `every_s`, until cancelled (then once
        more, bounded): one HSET per flush for all keys seen, never one per request."""
        task_status.started()
        try:
            while True:
                await trio.sleep(every_s)
                await self.flush_last_used()
        finally:
            # Best effort: at shutdown the client may be closing under us already.
            with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                try:
                    await self.flush_last_used()
                except Exception as exc:
                    log_event("last_used_flush_failed", error=type(exc).__name__)

    async def flush_last_used(self) -> None:
        """Store the keys seen since the last flush (kept for the next one on failure)."""
        if not self._used:
            return
        seen, self._used = self._used, {}
        try:
            await self.redis.hset(names.KEYS_LAST_USED, {k: str(v) for k, v in seen.items()})
        except (coredis.exceptions.RedisError, OSError) as exc:
            log_event("last_used_flush_failed", error=type(exc).__name__, keys=len(seen))
            for key_id, when in seen.items():
                self._used.setdefault(key_id, when)

    def _remember_miss(self, secret_hash: str, now: float) -> None:
        if self.miss_cache_s <= 0 or self.miss_cache_max <= 0:
            return
        self._misses.pop(secret_hash, None)
        while len(self._misses) >= self.miss_cache_max:
            del self._misses[next(iter(self._misses))]  # the oldest entry
        self._misses[secret_hash] = now + self.miss_cache_s
