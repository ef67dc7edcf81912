"""Batches survive crashes: a worker SIGKILLed mid-batch loses no line and doubles none;
two workers finalizing at once, or one dying while it finalizes, give one set of files.

Real redis-server, real `switchboard worker` subprocesses (tests/fleet.py), the real fake
OpenAI upstream in this process.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import trio

from ingress.batchstore import BatchStore
from schemas import names
from schemas.batch import BatchState
from tests.conftest import Gateway, make_config, start_gateway
from tests.fakes.openai_upstream import FakeOpenAI
from tests.fleet import Fleet
from tests.test_batch_drain import SLUG, config_for, create_batch, file_lines, wait_batch
from workers.batches import Finalizer


def fleet_config(fake: FakeOpenAI) -> str:
    """Provider `up` (the fake) serving `SLUG`, with quick liveness checks."""
    return f"""
[limits]
heartbeat_s = 0.2
reclaim_after_s = 1.0
[batch]
retry_base_s = 0.05
retry_max_s = 0.2
[providers.up]
kind = "openai"
base_url = "{fake.base_url}"
timeout_s = 30
max_retries = 0
max_concurrency = 4
[[models]]
slug = "{SLUG}"
routes = [{{ provider = "up", model = "u" }}]
"""


def consumers(fleet: Fleet) -> dict[str, str]:
    """{consumer name: process name} from each worker's ready line."""
    out = {}
    for log in fleet.logs:
        name = log.name.split(".")[0]
        for line in log.read_text(errors="replace").splitlines():
            if '"worker_ready"' in line:
                out[json.loads(line)["consumer"]] = name
    return out


async def ingress_view(nursery: trio.Nursery, redis_url: str, fake: FakeOpenAI) -> Gateway:
    """Only an ingress-side view in this process: every line runs in the worker processes."""
    return await start_gateway(nursery, make_config(redis_url, {
        "up": {"kind": "openai", "base_url": fake.base_url}},
        [{"slug": SLUG, "routes": [{"provider": "up", "model": "u"}]}]), workers=False)


async def wait_owning(gateway: Gateway, fleet: Fleet, batch_id: str, name: str) -> int:
    """Wait until some lines are done and worker `name` runs some; returns how many."""
    by_consumer = consumers(fleet)
    with trio.fail_after(30):
        while True:
            rows: Any = await gateway.redis.xpending(names.batch_queue("up"), names.GROUP,
                                                     "-", "+", 100)
            owners = [by_consumer.get(row.consumer.decode()) for row in rows]
            state = await BatchStore(gateway.redis).get(batch_id, None)
            assert state is not None
            if state.completed >= 5 and name in owners:
                return owners.count(name)
            await trio.sleep(0.02)


async def test_a_batch_completes_with_each_line_once_after_a_worker_is_sigkilled(
        nursery: trio.Nursery, redis_url: str, fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    fake_openai.slow(0.3)
    gateway = await ingress_view(nursery, redis_url, fake_openai)
    fleet = Fleet(tmp_path, fleet_config(fake_openai), redis_url)
    try:
        await fleet.worker("w1")
        await fleet.worker("w2")
        batch_id = await create_batch(gateway, [f"line {i}" for i in range(60)])
        assert await wait_owning(gateway, fleet, batch_id, "w1") > 0
        fleet.kill("w1")  # while it runs batch lines
        state = await wait_batch(gateway, batch_id)
        assert (state.status, state.completed, state.failed, state.queued) == \
            ("completed", 60, 0, 0)
        lines = await file_lines(gateway, state.output_file_id)
        assert [line["custom_id"] for line in lines] == [f"c-{i}" for i in range(60)]
        for i, line in enumerate(lines):
            assert line["response"]["body"]["choices"][0]["message"]["content"] == f"line {i}"
        # The lines the dead worker had in flight ran again elsewhere (upstream twice) but
        # are once in the output.
        assert len(fake_openai.requests) >= 60
        assert any('"event":"job"' in log.read_text() for log in fleet.logs[1:])
    finally:
        fleet.stop_all()


async def test_a_frozen_workers_late_lines_are_void_once_another_took_them_over(
        nursery: trio.Nursery, redis_url: str, fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    fake_openai.slow(0.3)
    gateway = await ingress_view(nursery, redis_url, fake_openai)
    fleet = Fleet(tmp_path, fleet_config(fake_openai), redis_url)
    try:
        await fleet.worker("w1")
        await fleet.worker("w2")
        batch_id = await create_batch(gateway, [f"line {i}" for i in range(40)])
        assert await wait_owning(gateway, fleet, batch_id, "w1") > 0
        fleet.kill("w1", signal.SIGSTOP)  # presumed dead after reclaim_after_s: taken over
        await trio.sleep(3)
        fleet.kill("w1", signal.SIGCONT)  # its answers arrive late: the finish guard voids them
        state = await wait_batch(gateway, batch_id)
        assert (state.status, state.completed, state.failed, state.queued) == \
            ("completed", 40, 0, 0)
        lines = await file_lines(gateway, state.output_file_id)
        assert [line["custom_id"] for line in lines] == [f"c-{i}" for i in range(40)]
        assert '"event":"job_not_owned"' in fleet.logs[0].read_text()
    finally:
        fleet.stop_all()


async def ended_lines_batch(gateway: Gateway, count: int) -> BatchState:
    """A batch whose every line ended (its outcomes written as the finish script does),
    left for a finalizer."""
    batch_id = await create_batch(gateway, [f"line {i}" for i in range(count)])
    await gateway.redis.delete([names.batch_lines(batch_id, "up")])
    for i in range(count):
        line = json.dumps({"id": f"batch_req_{i}", "custom_id": f"c-{i}", "error": None,
                           "response": {"status_code": 200, "request_id": f"r{i}",
                                        "body": {"n": i}}})
        await gateway.redis.hset(names.batch_output(batch_id), {str(i): line})
    await gateway.redis.hset(names.batch(batch_id), {"status": "in_progress",
                                                     "completed": str(count)})
    state = await BatchStore(gateway.redis).get(batch_id, None)
    assert state is not None
    return state


async def test_two_workers_finalizing_at_once_write_one_set_of_files(
        nursery: trio.Nursery, redis_url: str, fake_openai: FakeOpenAI) -> None:
    gateway = await start_gateway(nursery, config_for(redis_url, fake_openai), workers=False)
    state = await ended_lines_batch(gateway, 50)
    finalizers = [Finalizer(gateway.redis, gateway.config, f"w{i}") for i in range(2)]
    async with trio.open_nursery() as both:
        for finalizer in finalizers:
            both.start_soon(finalizer.step, state, ["up"])
    for finalizer in finalizers:  # whichever lost the lease: the next tick finishes
        await finalizer.step(await _fresh(gateway, state), ["up"])
    done = await _fresh(gateway, state)
    assert done.status == "completed" and done.output_file_id and not done.error_file_id
    lines = await file_lines(gateway, done.output_file_id)
    assert [line["response"]["body"]["n"] for line in lines] == list(range(50))
    assert await gateway.redis.zcard(names.files("acme")) == 1


async def test_a_finalizer_that_died_mid_way_is_taken_over_once_its_lease_expires(
        nursery: trio.Nursery, redis_url: str, fake_openai: FakeOpenAI) -> None:
    gateway = await start_gateway(nursery, config_for(redis_url, fake_openai), workers=False)
    state = await ended_lines_batch(gateway, 20)
    batch_id = state.record.id
    # The dead one: it moved the batch to finalizing, held the lease and left half a file.
    await gateway.redis.hset(names.batch(batch_id), {"status": "finalizing"})
    await gateway.redis.set(names.batch_lease(batch_id), b"dead", px=300)
    await gateway.redis.set(names.file_staging("file-x", "dead"), b'{"half": ', ex=60)
    survivor = Finalizer(gateway.redis, gateway.config, "alive")
    await survivor.step(await _fresh(gateway, state), ["up"])
    assert (await _fresh(gateway, state)).status == "finalizing"  # the lease still holds
    await trio.sleep(0.4)
    await survivor.step(await _fresh(gateway, state), ["up"])
    done = await _fresh(gateway, state)
    assert done.status == "completed" and done.completed_at
    lines = await file_lines(gateway, done.output_file_id)
    assert [line["custom_id"] for line in lines] == [f"c-{i}" for i in range(20)]
    assert not await gateway.redis.sismember(names.BATCHES_ACTIVE, batch_id)


async def _fresh(gateway: Gateway, state: BatchState) -> BatchState:
    fresh = await BatchStore(gateway.redis).get(state.record.id, None)
    assert fresh is not None
    return fresh
