"""Real parts only: a private redis-server per test session, real HTTP servers on
ephemeral ports, fake upstreams that speak the providers' wire formats."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
import trio

from ingress.admission import Admission
from ingress.dev import start_private_redis
from ingress.keys import KeyStore
from ingress.server import run_ingress
from schemas.config import Config, parse_config
from tests.fakes.openai_upstream import FakeOpenAI
from tests.fakes.server import serve_asgi
from workers.connection import connect
from workers.service import run_workers

FAST_LIMITS = {"heartbeat_s": 0.2, "reclaim_after_s": 1.0, "redis_timeout_s": 2.0,
               "key_cache_s": 0.0, "request_timeout_s": 30.0}


@dataclass
class RedisServer:
    process: subprocess.Popen[bytes]
    port: int
    workdir: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self, *words: str) -> bytes:
        """Send one inline command and return the raw reply line (test set-up only)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall((" ".join(words) + "\r\n").encode())
            return sock.recv(65536)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    workdir = tmp_path_factory.mktemp("redis")
    process, port = start_private_redis(workdir)
    yield RedisServer(process, port, workdir)
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session's private Redis, emptied for this test."""
    assert redis_server.command("FLUSHALL").startswith(b"+OK")
    return redis_server.url


@pytest.fixture
async def fake_openai(nursery: trio.Nursery) -> FakeOpenAI:
    fake = FakeOpenAI()
    fake.base_url = await nursery.start(serve_asgi, fake) + "/v1"
    return fake


def make_config(redis_url: str, providers: dict[str, dict[str, Any]],
                models: list[dict[str, Any]], **extra: Any) -> Config:
    """A Config from plain dicts, with fast timers for tests."""
    limits = {**FAST_LIMITS, **extra.pop("limits", {})}
    raw = {"redis_url": redis_url, "providers": providers, "models": models,
           "limits": limits, **extra}
    return parse_config(raw, "<test>")


@dataclass
class Gateway:
    """A running ingress (and usually workers) plus a key to call it with."""

    config: Config
    base_url: str
    secret: str
    key_id: str
    redis: Any
    nursery: trio.Nursery

    def client(self, **kwargs: Any) -> openai.AsyncOpenAI:
        kwargs.setdefault("api_key", self.secret)
        kwargs.setdefault("max_retries", 0)
        return openai.AsyncOpenAI(base_url=self.base_url + "/v1", **kwargs)

    async def start_worker(self, providers: tuple[str, ...] = (),
                           config: Config | None = None) -> trio.CancelScope:
        """Start a worker process-equivalent; cancel the scope to kill it."""
        scope = trio.CancelScope()

        async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with scope:
                await run_workers(config or self.config, providers, task_status=task_status)

        await self.nursery.start(run)
        return scope

    async def usage(self, org: str = "acme") -> dict[str, int]:
        return await Admission(self.redis).usage(org)


async def start_gateway(nursery: trio.Nursery, config: Config, *, workers: bool = True,
                        org: str = "acme", plan: str = "") -> Gateway:
    redis = await _open_redis(nursery, config.redis_url)
    _, secret = await KeyStore(redis).create(org, "proj", plan, "test")
    record = (await KeyStore(redis).list(org))[-1]
    binds = await nursery.start(run_ingress, config, "127.0.0.1", 0)
    gateway = Gateway(config, binds[0], secret, record.key_id, redis, nursery)
    if workers:
        await gateway.start_worker()
    return gateway


async def _open_redis(nursery: trio.Nursery, url: str) -> Any:
    """A Redis client that lives as long as the test's nursery."""
    ready: trio.Event = trio.Event()
    holder: list[Any] = []

    async def hold() -> None:
        async with connect(url) as redis:
            holder.append(redis)
            ready.set()
            await trio.sleep_forever()

    nursery.start_soon(hold)
    await ready.wait()
    return holder[0]


@pytest.fixture
async def openai_gateway(nursery: trio.Nursery, redis_url: str,
                         fake_openai: FakeOpenAI) -> AsyncIterator[Gateway]:
    """Ingress + workers with one `openai` provider (the fake) and a mock fallback."""
    config = make_config(
        redis_url,
        {"up": {"kind": "openai", "base_url": fake_openai.base_url, "api_key_env": "FAKE_UP_KEY",
                "timeout_s": 5, "max_retries": 0},
         "local": {"kind": "mock"}},
        [{"slug": "gpt-test", "routes": [{"provider": "up", "model": "upstream-model-1"}]},
         {"slug": "echo", "routes": [{"provider": "local", "model": "echo"}]}],
    )
    yield await start_gateway(nursery, config)


@pytest.fixture(autouse=True, scope="session")
def structured_logs() -> None:
    """Show the gateway's JSON log lines in the output of failing tests."""
    from workers.logs import setup

    setup()
