"""Stored responses (`store: true`): one Redis hash each, written by the worker that ran it.

`{sb}:resp:{id}` holds `org`, `response` (the response object JSON), `input` (this request's
own input items), `context` (every item the model saw plus the output: what a later
`previous_response_id` continues) and `created`; it expires `responses.retention_days`
after it was written. Secret variables are put back as `{{name}}` in all of it.
"""

from __future__ import annotations

import time

import coredis
import msgspec
import trio

from schemas import names
from schemas.agents import Variable, redact_secrets
from schemas.errors import GatewayError
from schemas.responses import Item, Resolved
from workers.connection import RedisClient

_encode = msgspec.json.Encoder().encode


def redacted(data: bytes, secrets: dict[str, Variable]) -> bytes:
    """JSON `data` with every secret value (as JSON writes it) put back as `{{name}}`."""
    if not secrets:
        return data
    # A value is matched as it appears inside a JSON string: quotes and escapes encoded.
    escaped = {name: Variable(_encode(v.value)[1:-1].decode(), secret=True)
               for name, v in secrets.items()}
    return redact_secrets(data.decode(), escaped).encode()


async def store(redis: RedisClient, *, org: str, resolved: Resolved,
                response_id: str, response: bytes, output: list[Item], retention_days: int,
                timeout_s: float) -> None:
    """Write the finished response (`response`: its JSON), bounded: Redis trouble is a
    503, not a hang."""
    secrets = resolved.secrets
    fields: dict[str | bytes, str | bytes | int | float] = {
        "org": org,
        "response": redacted(response, secrets),
        "input": redacted(_encode(resolved.context[resolved.new_from:]), secrets),
        "context": redacted(_encode([*resolved.context, *output]), secrets),
        "created": int(time.time()),
    }
    key = names.response(response_id)
    try:
        with trio.fail_after(timeout_s):
            async with redis.pipeline(transaction=True) as pipe:
                pipe.hset(key, fields)
                pipe.expire(key, retention_days * 86_400)
    except (trio.TooSlowError, coredis.exceptions.RedisError, OSError) as exc:
        raise GatewayError(503, "service_unavailable",
                           "the gateway could not store the response") from exc
