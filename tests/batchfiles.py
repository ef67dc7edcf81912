"""Shared by the Files and Batch API tests: a gateway with a `[batch]` table, batch lines."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio

from ingress.keys import KeyStore
from tests.conftest import Gateway, make_config, start_gateway

CHAT = "/v1/chat/completions"


async def batch_gateway(nursery: trio.Nursery, redis_url: str, *, workers: bool = False,
                        limits: dict[str, Any] | None = None, **batch: Any) -> Gateway:
    """Ingress (no workers unless asked: a batch stays as the API left it) serving `echo`
    (mock), with `batch` as its `[batch]` table and `limits` on the tests' own."""
    config = make_config(
        redis_url, {"local": {"kind": "mock"}},
        [{"slug": "echo", "routes": [{"provider": "local", "model": "echo"}]}],
        batch=batch, limits=limits or {})
    return await start_gateway(nursery, config, workers=workers)


def line(n: int, *, model: str = "echo", url: str = CHAT, **fields: Any) -> dict[str, Any]:
    """A batch input line (`custom_id` `req-n`) calling `url` with a valid body for it."""
    if url == "/v1/embeddings":
        body: dict[str, Any] = {"model": model, "input": f"text {n}"}
    elif url == "/v1/completions":
        body = {"model": model, "prompt": f"say {n}"}
    elif url == "/v1/responses":
        body = {"model": model, "input": f"say {n}"}
    else:
        body = {"model": model, "messages": [{"role": "user", "content": f"say {n}"}]}
    return {"custom_id": f"req-{n}", "method": "POST", "url": url, "body": body, **fields}


def jsonl(lines: list[Any]) -> bytes:
    return b"".join((x if isinstance(x, bytes) else json.dumps(x).encode()) + b"\n"
                    for x in lines)


async def other_org_secret(gateway: Gateway, org: str = "rival") -> str:
    _, secret = await KeyStore(gateway.redis).create(org, "proj", "", "other")
    return secret


async def keys(gateway: Gateway, pattern: str) -> list[bytes]:
    return sorted(await gateway.redis.keys(pattern))


@pytest.fixture
async def gateway(nursery: trio.Nursery, redis_url: str) -> Gateway:
    return await batch_gateway(nursery, redis_url)
