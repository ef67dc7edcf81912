"""Batches drain through the workers: every line once in its file, retries of what may
succeed later, cancel and expiry, interactive traffic first, metered as batch traffic.

Real redis-server, the real fake OpenAI upstream, in-process ingress and workers. Batches
are made with `BatchStore.create` from line jobs built here the way the API builds them
(tests/test_batches_api.py drives the same through the HTTP API).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from functools import partial
from typing import Any

import httpx
import msgspec
import trio
from prometheus_client.parser import text_string_to_metric_families

from ingress.batchstore import BatchStore
from ingress.dev import free_port
from schemas import names
from schemas.batch import BatchRecord, BatchState, FileObject
from schemas.config import Config
from schemas.envelopes import Job, job_encoder
from schemas.usage import decode_dimensions
from tests.conftest import Gateway, make_config, start_gateway
from tests.fakes.openai_upstream import Behavior, FakeOpenAI
from workers.batches.lines import retry_delay
from workers.service import run_workers

SLUG = "gpt-test"
IN, OUT = 2.0, 8.0  # USD per million tokens on the priced route
ENDED = ("completed", "cancelled", "expired", "failed")


def config_for(redis_url: str, fake: FakeOpenAI, *, max_concurrency: int = 8,
               factor: float = 1.0, batch: dict[str, Any] | None = None) -> Config:
    """Provider `up` (the fake, no retries of its own) serving `SLUG` at a price."""
    return make_config(
        redis_url,
        {"up": {"kind": "openai", "base_url": fake.base_url, "max_retries": 0, "timeout_s": 5,
                "max_concurrency": max_concurrency, "batch_price_factor": factor}},
        [{"slug": SLUG, "routes": [{"provider": "up", "model": "u", "input_per_mtok": IN,
                                    "output_per_mtok": OUT}]}],
        batch={"retry_base_s": 0.05, "retry_max_s": 0.2, **(batch or {})})


async def gateway_for(nursery: trio.Nursery, redis_url: str, fake: FakeOpenAI,
                      **options: Any) -> Gateway:
    return await start_gateway(nursery, config_for(redis_url, fake, **options))


def line_jobs(config: Config, batch_id: str, contents: Sequence[str], *, org: str,
              key_id: str, deadline: float) -> list[bytes]:
    """The line jobs of a chat batch asking `contents`, one line each, custom_id `c-<i>`."""
    model = next(m for m in config.models if m.slug == SLUG)
    return [job_encoder.encode(Job(
        request_id=f"req_{uuid.uuid4().hex}", org=org, project="proj", key_id=key_id,
        model=SLUG, routes=list(model.routes), stream=False, reply_to="", deadline=deadline,
        body=json.dumps({"model": SLUG, "messages": [{"role": "user", "content": text}]}).encode(),
        endpoint="chat", batch=batch_id, batch_line=i, custom_id=f"c-{i}"))
        for i, text in enumerate(contents)]


async def create_batch(gateway: Gateway, contents: Sequence[str], *,
                       window_s: float = 3600) -> str:
    batch_id = f"batch_{uuid.uuid4().hex}"
    now = int(time.time())
    expires = int(time.time() + window_s)
    jobs = line_jobs(gateway.config, batch_id, contents, org="acme", key_id=gateway.key_id,
                     deadline=expires)
    state = BatchState(org="acme", project="proj", key_id=gateway.key_id, status="validating",
                       total=len(jobs), record=BatchRecord(
                           id=batch_id, endpoint="/v1/chat/completions", input_file_id="file-in",
                           completion_window="24h", created_at=now, expires_at=int(expires)))
    await BatchStore(gateway.redis).create(state, {"up": jobs}, ttl_s=86_400)
    return batch_id


async def wait_batch(gateway: Gateway, batch_id: str, statuses: Sequence[str] = ENDED,
                     timeout_s: float = 60) -> BatchState:
    store = BatchStore(gateway.redis)
    with trio.fail_after(timeout_s):
        while True:
            state = await store.get(batch_id, None)
            assert state is not None
            if state.status in statuses:
                return state
            await trio.sleep(0.05)


async def file_lines(gateway: Gateway, file_id: str, org: str = "acme") -> list[dict[str, Any]]:
    """A produced file's lines, after checking it is an ordinary file of the org's."""
    raw = await gateway.redis.hgetall(names.file(file_id))
    assert raw[b"org"] == org.encode()
    meta = msgspec.json.decode(raw[b"meta"], type=FileObject)
    assert meta.purpose == "batch_output" and meta.id == file_id
    assert await gateway.redis.zscore(names.files(org), file_id) is not None
    data = await gateway.redis.get(names.file_data(file_id))
    assert data is not None and len(data) == meta.bytes and data.endswith(b"\n")
    return [json.loads(line) for line in data.splitlines()]


async def test_a_200_line_batch_completes_with_every_custom_id_once(
        nursery: trio.Nursery, redis_url: str, fake_openai: FakeOpenAI) -> None:
    gateway = await gateway_for(nursery, redis_url, fake_openai)
    batch_id = await create_batch(gateway, [f"line {i}" for i in range(200)])
    state = await wait_batch(gateway, batch_id)
    assert state.status == "completed"
    assert (state.total, state.completed, state.failed, state.queued) == (200, 200, 0, 0)
    assert state.in_progress_at and state.finalizing_at and state.completed_at
    assert state.error_file_id == ""  # no error line: no error file, as OpenAI does
    lines = await file_lines(gateway, state.output_file_id)
    assert [line["custom_id"] for line in lines] == [f"c-{i}" for i in range(200)]
    for i, line in enumerate(lines):
        assert line["id"].startswith("batch_req_") and line["error"] is None
        assert line["response"]["status_code"] == 200
        body = line["response"]["body"]
        # The answer a direct call gives: the slug echoed, the upstream's content.
        assert body["model"] == SLUG and body["object"] == "chat.completion"
        assert body["choices"][0]["message"]["content"] == f"line {i}"
    assert len({line["id"] for line in lines}) == 200
    assert len([r for r in fake_openai.requests if r.path.endswith("/chat/completions")]) == 200
    assert not await gateway.redis.sismember(names.BATCHES_ACTIVE, batch_id)
    # What the batch kept while it ran is gone; the files are what remains.
    assert not await gateway.redis.exists([names.batch_output(batch_id),
                                           names.batch_lines(batch_id, "up")])


async def test_a_refused_line_goes_to_the_error_file_and_counts_failed(
        nursery: trio.Nursery, redis_url: str, fake_openai: FakeOpenAI) -> None:
    refusal = {"error": {"message": "context too long", "type": "invalid_request_error",
                         "code": "context_length_exceeded", "param": "messages"}}
    fake_openai.when("line 1", Behavior(status=400, error=refusal))
    gateway = await gateway_for(nursery, redis_url, fake_openai)
    batch_id = await create_batch(gateway, ["line 0", "line 1", "line 2"])
    state = await wait_batch(gateway, batch_id)
    assert (state.status, state.completed, state.failed) == ("completed", 2, 1)
    output = await file_lines(gateway, state.output_file_id)
    assert [line["custom_id"] for line in output] == ["c-0", "c-2"]
    [error] = await file_lines(gateway, state.error_file_id)
    assert error["custom_id"] == "c-1" and error["error"] is None
    assert error["response"]["status_code"] == 400
    assert error["response"]["body"]["error"]["code"] == "context_length_exceeded"
    assert error["response"]["body"]["error"]["message"] == "context too long"


async def test_a_line_failing_twice_with_a_500_is_retried_and_ends_in_the_output(
        nursery: trio.Nursery, redis_url: str, fake_openai: FakeOpenAI) -> None:
    fake_openai.when("line 1", Behavior(status=500), Behavior(status=500))
    gateway = await gateway_for(nursery, redis_url, fake_openai)
    batch_id = await create_batch(gateway, ["line 0", "line 1"])
    state = await wait_batch(gateway, batch_id)
    assert (state.status, state.completed, state.failed) == ("completed", 2, 0)
    assert state.error_file_id == ""
    output = await file_lines(gateway, state.output_file_id)
    assert output[1]["custom_id"] == "c-1"
    assert output[1]["response"]["body"]["choices"][0]["message"]["content"] == "line 1"
    asked = [r for r in fake_openai.requests if r.body["messages"][0]["content"] == "line 1"]
    assert len(asked) == 3  # two failures, each retried later, then the answer


async def test_cancel_starts_no_line_a_second_later_and_ends_cancelled(
        nursery: trio.Nursery, redis_url: str, fake_openai: FakeOpenAI) -> None:
    fake_openai.slow(0.3)
    gateway = await gateway_for(nursery, redis_url, fake_openai, max_concurrency=4)
    batch_id = await create_batch(gateway, [f"line {i}" for i in range(200)])
    store = BatchStore(gateway.redis)
    with trio.fail_after(30):
        while (await store.get(batch_id, None)).completed < 5:  # type: ignore[union-attr]
            await trio.sleep(0.05)
    cancelled = await store.cancel(batch_id, None)
    assert cancelled is not None and cancelled.status == "cancelling"
    await trio.sleep(1.0)
    started = len(fake_openai.requests)  # every line that started did so within a second
    state = await wait_batch(gateway, batch_id)
    assert len(fake_openai.requests) == started
    assert state.status == "cancelled" and state.cancelled_at and state.queued == 0
    assert state.completed + state.failed < 200
    output = await file_lines(gateway, state.output_file_id)
    # Lines in flight finished: every line that reached the upstream is in the output.
    assert len(output) == state.completed == started
    assert len({line["custom_id"] for line in output}) == len(output)
    assert not await gateway.redis.sismember(names.BATCHES_ACTIVE, batch_id)


async def test_an_expired_batch_puts_its_unrun_lines_in_the_error_file(
        nursery: trio.Nursery, redis_url: str, fake_openai: FakeOpenAI) -> None:
    fake_openai.slow(0.3)
    gateway = await gateway_for(nursery, redis_url, fake_openai, max_concurrency=2)
    batch_id = await create_batch(gateway, [f"line {i}" for i in range(40)], window_s=3)
    state = await wait_batch(gateway, batch_id)
    assert state.status == "expired" and state.expired_at and state.queued == 0
    output = await file_lines(gateway, state.output_file_id)
    errors = await file_lines(gateway, state.error_file_id)
    assert 0 < len(output) == state.completed < 40
    # A line whose call the window cut short failed with that error; the lines that never
    # ran say `batch_expired` (and count as neither).
    cut = [line for line in errors if line["response"] is not None]
    assert len(cut) == state.failed
    assert all(line["response"]["status_code"] == 504 for line in cut)
    unrun = [line for line in errors if line["response"] is None]
    assert unrun and all(line["error"]["code"] == "batch_expired" for line in unrun)
    assert len(output) + len(errors) == 40
    ids = [line["custom_id"] for line in output + errors]
    assert sorted(ids) == sorted(f"c-{i}" for i in range(40))  # each exactly once


async def test_interactive_requests_wait_at_most_for_one_batch_line(
        nursery: trio.Nursery, redis_url: str, fake_openai: FakeOpenAI) -> None:
    fake_openai.slow(0.5)
    # One slot: a running batch line holds it, but the next one read is interactive.
    gateway = await gateway_for(nursery, redis_url, fake_openai, max_concurrency=1)
    batch_id = await create_batch(gateway, [f"line {i}" for i in range(40)])
    store = BatchStore(gateway.redis)
    with trio.fail_after(30):
        while (await store.get(batch_id, None)).completed < 2:  # type: ignore[union-attr]
            await trio.sleep(0.02)
    client = gateway.client()
    for turn in range(3):
        waiting = await gateway.redis.xlen(names.batch_queue("up"))
        assert waiting > 1  # the batch stream is full of lines that could go first
        before = len(fake_openai.requests)
        answer = await client.chat.completions.create(
            model=SLUG, messages=[{"role": "user", "content": f"interactive {turn}"}])
        assert answer.choices[0].message.content == f"interactive {turn}"
        asked = [r.body["messages"][0]["content"] for r in fake_openai.requests[before:]]
        position = asked.index(f"interactive {turn}")
        assert position <= 1, asked  # at most the line that held the slot went first
    state = await wait_batch(gateway, batch_id, statuses=("in_progress",))
    assert state.completed < 40  # the batch was still draining all along


async def test_batch_lines_are_metered_as_batch_traffic_at_the_price_factor(
        nursery: trio.Nursery, redis_url: str, fake_openai: FakeOpenAI) -> None:
    gateway = await gateway_for(nursery, redis_url, fake_openai, factor=0.5)
    client = gateway.client()
    await client.chat.completions.create(
        model=SLUG, messages=[{"role": "user", "content": "one two three"}])
    batch_id = await create_batch(gateway, ["one two three"] * 4)
    state = await wait_batch(gateway, batch_id)
    assert state.completed == 4
    day = await gateway.redis.hgetall(names.usage_day("acme", names.day()))
    by_traffic: dict[str, dict[str, int]] = {}
    for field, value in day.items():
        metric, _, dims = field.decode().partition(":")
        traffic = decode_dimensions(dims)[6] or "interactive"
        by_traffic.setdefault(traffic, {})
        by_traffic[traffic][metric] = by_traffic[traffic].get(metric, 0) + int(value)
    interactive, batch = by_traffic["interactive"], by_traffic["batch"]
    assert interactive["requests"] == 1 and batch["requests"] == 4
    assert batch["prompt_tokens"] == 4 * interactive["prompt_tokens"]
    # Each batch line costs half of what the same direct call costs.
    assert batch["cost_micro_usd"] == 4 * round(interactive["cost_micro_usd"] * 0.5)
    month = await gateway.usage()
    assert month["requests"] == 5
    assert month["cost_micro_usd"] == interactive["cost_micro_usd"] + batch["cost_micro_usd"]


async def test_a_batch_line_fails_over_to_the_next_routes_batch_stream(
        nursery: trio.Nursery, redis_url: str, fake_upstream: Any) -> None:
    primary: FakeOpenAI = await fake_upstream("openai")
    backup: FakeOpenAI = await fake_upstream("openai")
    primary.when("line 1", Behavior(status=401))  # our credential: the next route may answer
    config = make_config(
        redis_url,
        {name: {"kind": "openai", "base_url": fake.base_url, "max_retries": 0}
         for name, fake in (("up", primary), ("backup", backup))},
        [{"slug": SLUG, "routes": [{"provider": "up", "model": "u"},
                                   {"provider": "backup", "model": "b"}]}])
    gateway = await start_gateway(nursery, config)
    batch_id = await create_batch(gateway, ["line 0", "line 1", "line 2"])
    state = await wait_batch(gateway, batch_id)
    assert (state.status, state.completed, state.failed) == ("completed", 3, 0)
    output = await file_lines(gateway, state.output_file_id)
    assert [line["custom_id"] for line in output] == ["c-0", "c-1", "c-2"]
    assert [r.body["model"] for r in backup.requests] == ["b"]
    assert backup.requests[0].body["messages"][0]["content"] == "line 1"


async def test_batches_of_one_provider_are_fed_in_turn(
        nursery: trio.Nursery, redis_url: str, fake_openai: FakeOpenAI) -> None:
    fake_openai.slow(0.05)
    gateway = await gateway_for(nursery, redis_url, fake_openai, max_concurrency=1,
                                batch={"feed_ahead": 2})
    first = await create_batch(gateway, [f"a {i}" for i in range(12)])
    second = await create_batch(gateway, [f"b {i}" for i in range(12)])
    for batch_id in (first, second):
        assert (await wait_batch(gateway, batch_id)).status == "completed"
    asked = [r.body["messages"][0]["content"][0] for r in fake_openai.requests]
    # Neither waits for the other to finish: both are served from the start.
    assert asked[:12].count("a") >= 4 and asked[:12].count("b") >= 4, asked


def test_the_retry_back_off_doubles_to_its_cap_and_honours_retry_after() -> None:
    config = config_for("redis://127.0.0.1:1/0", FakeOpenAI(),
                        batch={"retry_base_s": 1, "retry_max_s": 5})
    assert [retry_delay(config, n, None) for n in range(5)] == [1, 2, 4, 5, 5]
    assert retry_delay(config, 0, 30.0) == 30.0  # a 429's Retry-After comes first
    assert retry_delay(config, 2, 0.5) == 4


async def test_a_retry_that_would_come_after_the_window_fails_with_its_last_error(
        nursery: trio.Nursery, redis_url: str, fake_openai: FakeOpenAI) -> None:
    fake_openai.when("line 0", Behavior(status=503))
    gateway = await gateway_for(nursery, redis_url, fake_openai,
                                batch={"retry_base_s": 600, "retry_max_s": 600})
    batch_id = await create_batch(gateway, ["line 0", "line 1"], window_s=300)
    state = await wait_batch(gateway, batch_id)
    assert (state.status, state.completed, state.failed) == ("completed", 1, 1)
    [error] = await file_lines(gateway, state.error_file_id)
    assert error["custom_id"] == "c-0" and error["error"] is None
    assert error["response"]["status_code"] == 502
    assert error["response"]["body"]["error"]["code"] == "upstream_error"


async def test_cancel_ends_lines_waiting_for_a_retry_at_once(
        nursery: trio.Nursery, redis_url: str, fake_openai: FakeOpenAI) -> None:
    fake_openai.when("line 0", Behavior(status=500))
    gateway = await gateway_for(nursery, redis_url, fake_openai,
                                batch={"retry_base_s": 120, "retry_max_s": 120})
    batch_id = await create_batch(gateway, ["line 0", "line 1"])
    with trio.fail_after(30):  # line 0 waits two minutes for its retry
        while not await gateway.redis.zcard(names.batch_retry("up")):
            await trio.sleep(0.05)
    await BatchStore(gateway.redis).cancel(batch_id, None)
    state = await wait_batch(gateway, batch_id, timeout_s=10)
    assert (state.status, state.completed, state.failed, state.queued) == ("cancelled", 1, 0, 0)
    assert not await gateway.redis.zcard(names.batch_retry("up"))
    output = await file_lines(gateway, state.output_file_id)
    assert [line["custom_id"] for line in output] == ["c-1"]
    assert state.error_file_id == ""


async def test_a_workers_metrics_count_each_lines_outcome_once(
        nursery: trio.Nursery, redis_url: str, fake_openai: FakeOpenAI) -> None:
    fake_openai.when("line 1", Behavior(status=500))  # once retried, then answered
    fake_openai.when("line 2", Behavior(status=400, error={"error": {
        "message": "no", "type": "invalid_request_error", "code": "bad", "param": None}}))
    config = config_for(redis_url, fake_openai)
    gateway = await start_gateway(nursery, config, workers=False)
    port = free_port()
    await nursery.start(partial(run_workers, config, metrics_bind=("127.0.0.1", port)))
    batch_id = await create_batch(gateway, ["line 0", "line 1", "line 2", "line 3"])
    state = await wait_batch(gateway, batch_id)
    assert (state.completed, state.failed) == (3, 1)
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    counted = {family.name: {s.labels["outcome"]: s.value for s in family.samples
                             if s.name.endswith("_total")}
               for family in text_string_to_metric_families(text)
               if family.name == "switchboard_batch_lines"}
    assert counted == {"switchboard_batch_lines": {"completed": 3, "failed": 1, "retried": 1}}


async def test_cancel_stops_the_lines_waiting_for_their_providers_pace(
        nursery: trio.Nursery, redis_url: str, fake_openai: FakeOpenAI) -> None:
    """Lines waiting for room in the provider's rpm window (not yet started) see the cancel
    too: none of them starts later, and the batch ends cancelled at once, not a minute on."""
    config = config_for(redis_url, fake_openai)
    config.providers["up"].rpm = 8  # the batch lines' share: 6 a minute
    gateway = await start_gateway(nursery, config)
    batch_id = await create_batch(gateway, [f"line {i}" for i in range(20)])
    store = BatchStore(gateway.redis)
    with trio.fail_after(30):
        while (await store.get(batch_id, None)).completed < 6:  # type: ignore[union-attr]
            await trio.sleep(0.05)
    await trio.sleep(0.5)  # the next lines are read, and wait for the window
    assert (await store.get(batch_id, None)).queued > 0  # type: ignore[union-attr]
    await store.cancel(batch_id, None)
    state = await wait_batch(gateway, batch_id, timeout_s=10)
    assert (state.status, state.completed, state.queued) == ("cancelled", 6, 0)
    assert len(fake_openai.requests) == 6


async def test_lanes_split_interactive_jobs_and_batch_lines_between_workers(
        nursery: trio.Nursery, redis_url: str, fake_openai: FakeOpenAI) -> None:
    config = config_for(redis_url, fake_openai)
    gateway = await start_gateway(nursery, config, workers=False)
    await nursery.start(partial(run_workers, config, lanes=frozenset({"interactive"})))
    answer = await gateway.client().chat.completions.create(
        model=SLUG, messages=[{"role": "user", "content": "now"}])
    assert answer.choices[0].message.content == "now"
    batch_id = await create_batch(gateway, [f"line {i}" for i in range(5)])
    await trio.sleep(1.5)  # fed to the batch stream, but no worker of the batch lane yet
    waiting = await BatchStore(gateway.redis).get(batch_id, None)
    assert waiting is not None and (waiting.status, waiting.completed) == ("in_progress", 0)
    await nursery.start(partial(run_workers, config, lanes=frozenset({"batch"})))
    assert (await wait_batch(gateway, batch_id)).completed == 5
    assert len(fake_openai.requests) == 6
