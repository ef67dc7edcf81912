"""Batch figures in `/metrics`: the ingress's gauges read from Redis at scrape time, and
the worker's `switchboard_batch_lines_total` counter.

Batches are stored with `BatchStore.create` and moved as the workers move them
(tests/batch_states.py); the batch streams and retry sets are written with the commands
the drain uses (XADD, XREADGROUP, ZADD). Scrapes are parsed with prometheus_client's own
text parser.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
from prometheus_client import generate_latest

from ingress.batchmetrics import LISTED
from schemas import names
from tests.batch_states import advance, make_batch
from tests.conftest import Gateway, make_config, start_gateway
from tests.test_metrics import Samples, parse, scrape, value
from workers.metrics import WorkerMetrics


@pytest.fixture
async def gateway(nursery: trio.Nursery, redis_url: str) -> Gateway:
    config = make_config(redis_url, {"up": {"kind": "mock"}, "local": {"kind": "mock"}},
                         [{"slug": "m", "routes": [{"provider": "up", "model": "echo"}]}],
                         metrics={"ingress": "open"})
    return await start_gateway(nursery, config, workers=False)


def batch_series(samples: Samples) -> dict[tuple[str, str, str], float]:
    """switchboard_batch_lines by (batch, org, state)."""
    out = {}
    for (name, labels), amount in samples.items():
        if name == "switchboard_batch_lines":
            got = dict(labels)
            out[(got["batch"], got["org"], got["state"])] = amount
    return out


async def test_the_ingress_shows_active_batches_their_lines_and_the_batch_queues(
        gateway: Gateway) -> None:
    redis = gateway.redis
    url = gateway.base_url + "/metrics"
    empty = await scrape(url)
    assert value(empty, "switchboard_batch_read_ok") == 1
    assert value(empty, "switchboard_batches", status="in_progress") == 0
    assert batch_series(empty) == {}

    await make_batch(redis, "batch_one", "acme", 10, created_at=1_764_000_000)
    await make_batch(redis, "batch_two", "globex", 5, created_at=1_764_000_100)
    await make_batch(redis, "batch_done", "acme", 2, created_at=1_764_000_200)
    await advance(redis, "batch_one", completed=6, failed=1, status="in_progress")
    await advance(redis, "batch_done", completed=2, status="completed")
    # The drain's side: three lines fed to up's batch stream, one delivered to a worker,
    # two more waiting for their retry.
    for index in range(3):
        await redis.xadd(names.batch_queue("up"), {"j": f"line-{index}"})
    await redis.xgroup_create(names.batch_queue("up"), names.GROUP, "0")
    await redis.xreadgroup(names.GROUP, "w1", streams={names.batch_queue("up"): ">"}, count=1)
    await redis.zadd(names.batch_retry("up"), {"a": 1.0, "b": 2.0})

    samples = await scrape(url)
    assert value(samples, "switchboard_batches", status="in_progress") == 1
    assert value(samples, "switchboard_batches", status="validating") == 1
    assert value(samples, "switchboard_batches", status="cancelling") == 0
    assert value(samples, "switchboard_batches", status="finalizing") == 0
    assert batch_series(samples) == {  # the finished batch is not listed
        ("batch_one", "acme", "completed"): 6, ("batch_one", "acme", "failed"): 1,
        ("batch_one", "acme", "remaining"): 3, ("batch_two", "globex", "completed"): 0,
        ("batch_two", "globex", "failed"): 0, ("batch_two", "globex", "remaining"): 5}
    assert value(samples, "switchboard_batches_unlisted") == 0
    assert value(samples, "switchboard_batch_queue_depth", provider="up") == 2
    assert value(samples, "switchboard_batch_queue_pending", provider="up") == 1
    assert value(samples, "switchboard_batch_retry_waiting", provider="up") == 2
    assert value(samples, "switchboard_batch_queue_depth", provider="local") == 0
    # The interactive queue gauges are apart: the batch stream is not the job stream.
    assert value(samples, "switchboard_queue_depth", provider="up") == 0

    await advance(redis, "batch_one", completed=3, status="finalizing")
    await advance(redis, "batch_two", status="cancelling")
    moved = await scrape(url)
    assert value(moved, "switchboard_batches", status="finalizing") == 1
    assert value(moved, "switchboard_batches", status="cancelling") == 1
    assert value(moved, "switchboard_batches", status="validating") == 0
    assert batch_series(moved)[("batch_one", "acme", "remaining")] == 0
    await advance(redis, "batch_one", status="completed")
    await advance(redis, "batch_two", status="cancelled")
    finished = await scrape(url)
    assert batch_series(finished) == {}  # finished batches leave the gauge
    assert all(value(finished, "switchboard_batches", status=s) == 0
               for s in ("validating", "in_progress", "finalizing", "cancelling"))


async def test_only_the_oldest_batches_get_series(gateway: Gateway) -> None:
    redis = gateway.redis
    extra = 3
    for n in range(LISTED + extra):
        await make_batch(redis, f"batch_{n:04d}", "acme", 1, created_at=1_764_000_000 + n)
    samples = await scrape(gateway.base_url + "/metrics")
    listed = {batch for batch, _, _ in batch_series(samples)}
    assert listed == {f"batch_{n:04d}" for n in range(LISTED)}
    assert value(samples, "switchboard_batches_unlisted") == extra
    assert value(samples, "switchboard_batches", status="validating") == LISTED + extra


async def test_a_batch_hash_gone_from_redis_is_left_out(gateway: Gateway) -> None:
    redis = gateway.redis
    await make_batch(redis, "batch_kept", "acme", 2)
    await make_batch(redis, "batch_lost", "acme", 2)
    await redis.delete([names.batch("batch_lost")])  # expired while still on the active list
    samples = await scrape(gateway.base_url + "/metrics")
    assert {batch for batch, _, _ in batch_series(samples)} == {"batch_kept"}
    assert value(samples, "switchboard_batches", status="validating") == 1
    assert value(samples, "switchboard_batch_read_ok") == 1


def test_the_worker_counts_batch_lines_by_provider_and_outcome() -> None:
    metrics = WorkerMetrics(lambda: 0)
    for provider, outcome in (("up", "completed"), ("up", "completed"), ("up", "failed"),
                              ("up", "retried"), ("other", "dropped")):
        metrics.batch_line(provider, outcome)
    samples = parse(generate_latest(metrics.registry).decode())
    counts: dict[tuple[str, str], Any] = {
        (dict(labels)["provider"], dict(labels)["outcome"]): amount
        for (name, labels), amount in samples.items() if name == "switchboard_batch_lines_total"}
    assert counts == {("up", "completed"): 2, ("up", "failed"): 1, ("up", "retried"): 1,
                      ("other", "dropped"): 1}
    # Interactive job counts are apart.
    assert not [k for k in samples if k[0] == "switchboard_jobs_total"]


async def test_a_failed_read_keeps_the_last_values_and_says_so(gateway: Gateway) -> None:
    redis = gateway.redis
    url = gateway.base_url + "/metrics"
    await make_batch(redis, "batch_a", "acme", 4)
    assert value(await scrape(url), "switchboard_batch_read_ok") == 1
    await redis.set(names.batch_retry("up"), "not a sorted set")  # ZCARD fails: WRONGTYPE
    await advance(redis, "batch_a", completed=2, status="in_progress")
    samples = await scrape(url)
    assert value(samples, "switchboard_batch_read_ok") == 0
    assert value(samples, "switchboard_batches", status="validating") == 1  # as last read
    assert batch_series(samples)[("batch_a", "acme", "completed")] == 0
    assert value(samples, "switchboard_queue_read_ok") == 1  # the job queues read apart
    await redis.delete([names.batch_retry("up")])
    again = await scrape(url)
    assert value(again, "switchboard_batch_read_ok") == 1
    assert batch_series(again)[("batch_a", "acme", "completed")] == 2
