"""Console sign-ins: an access key exchanged for a session cookie, and the CSRF tokens.

Signing in checks the key like any API call (`Gateway.authenticate`), then stores a
session in Redis (`names.console_session`, by the SHA-256 of the cookie's random token,
so a Redis dump holds no usable cookie) with the key's id and the session's CSRF token;
the key's secret is never stored. Every page reads the session and the key's record
again, so a revoked key signs its sessions out on their next page, on every ingress.

CSRF: every state-changing form carries the session's token in a hidden `csrf` field,
compared in constant time (`Sessions.check_csrf`). The sign-in form, before there is a
session, carries a token that must equal the `sb_console_csrf` cookie set with the form
(double submit), so another site cannot sign a browser in with its own key.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from ingress.keys import Identity, KeyStore
from schemas import names
from schemas.errors import GatewayError
from workers.connection import RedisClient

COOKIE = "sb_console"  # the session token (HttpOnly)
CSRF_COOKIE = "sb_console_csrf"  # the sign-in form's double-submit token
PATH = "/console"


@dataclass(frozen=True, slots=True)
class Session:
    """One signed-in browser: who it is, the key's name, and its CSRF token."""

    identity: Identity
    key_name: str
    csrf: str


def new_token() -> str:
    """A random token for a cookie or a form (256 bits)."""
    return secrets.token_urlsafe(32)


def same_token(given: str | None, expected: str) -> bool:
    """Whether a form's token is the expected one (constant time; empty never matches)."""
    return bool(given) and bool(expected) and hmac.compare_digest(given or "", expected)


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Sessions:
    """Console sessions in Redis, shared by every ingress process."""

    def __init__(self, redis: RedisClient, keys: KeyStore, ttl_s: int) -> None:
        self.redis = redis
        self.keys = keys
        self.ttl_s = ttl_s

    async def open(self, identity: Identity) -> str:
        """A new session for a key that just authenticated; returns the cookie's token."""
        token = new_token()
        name = names.console_session(_hash(token))
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(name, {"key_id": identity.key_id, "csrf": new_token(),
                             "created": str(int(time.time()))})
            pipe.expire(name, self.ttl_s)
        return token

    async def read(self, token: str | None) -> Session | None:
        """The session behind a cookie's token, or None when there is none, it expired, or
        its key is gone or revoked (then the session is deleted too)."""
        if not token:
            return None
        name = names.console_session(_hash(token))
        raw = await self.redis.hgetall(name)
        if not raw:
            return None
        record = await self.keys.get(raw.get(b"key_id", b"").decode())
        if record is None or record.revoked:
            await self.redis.delete([name])
            return None
        identity = Identity(record.key_id, record.org, record.project, record.plan, record.role)
        return Session(identity, record.name, raw.get(b"csrf", b"").decode())

    async def close(self, token: str | None) -> None:
        """Sign out: the session is gone at once, on every ingress."""
        if token:
            await self.redis.delete([names.console_session(_hash(token))])

    @staticmethod
    def check_csrf(given: str | None, expected: str) -> None:
        """403 unless a form carries the expected CSRF token."""
        if not same_token(given, expected):
            raise GatewayError(403, "csrf_failed", "this form is out of date or did not come "
                               "from the console: reload the page and try again")
