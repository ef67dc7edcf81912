"""Limits are exact across replicas: two `switchboard serve` processes and a worker share
one Redis, and requests split across both ingresses never pass a key's limit, not even
by one, because each admission checks and reserves in one script.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import openai
import trio

from ingress.keys import KeyStore
from tests.fleet import Fleet
from tests.test_limits import set_limits
from workers.connection import connect

CONFIG = """
[providers.mock]
kind = "mock"
latency_ms = {latency}
max_concurrency = 256

[[models]]
slug = "echo"
routes = [{{ provider = "mock", model = "echo" }}]
"""
TRIALS = 3
REQUESTS = 200
RPM = 50


async def burst(clients: list[openai.AsyncOpenAI], n: int, **kwargs: Any) -> list[Any]:
    """`n` concurrent chat completions, alternating between the ingresses: each outcome
    is 200 or the refusal's (status, code, details)."""
    outcomes: list[Any] = []

    async def one(index: int) -> None:
        try:
            await clients[index % 2].chat.completions.create(
                model="echo", messages=[{"role": "user", "content": "hi"}], **kwargs)
            outcomes.append(200)
        except openai.APIStatusError as exc:
            error = exc.body if isinstance(exc.body, dict) else {}
            outcomes.append((exc.status_code, error.get("code"),
                             json.dumps(error.get("details"), sort_keys=True)))

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            for index in range(n):
                nursery.start_soon(one, index)
    return outcomes


async def fleet_of_two(tmp_path: Path, redis_url: str, latency: int) -> tuple[Fleet, list[str]]:
    fleet = Fleet(tmp_path, CONFIG.format(latency=latency), redis_url)
    bases = [await fleet.serve("in1"), await fleet.serve("in2")]
    await fleet.worker("w1")
    return fleet, bases


async def test_two_ingresses_admit_exactly_the_rpm_of_a_key(redis_url: str, tmp_path: Path) -> None:
    fleet, bases = await fleet_of_two(tmp_path, redis_url, latency=100)
    admitted: list[int] = []
    try:
        async with connect(redis_url) as redis:
            for trial in range(TRIALS):
                record, secret = await KeyStore(redis).create("acme", "proj", "", f"t{trial}")
                await set_limits(redis, "key", record.key_id, {"rpm": RPM})
                clients = [openai.AsyncOpenAI(base_url=base + "/v1", api_key=secret,
                                              max_retries=0, timeout=60) for base in bases]
                outcomes = Counter(await burst(clients, REQUESTS))
                for client in clients:
                    await client.close()
                refusal = (429, "rate_limit_exceeded",
                           json.dumps({"scope": "key", "id": record.key_id, "limit": "rpm",
                                       "max": RPM}, sort_keys=True))
                assert outcomes == {200: RPM, refusal: REQUESTS - RPM}, outcomes
                admitted.append(outcomes[200])
    finally:
        statuses = fleet.stop_all()
    print(f"admitted per trial of {REQUESTS} against rpm {RPM}: {admitted}")
    assert all(status == 0 for status in statuses.values()), statuses


async def test_two_ingresses_admit_exactly_the_tpm_of_a_key(redis_url: str, tmp_path: Path) -> None:
    # Slow answers: every admission happens while every admitted request is in flight,
    # so none was settled yet and the estimates alone decide how many fit.
    fleet, bases = await fleet_of_two(tmp_path, redis_url, latency=5000)
    tpm, requests = 5000, 100
    try:
        async with connect(redis_url) as redis:
            record, secret = await KeyStore(redis).create("acme", "proj", "", "tpm")
            await set_limits(redis, "key", record.key_id, {"tpm": tpm})
            clients = [openai.AsyncOpenAI(base_url=base + "/v1", api_key=secret,
                                          max_retries=0, timeout=60) for base in bases]
            outcomes = await burst(clients, requests, max_tokens=200)
            for client in clients:
                await client.close()
    finally:
        statuses = fleet.stop_all()
    refusals = [o for o in outcomes if o != 200]
    assert refusals and all(o[:2] == (429, "rate_limit_exceeded") for o in refusals), refusals
    estimate = json.loads(refusals[0][2])["requested"]
    assert 200 < estimate < 300
    assert outcomes.count(200) == tpm // estimate, (outcomes.count(200), estimate)
    print(f"tpm {tpm}, estimate {estimate}: admitted {outcomes.count(200)} of {requests}")
    assert all(status == 0 for status in statuses.values()), statuses


async def test_two_ingresses_never_overshoot_an_org_budget(redis_url: str, tmp_path: Path) -> None:
    # As for tpm: slow answers, so every estimate is still held while the others arrive.
    priced = CONFIG.replace('model = "echo" }', 'model = "echo", input_per_mtok = 2.0, '
                            'output_per_mtok = 8.0 }')
    fleet = Fleet(tmp_path, priced.format(latency=5000), redis_url)
    budget, requests = 0.035, 100
    try:
        bases = [await fleet.serve("in1"), await fleet.serve("in2")]
        await fleet.worker("w1")
        async with connect(redis_url) as redis:
            _, secret = await KeyStore(redis).create("acme", "proj", "", "budget")
            await set_limits(redis, "org", "acme", {"monthly_budget_usd": budget})
            clients = [openai.AsyncOpenAI(base_url=base + "/v1", api_key=secret,
                                          max_retries=0, timeout=60) for base in bases]
            outcomes = await burst(clients, requests, max_tokens=200)
            for client in clients:
                await client.close()
    finally:
        statuses = fleet.stop_all()
    refusals = [o for o in outcomes if o != 200]
    assert refusals and all(o[:2] == (429, "budget_exceeded") for o in refusals), refusals
    estimate = round(json.loads(refusals[0][2])["requested"] * 1e6)  # micro-dollars
    assert 200 * 8 < estimate < 300 * 8
    assert outcomes.count(200) == int(budget * 1e6) // estimate, (outcomes.count(200), estimate)
    print(f"budget {budget * 1e6:.0f} micro-USD, estimate {estimate}: "
          f"admitted {outcomes.count(200)} of {requests}")
    assert all(status == 0 for status in statuses.values()), statuses
