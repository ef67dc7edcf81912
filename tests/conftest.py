"""Real parts only: a private redis-server per test session, real HTTP servers on
ephemeral ports, fake upstreams that speak the providers' wire formats.

    fake_upstream(kind)      a started fake upstream of that kind (tests/kinds.py's table)
    kind_gateway(kind, ...)  ingress + workers with `SLUG` routed to that kind's fake
    cluster_url              a private 3-master Redis Cluster, emptied, for tests/test_cluster.py
    openai_gateway           ingress + workers with one `openai` provider and a mock
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

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
from tests.kinds import CASES, KindCase
from tests.redis_cluster import Cluster, start_cluster
from workers.connection import connect
from workers.service import run_workers

FAST_LIMITS = {"heartbeat_s": 0.2, "reclaim_after_s": 1.0, "redis_timeout_s": 2.0,
               "key_cache_s": 0.0, "request_timeout_s": 30.0}
# One TLS context for every SDK client: building one loads the CA bundle (~30 ms a client).
TLS = ssl.create_default_context()
SLUG = "test-slug"  # what clients ask kind_gateway's gateways for (never an upstream name)
UPSTREAM_SECRET = "sk-upstream-secret-123"  # openai_gateway's provider credential


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
def redis_url(request: pytest.FixtureRequest, redis_server: RedisServer) -> str:
    """The session's private Redis, emptied for this test; with `SB_TEST_CLUSTER=1` in the
    environment, the private cluster instead (`cluster_url`): the suite's own cases on a
    cluster, but for those that drive the standalone server itself (`redis_server`)."""
    if os.environ.get("SB_TEST_CLUSTER") == "1":
        return str(request.getfixturevalue("cluster_url"))
    assert redis_server.command("FLUSHALL").startswith(b"+OK")
    return redis_server.url


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The session's private Redis Cluster (three masters, tests/redis_cluster.py), started
    by the first test that asks for it."""
    cluster = start_cluster(tmp_path_factory.mktemp("redis-cluster"))
    yield cluster
    cluster.stop()


@pytest.fixture
def cluster_url(redis_cluster: Cluster) -> str:
    """The private cluster, emptied for this test: the URL of a node that does not own the
    gateway's hash slot (every name is `{sb}`-tagged)."""
    redis_cluster.flush()
    return redis_cluster.url


class FakeUpstreams(Protocol):
    async def __call__(self, kind: str) -> Any: ...


@pytest.fixture
def fake_upstream(nursery: trio.Nursery) -> FakeUpstreams:
    """`await fake_upstream(kind)`: a new fake upstream of that kind, served until the test
    ends, its `base_url` set to what the kind's provider config wants."""

    async def start(kind: str) -> Any:
        make = CASES[kind].fake
        if make is None:
            raise ValueError(f"provider kind {kind!r} has no fake upstream")
        fake = make()
        fake.base_url = await nursery.start(serve_asgi, fake) + fake.base_path
        return fake

    return start


@pytest.fixture
async def fake_openai(fake_upstream: FakeUpstreams) -> FakeOpenAI:
    fake: FakeOpenAI = await fake_upstream("openai")
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
        kwargs.setdefault("http_client", openai.DefaultAsyncHttpxClient(verify=TLS))
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


@dataclass
class KindGateway(Gateway):
    """A gateway whose model `slug` routes to `primary` (the kind's `fake`) and, with
    failover, then to `backup` (a second fake of the kind)."""

    case: KindCase = field(kw_only=True)
    fake: Any = field(kw_only=True)  # None for a kind without upstream (mock)
    backup: Any = field(default=None, kw_only=True)
    slug: str = field(default=SLUG, kw_only=True)


class KindGateways(Protocol):
    async def __call__(self, kind: str, *, failover: bool = False, echo: bool = False,
                       slug: str = SLUG, models: Sequence[Mapping[str, Any]] = (),
                       **options: Any) -> KindGateway: ...


@pytest.fixture
def kind_gateway(nursery: trio.Nursery, redis_url: str, fake_upstream: FakeUpstreams,
                 monkeypatch: pytest.MonkeyPatch) -> KindGateways:
    """`await kind_gateway(kind)`: ingress + workers serving `slug` through provider
    `primary` of that kind (its fake, `timeout_s=5`, `max_retries=1`, `options` on top)
    and, with `failover`, through `backup` (another fake of the kind, no retries) next.
    The credential is the case's, set in the environment here. `echo` adds the slug
    `echo` on a mock provider `local`; `models` adds catalog entries (their routes may
    name `primary`)."""

    async def build(kind: str, *, failover: bool = False, echo: bool = False, slug: str = SLUG,
                    models: Sequence[Mapping[str, Any]] = (), **options: Any) -> KindGateway:
        case = CASES[kind]
        fake = await fake_upstream(kind) if case.fake else None
        backup = await fake_upstream(kind) if failover else None
        providers = {"primary": _provider(case, fake, monkeypatch,
                                          {"timeout_s": 5, "max_retries": 1, **options})}
        routes = [{"provider": "primary", "model": case.upstream_model}]
        if failover:
            providers["backup"] = _provider(case, backup, monkeypatch,
                                            {"timeout_s": 5, "max_retries": 0})
            routes.append({"provider": "backup", "model": case.upstream_model + "-backup"})
        catalog = [{"slug": slug, "routes": routes}, *map(dict, models)]
        if echo:
            providers["local"] = {"kind": "mock"}
            catalog.append({"slug": "echo", "routes": [{"provider": "local", "model": "echo"}]})
        gateway = await start_gateway(nursery, make_config(redis_url, providers, catalog))
        return KindGateway(**vars(gateway), case=case, fake=fake, backup=backup, slug=slug)

    return build


def _provider(case: KindCase, fake: Any, monkeypatch: pytest.MonkeyPatch,
              options: Mapping[str, Any]) -> dict[str, Any]:
    """One provider table of the case's kind, pointing at `fake` with the case's credential."""
    provider = {"kind": case.kind, **case.provider, **options}
    if fake is not None:
        provider["base_url"] = fake.base_url
    if case.credential:
        env = f"SB_TEST_{case.kind.upper()}_KEY"
        monkeypatch.setenv(env, case.credential)
        provider["api_key_env"] = env
    return provider


@pytest.fixture
def fake(gateway: KindGateway) -> Any:
    """The primary fake upstream behind the module's `gateway` (a KindGateway)."""
    return gateway.fake


@pytest.fixture
def switchboard_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every log line of this test: the gateway's own (its logger does not propagate) and
    every library's, from INFO up."""
    ours = logging.getLogger("switchboard")
    caplog.set_level(logging.INFO)
    ours.addHandler(caplog.handler)
    try:
        yield caplog
    finally:
        ours.removeHandler(caplog.handler)


@pytest.fixture
async def openai_gateway(nursery: trio.Nursery, redis_url: str, fake_openai: FakeOpenAI,
                         monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Gateway]:
    """Ingress + workers with one `openai` provider (the fake, credential `UPSTREAM_SECRET`
    in FAKE_UP_KEY) and a mock fallback."""
    monkeypatch.setenv("FAKE_UP_KEY", UPSTREAM_SECRET)
    config = make_config(
        redis_url,
        {"up": {"kind": "openai", "base_url": fake_openai.base_url, "api_key_env": "FAKE_UP_KEY",
                "timeout_s": 5, "max_retries": 0},
         "local": {"kind": "mock"}},
        [{"slug": "gpt-test", "routes": [{"provider": "up", "model": "upstream-model-1"}]},
         {"slug": "echo", "routes": [{"provider": "local", "model": "echo"}]}],
    )
    yield await start_gateway(nursery, config)


@pytest.fixture
async def console_gateway(nursery: trio.Nursery, redis_url: str) -> Any:
    """A gateway on mock providers with a key of each role (tests/consoles.py)."""
    from tests.consoles import start_console_gateway

    return await start_console_gateway(nursery, redis_url)


@pytest.fixture(autouse=True, scope="session")
def structured_logs() -> None:
    """Show the gateway's JSON log lines in the output of failing tests."""
    from workers.logs import setup

    setup()
