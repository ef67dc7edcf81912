"""Prometheus metrics: `GET /metrics` on the ingress and `--metrics-port` on the worker.

Real requests through the openai SDK (plain, streamed, refused, failed over), then a
scrape parsed with prometheus_client's own text parser; the worker's port scraped from
a real `switchboard worker` subprocess.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from ingress.dev import free_port, start_private_redis
from ingress.keys import KeyStore
from tests.conftest import TLS, Gateway, make_config, start_gateway
from tests.fakes.openai_upstream import Behavior, FakeOpenAI
from tests.fleet import Fleet
from tests.kinds import openai_server_error
from workers.connection import connect
from workers.service import run_workers

HI = [{"role": "user", "content": "hi there"}]
CREDENTIAL_ENV = "SB_TEST_METRICS_KEY"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of a scrape, by name and labels."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


async def scrape(url: str, **headers: str) -> Samples:
    async with httpx.AsyncClient(trust_env=False) as http:
        response = await http.get(url, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


async def scrape_until(url: str, done: Callable[[Samples], bool], timeout_s: float = 10.0) -> Samples:
    """Scrape until `done` holds (a streamed answer is logged just after its last event)."""
    samples: Samples = {}
    with trio.move_on_after(timeout_s):
        while not done(samples := await scrape(url)):
            await trio.sleep(0.05)
    return samples


def openai_provider(fake: FakeOpenAI, retries: int) -> dict[str, Any]:
    return {"kind": "openai", "base_url": fake.base_url, "api_key_env": CREDENTIAL_ENV,
            "timeout_s": 5, "max_retries": retries}


@pytest.fixture
async def metered(nursery: trio.Nursery, redis_url: str, fake_upstream: Any,
                  monkeypatch: pytest.MonkeyPatch) -> tuple[Gateway, FakeOpenAI, str]:
    """Ingress (metrics open) + a worker serving `m` by `primary` (one retry), then
    `backup`; returns the gateway, primary's fake and the worker's metrics URL."""
    monkeypatch.setenv(CREDENTIAL_ENV, "sk-metrics-upstream-1")
    primary: FakeOpenAI = await fake_upstream("openai")
    backup: FakeOpenAI = await fake_upstream("openai")
    config = make_config(
        redis_url, {"primary": openai_provider(primary, 1), "backup": openai_provider(backup, 0)},
        [{"slug": "m", "routes": [{"provider": "primary", "model": "up-1"},
                                  {"provider": "backup", "model": "up-2"}]}],
        plans={"tiny": {"monthly_tokens": 0}}, metrics={"ingress": "open"})
    gateway = await start_gateway(nursery, config, workers=False)
    port = free_port()
    await nursery.start(partial(run_workers, config, metrics_bind=("127.0.0.1", port)))
    return gateway, primary, f"http://127.0.0.1:{port}/metrics"


async def test_ingress_counts_plain_streamed_refused_and_failed_over_requests(
        metered: tuple[Gateway, FakeOpenAI, str]) -> None:
    gateway, primary, _ = metered
    client = gateway.client()
    plain = await client.chat.completions.create(model="m", messages=HI)  # type: ignore[arg-type]
    stream = await client.chat.completions.create(
        model="m", messages=HI, stream=True, stream_options={"include_usage": True})  # type: ignore[arg-type]
    streamed_usage = [chunk.usage async for chunk in stream if chunk.usage].pop()
    primary.then(openai_server_error("busy"), openai_server_error("busy"))
    failed_over = await client.chat.completions.create(model="m", messages=HI)  # type: ignore[arg-type]
    assert failed_over.choices[0].message.content == "hi there"
    _, poor = await KeyStore(gateway.redis).create("poor", "proj", "tiny", "t")
    with pytest.raises(openai.RateLimitError):
        await gateway.client(api_key=poor).chat.completions.create(model="m", messages=HI)  # type: ignore[arg-type]
    assert plain.usage and failed_over.usage

    url = gateway.base_url + "/metrics"
    ok = {"endpoint": "chat", "model": "m"}
    samples = await scrape_until(url, lambda s: value(
        s, "switchboard_requests_total", **ok, provider="primary", status="200") == 2)
    assert value(samples, "switchboard_requests_total", **ok, provider="primary", status="200") == 2
    assert value(samples, "switchboard_requests_total", **ok, provider="backup", status="200") == 1
    assert value(samples, "switchboard_requests_total", **ok, provider="primary", status="429") == 1
    assert value(samples, "switchboard_admissions_refused_total", endpoint="chat",
                 reason="subscription_limit") == 1
    assert value(samples, "switchboard_request_duration_seconds_count",
                 endpoint="chat", provider="primary") == 2
    assert value(samples, "switchboard_request_duration_seconds_count",
                 endpoint="chat", provider="backup") == 1
    assert value(samples, "switchboard_time_to_first_token_seconds_count",
                 endpoint="chat", provider="primary") == 1
    assert value(samples, "switchboard_time_to_first_token_seconds_count",
                 endpoint="chat", provider="backup") is None  # not a stream
    prompt = plain.usage.prompt_tokens + streamed_usage.prompt_tokens
    completion = plain.usage.completion_tokens + streamed_usage.completion_tokens
    assert value(samples, "switchboard_tokens_total", model="m", provider="primary",
                 type="prompt") == prompt
    assert value(samples, "switchboard_tokens_total", model="m", provider="primary",
                 type="completion") == completion
    assert value(samples, "switchboard_tokens_total", model="m", provider="backup",
                 type="completion") == failed_over.usage.completion_tokens
    assert value(samples, "switchboard_cost_usd_total", model="m", provider="primary") == 0.0
    assert value(samples, "switchboard_requests_in_flight") == 0
    assert value(samples, "switchboard_streams_held") == 0
    assert value(samples, "switchboard_queue_depth", provider="primary") == 0
    assert value(samples, "switchboard_queue_pending", provider="backup") == 0
    assert value(samples, "switchboard_queue_read_ok") == 1


async def test_worker_counts_attempts_retries_failovers_and_errors(
        metered: tuple[Gateway, FakeOpenAI, str]) -> None:
    gateway, primary, worker_url = metered
    client = gateway.client()
    await client.chat.completions.create(model="m", messages=HI)  # type: ignore[arg-type]
    primary.then(openai_server_error("busy"), openai_server_error("busy"))
    await client.chat.completions.create(model="m", messages=HI)  # type: ignore[arg-type]
    primary.then(Behavior(status=400, error={"error": {"message": "no", "type": "invalid_request_error",
                                                       "code": "bad", "param": None}}))
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(model="m", messages=HI)  # type: ignore[arg-type]

    samples = await scrape_until(worker_url, lambda s: value(
        s, "switchboard_jobs_total", provider="primary", outcome="error") == 1)
    assert value(samples, "switchboard_upstream_attempts_total", provider="primary") == 4
    assert value(samples, "switchboard_upstream_retries_total", provider="primary") == 1
    assert value(samples, "switchboard_upstream_failovers_total", provider="primary") == 1
    assert value(samples, "switchboard_upstream_attempts_total", provider="backup") == 1
    assert value(samples, "switchboard_upstream_retries_total", provider="backup") == 0
    assert value(samples, "switchboard_upstream_errors_total", provider="primary", status="400") == 1
    assert value(samples, "switchboard_jobs_total", provider="primary", outcome="done") == 1
    assert value(samples, "switchboard_jobs_total", provider="primary", outcome="forwarded") == 1
    assert value(samples, "switchboard_jobs_total", provider="backup", outcome="done") == 1
    assert value(samples, "switchboard_job_duration_seconds_count", provider="primary") == 3
    assert value(samples, "switchboard_jobs_running") == 0
    assert value(samples, "switchboard_queue_read_ok") == 1


async def test_gauges_show_a_held_stream_and_a_job_a_worker_holds(
        metered: tuple[Gateway, FakeOpenAI, str]) -> None:
    gateway, primary, worker_url = metered
    url = gateway.base_url + "/metrics"
    primary.then(Behavior(chunks=["a", "b", "c"], chunk_delay_s=1.0))
    stream = await gateway.client().chat.completions.create(
        model="m", messages=HI, stream=True)  # type: ignore[arg-type]
    async with stream:
        async for _ in stream:
            break  # the stream has begun: it is held until its last event
        samples = await scrape(url)
        assert value(samples, "switchboard_streams_held") == 1
        assert value(samples, "switchboard_requests_in_flight") == 1
        assert value(samples, "switchboard_queue_pending", provider="primary") == 1
        assert value(samples, "switchboard_queue_depth", provider="primary") == 0
        worker = await scrape(worker_url)
        assert value(worker, "switchboard_jobs_running") == 1
        assert value(worker, "switchboard_queue_pending", provider="primary") == 1
        async for _ in stream:
            pass
    samples = await scrape_until(url, lambda s: value(s, "switchboard_streams_held") == 0)
    assert value(samples, "switchboard_streams_held") == 0
    assert value(samples, "switchboard_requests_in_flight") == 0


async def test_queue_depth_counts_jobs_no_worker_took_yet(nursery: trio.Nursery, redis_url: str) -> None:
    config = make_config(redis_url, {"local": {"kind": "mock"}},
                         [{"slug": "echo", "routes": [{"provider": "local", "model": "echo"}]}],
                         metrics={"ingress": "open"})
    gateway = await start_gateway(nursery, config, workers=False)  # nobody reads the queue
    url = gateway.base_url + "/metrics"
    async with trio.open_nursery() as asking:
        asking.start_soon(partial(gateway.client().chat.completions.create, model="echo",
                                  messages=HI))  # type: ignore[arg-type]
        samples = await scrape_until(url, lambda s: value(
            s, "switchboard_queue_depth", provider="local") == 1)
        assert value(samples, "switchboard_queue_depth", provider="local") == 1
        assert value(samples, "switchboard_queue_pending", provider="local") == 0
        assert value(samples, "switchboard_requests_in_flight") == 1
        asking.cancel_scope.cancel()  # the client leaves


async def test_a_scrape_while_redis_hangs_answers_in_bounded_time_and_says_so(
        tmp_path: Path) -> None:
    process, port = start_private_redis(tmp_path)
    try:
        config = make_config(f"redis://127.0.0.1:{port}/0", {"local": {"kind": "mock"}},
                             [{"slug": "echo", "routes": [{"provider": "local", "model": "echo"}]}],
                             metrics={"ingress": "open"}, limits={"redis_timeout_s": 0.5})
        async with trio.open_nursery() as nursery:
            gateway = await start_gateway(nursery, config, workers=False)
            url = gateway.base_url + "/metrics"
            assert value(await scrape(url), "switchboard_queue_read_ok") == 1
            os.kill(process.pid, signal.SIGSTOP)
            try:
                with trio.fail_after(3):  # redis_timeout_s bounds the read; never a hang
                    samples = await scrape(url)
            finally:
                os.kill(process.pid, signal.SIGCONT)
            assert value(samples, "switchboard_queue_read_ok") == 0
            assert value(samples, "switchboard_queue_depth", provider="local") == 0  # the last value
            nursery.cancel_scope.cancel()
    finally:
        process.kill()
        process.wait()


@pytest.mark.parametrize("setting", [None, "off"])
async def test_ingress_metrics_off_is_a_404(nursery: trio.Nursery, redis_url: str,
                                            setting: str | None) -> None:
    extra = {} if setting is None else {"metrics": {"ingress": setting}}  # None: the default
    config = make_config(redis_url, {"local": {"kind": "mock"}},
                         [{"slug": "echo", "routes": [{"provider": "local", "model": "echo"}]}],
                         **extra)
    gateway = await start_gateway(nursery, config, workers=False)
    async with httpx.AsyncClient(trust_env=False) as http:
        response = await http.get(gateway.base_url + "/metrics",
                                  headers={"authorization": f"Bearer {gateway.secret}"})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


async def test_ingress_metrics_key_needs_a_valid_key(nursery: trio.Nursery, redis_url: str) -> None:
    config = make_config(redis_url, {"local": {"kind": "mock"}},
                         [{"slug": "echo", "routes": [{"provider": "local", "model": "echo"}]}],
                         metrics={"ingress": "key"})
    gateway = await start_gateway(nursery, config, workers=False)
    url = gateway.base_url + "/metrics"
    async with httpx.AsyncClient(trust_env=False) as http:
        assert (await http.get(url)).status_code == 401
        assert (await http.get(url, headers={"authorization": "Bearer sk-wrong"})).status_code == 401
    samples = await scrape(url, authorization=f"Bearer {gateway.secret}")
    assert value(samples, "switchboard_requests_in_flight") == 0


async def test_two_ingresses_in_one_process_count_apart(nursery: trio.Nursery,
                                                        redis_url: str) -> None:
    """Each Gateway has its own registry (a global one would mix, or refuse, the second)."""
    config = make_config(redis_url, {"local": {"kind": "mock"}},
                         [{"slug": "echo", "routes": [{"provider": "local", "model": "echo"}]}],
                         metrics={"ingress": "open"})
    one = await start_gateway(nursery, config)
    two = await start_gateway(nursery, config, workers=False)
    await one.client().chat.completions.create(model="echo", messages=HI)  # type: ignore[arg-type]
    labels = {"endpoint": "chat", "model": "echo", "provider": "local", "status": "200"}
    assert value(await scrape(one.base_url + "/metrics"), "switchboard_requests_total", **labels) == 1
    assert value(await scrape(two.base_url + "/metrics"), "switchboard_requests_total", **labels) is None


WORKER_CONFIG = """
[providers.local]
kind = "mock"

[[models]]
slug = "echo"
routes = [{ provider = "local", model = "echo" }]

[metrics]
ingress = "open"
"""


async def test_worker_process_serves_metrics_on_its_own_port(tmp_path: Path, redis_url: str) -> None:
    async with connect(redis_url) as redis:
        _, secret = await KeyStore(redis).create("acme", "proj", "", "t")
    fleet = Fleet(tmp_path, WORKER_CONFIG, redis_url)
    try:
        base = await fleet.serve("in")
        await fleet.worker("w", "--metrics-port", "0")
        line = next(json.loads(text) for text in fleet.logs[-1].read_text().splitlines()
                    if '"event":"worker_metrics"' in text)
        worker_url = line["binds"][0] + "/metrics"
        client = openai.AsyncOpenAI(base_url=base + "/v1", api_key=secret, max_retries=0,
                                    http_client=openai.DefaultAsyncHttpxClient(verify=TLS))
        for _ in range(2):
            await client.chat.completions.create(model="echo", messages=HI)  # type: ignore[arg-type]
        samples = await scrape_until(worker_url, lambda s: value(
            s, "switchboard_jobs_total", provider="local", outcome="done") == 2)
        assert value(samples, "switchboard_jobs_total", provider="local", outcome="done") == 2
        assert value(samples, "switchboard_upstream_attempts_total", provider="local") == 2
        assert value(samples, "switchboard_queue_depth", provider="local") == 0
        assert value(samples, "switchboard_queue_read_ok") == 1
        ingress = await scrape(base + "/metrics")
        assert value(ingress, "switchboard_requests_total", endpoint="chat", model="echo",
                     provider="local", status="200") == 2
        async with httpx.AsyncClient(trust_env=False) as http:
            assert (await http.get(line["binds"][0] + "/other")).status_code == 404
    finally:
        statuses = fleet.stop_all()
    assert statuses == {"in": 0, "w": 0}, fleet.log_text()
