"""Sending at the provider's pace (workers/pace.py): rpm/tpm in rolling windows shared by
every worker through Redis, the batch share and the 429 pause, and Retry-After.

Windows are shortened for the tests (`Pace(window_ms=...)`, `pace.WINDOW_MS`): the
limits of the config stay per minute. The fake upstream counts its own true rolling
window with its own clock and answers 429 past its limit.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import openai
import pytest
import trio

from schemas import names
from schemas.chat import Usage
from schemas.config import Config, Route
from schemas.envelopes import Job
from schemas.errors import GatewayError
from tests.conftest import RedisServer, _open_redis, make_config, start_gateway
from tests.fakes.limited_upstream import LimitedOpenAI
from tests.fakes.server import serve_asgi
from workers import pace as pace_module
from workers.pace import Pace, estimate
from workers.providers._http import retry_after

KEY = "sk-pace-upstream"
BODY = b'{"model":"m","messages":[{"role":"user","content":"hello there"}]}'


async def limited(nursery: trio.Nursery, rpm: int, window_s: float) -> LimitedOpenAI:
    fake = LimitedOpenAI(rpm, window_s)
    fake.base_url = await nursery.start(serve_asgi, fake) + fake.base_path
    return fake


def config_for(redis_url: str, base_url: str = "http://127.0.0.1:9/v1", **provider: Any) -> Config:
    return make_config(
        redis_url,
        {"up": {"kind": "openai", "base_url": base_url, "api_key_env": "PACE_UP_KEY",
                "timeout_s": 5, "max_retries": 0, **provider}},
        [{"slug": "paced", "routes": [{"provider": "up", "model": "upstream-model"}]}])


def job(*, batch: str = "", deadline_s: float = 10.0, body: bytes = BODY,
        endpoint: str = "chat") -> Job:
    return Job(request_id=f"req-{time.monotonic_ns()}", org="acme", project="p", key_id="k",
               model="paced", routes=[Route(provider="up", model="upstream-model")], body=body,
               stream=False, reply_to="", deadline=time.time() + deadline_s, batch=batch,
               endpoint=endpoint)  # type: ignore[arg-type]


async def test_two_paces_never_pass_the_rpm_in_any_rolling_window(
        nursery: trio.Nursery, redis_url: str) -> None:
    fake = await limited(nursery, rpm=5, window_s=1.0)
    config = config_for(redis_url, fake.base_url, rpm=5)
    paces = [Pace(await _open_redis(nursery, redis_url), config, window_ms=1000, guard_ms=200)
             for _ in range(2)]
    calls = 0

    async def caller(pace: Pace, client: httpx.AsyncClient) -> None:
        nonlocal calls
        while calls < 15:
            calls += 1
            await pace.acquire(job())
            response = await client.post(fake.base_url + "/chat/completions", content=BODY,
                                         headers={"content-type": "application/json"})
            assert response.status_code == 200

    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        async with trio.open_nursery() as callers:
            for i in range(8):  # four concurrent callers on each Pace
                callers.start_soon(caller, paces[i % 2], client)
    assert fake.throttled == 0
    assert len(fake.accepted) >= 15
    assert fake.max_in_window() <= 5


async def test_two_workers_send_at_most_rpm_per_window_and_answer_everyone(
        nursery: trio.Nursery, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # A short window, the real guard: a call's trip from the pace's check through the
    # queue to the upstream took more than a 200 ms guard once in CI (a 429 here).
    monkeypatch.setattr(pace_module, "WINDOW_MS", 1000)
    monkeypatch.setenv("PACE_UP_KEY", KEY)
    fake = await limited(nursery, rpm=4, window_s=1.0)
    gateway = await start_gateway(nursery, config_for(redis_url, fake.base_url, rpm=4))
    await gateway.start_worker()  # a second worker: both read the same provider stream
    client = gateway.client()
    answers: list[str] = []

    async def ask(i: int) -> None:
        completion = await client.chat.completions.create(
            model="paced", messages=[{"role": "user", "content": f"line {i}"}])
        answers.append(completion.choices[0].message.content or "")

    async with trio.open_nursery() as askers:
        for i in range(12):
            askers.start_soon(ask, i)
    assert sorted(answers) == sorted(f"line {i}" for i in range(12))
    assert fake.throttled == 0
    assert fake.max_in_window() <= 4


async def test_batch_lines_use_only_their_share_and_interactive_calls_the_rest(
        nursery: trio.Nursery, redis_url: str) -> None:
    config = config_for(redis_url, rpm=8)  # interactive_share 0.25: batch gets 6
    pace = Pace(await _open_redis(nursery, redis_url), config, window_ms=6000)
    for _ in range(6):
        assert await pace.acquire(job(batch="batch_1")) is not None
    with pytest.raises(GatewayError) as refused:
        await pace.acquire(job(batch="batch_1", deadline_s=1.0))
    assert (refused.value.status, refused.value.code) == (504, "upstream_timeout")
    assert "rpm limit (6)" in refused.value.message
    for _ in range(2):  # the interactive share is still there
        assert await pace.acquire(job(deadline_s=1.0)) is not None
    with pytest.raises(GatewayError, match=r"rpm limit \(8\)"):
        await pace.acquire(job(deadline_s=1.0))


async def test_a_pause_stops_batch_lines_not_interactive_calls(
        nursery: trio.Nursery, redis_url: str) -> None:
    redis = await _open_redis(nursery, redis_url)
    pace = Pace(redis, config_for(redis_url))  # no rpm, no tpm
    assert await pace.pause("up", 30) > 29
    assert await pace.pause("up", 1) > 29  # the later end is kept
    with pytest.raises(GatewayError, match="paused after a 429"):
        await pace.acquire(job(batch="batch_1", deadline_s=5.0))
    assert await pace.acquire(job()) is None  # interactive: not even a Redis call
    limited_pace = Pace(redis, config_for(redis_url, rpm=100))
    assert await limited_pace.acquire(job()) is not None
    with pytest.raises(GatewayError):
        await limited_pace.acquire(job(batch="batch_1", deadline_s=5.0))
    await redis.delete([names.pace_pause("up")])
    assert await limited_pace.acquire(job(batch="batch_1")) is not None


async def test_a_batch_line_waits_for_a_short_pause_then_goes(
        nursery: trio.Nursery, redis_url: str) -> None:
    redis = await _open_redis(nursery, redis_url)
    pace = Pace(redis, config_for(redis_url))
    await pace.pause("up", 0.3)
    assert await pace.acquire(job(batch="batch_1", deadline_s=10.0)) is not None
    assert await redis.exists([names.pace_pause("up")]) == 0


async def test_a_job_whose_deadline_passes_while_it_waits_fails_cleanly(
        nursery: trio.Nursery, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PACE_UP_KEY", KEY)
    fake = await limited(nursery, rpm=100, window_s=60.0)
    config = make_config(redis_url, {"up": {"kind": "openai", "base_url": fake.base_url,
                                            "api_key_env": "PACE_UP_KEY", "rpm": 1}},
                         [{"slug": "paced", "routes": [{"provider": "up", "model": "m"}]}],
                         limits={"request_timeout_s": 3.0})
    gateway = await start_gateway(nursery, config)
    client = gateway.client()
    await client.chat.completions.create(model="paced", messages=[{"role": "user", "content": "a"}])
    with pytest.raises(openai.APIStatusError) as failed:
        await client.chat.completions.create(model="paced",
                                             messages=[{"role": "user", "content": "b"}])
    assert failed.value.status_code == 504
    error: Any = failed.value.body  # the SDK hands over the `error` object
    assert error["code"] == "upstream_timeout"
    assert "rpm limit (1)" in error["message"]
    assert len(fake.requests) == 1  # the second never went upstream


async def test_no_limits_means_no_redis_call(nursery: trio.Nursery, redis_url: str,
                                             redis_server: RedisServer) -> None:
    pace = Pace(await _open_redis(nursery, redis_url), config_for(redis_url))

    def processed() -> int:
        info = redis_server.command("INFO", "stats").decode()
        return int(info.split("total_commands_processed:")[1].split()[0])

    base = processed()
    idle = processed() - base  # what one INFO adds by itself
    before = processed()
    for _ in range(50):
        assert await pace.acquire(job()) is None
        await pace.settle(None, Usage(prompt_tokens=1, completion_tokens=1, total_tokens=2))
    assert processed() - before == idle


async def test_tokens_are_estimated_from_the_body_then_settled_to_the_real_usage(
        nursery: trio.Nursery, redis_url: str) -> None:
    redis = await _open_redis(nursery, redis_url)
    pace = Pace(redis, config_for(redis_url, tpm=10_000))
    body = b'{"model":"m","max_tokens":300,"n":2,"messages":[]}'
    assert estimate(job(body=body), 4096) == -(-len(body) // 4) + 600
    assert estimate(job(body=b'{"max_completion_tokens":7}'), 4096) == 7 + 7
    assert estimate(job(body=BODY), 4096) == -(-len(BODY) // 4) + 4096
    assert estimate(job(body=b'{"input":"x"}', endpoint="embeddings"), 4096) == 4
    total = names.pace_window("tpm", "up") + "-sum"
    ticket = await pace.acquire(job(body=body))
    assert int(await redis.get(total) or 0) == estimate(job(body=body), 4096)
    await pace.settle(ticket, Usage(prompt_tokens=20, completion_tokens=30, total_tokens=50))
    assert int(await redis.get(total) or 0) == 50
    with pytest.raises(GatewayError, match=r"tpm limit \(10000\)"):  # 50 + 4096 + ... twice
        for _ in range(3):
            await pace.acquire(job(body=BODY, deadline_s=1.0))


def test_retry_after_reads_seconds_dates_and_milliseconds() -> None:
    now = time.time()
    date = format_datetime(datetime.fromtimestamp(now, UTC) + timedelta(seconds=30), usegmt=True)
    assert retry_after({"retry-after": "7"}) == 7.0
    assert retry_after({"retry-after": "1.5"}) == 1.5
    assert retry_after({"retry-after": date}, now=now) == pytest.approx(30, abs=1)
    assert retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # passed
    assert retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert retry_after({"retry-after-ms": "soon", "retry-after": "9"}) == 9.0
    assert retry_after({"retry-after": "tomorrow-ish"}) is None
    assert retry_after({}) is None


async def test_an_upstream_429_pauses_batch_traffic_for_its_retry_after(
        nursery: trio.Nursery, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PACE_UP_KEY", KEY)
    fake = await limited(nursery, rpm=1, window_s=60.0)
    fake.headers = [(b"retry-after", b"7")]
    gateway = await start_gateway(nursery, config_for(redis_url, fake.base_url))
    client = gateway.client()
    await client.chat.completions.create(model="paced", messages=[{"role": "user", "content": "a"}])
    with pytest.raises(openai.APIStatusError) as failed:  # the interactive 429 is as before
        await client.chat.completions.create(model="paced",
                                             messages=[{"role": "user", "content": "b"}])
    assert failed.value.status_code == 502
    assert fake.throttled == 1
    left = await gateway.redis.pttl(names.pace_pause("up"))
    assert 5000 < left <= 7000
