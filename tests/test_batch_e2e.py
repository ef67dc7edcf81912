"""The Batch API end to end, as a user runs it with the openai SDK: upload, create, poll
`batches.retrieve`, download the output; every endpoint a batch serves; cancel; another
org; a worker process SIGKILLed mid-batch. Nothing here touches Redis but to check it."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import openai
import pytest
import trio

from ingress.keys import KeyStore
from schemas import names
from tests.batchfiles import CHAT, batch_gateway, jsonl, line, other_org_secret
from tests.conftest import make_config, start_gateway
from tests.fakes.openai_upstream import Behavior, FakeOpenAI
from tests.fleet import Fleet
from workers.connection import connect

ENDED = ("completed", "failed", "expired", "cancelled")


async def poll(client: openai.AsyncOpenAI, batch_id: str, timeout_s: float = 60) -> Any:
    """`batches.retrieve` until the batch has ended, as a user's script polls."""
    with trio.fail_after(timeout_s):
        while True:
            batch = await client.batches.retrieve(batch_id)
            if batch.status in ENDED:
                return batch
            await trio.sleep(0.1)


async def run_batch(client: openai.AsyncOpenAI, lines: list[dict[str, Any]],
                    endpoint: str = CHAT) -> Any:
    upload = await client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
    batch = await client.batches.create(input_file_id=upload.id, endpoint=endpoint,  # type: ignore[arg-type]
                                        completion_window="24h", metadata={"job": "nightly"})
    assert batch.status == "validating" and batch.request_counts.total == len(lines)  # type: ignore[union-attr]
    return await poll(client, batch.id)


async def output_lines(client: openai.AsyncOpenAI, file_id: str | None) -> list[dict[str, Any]]:
    assert file_id
    content = await client.files.content(file_id)
    return [json.loads(text) for text in content.text.splitlines()]


async def test_a_200_line_batch_through_the_sdk_answers_every_custom_id_once(
        nursery: trio.Nursery, redis_url: str) -> None:
    gateway = await batch_gateway(nursery, redis_url, workers=True)
    client = gateway.client()
    batch = await run_batch(client, [line(n) for n in range(200)])
    assert batch.status == "completed", batch.errors
    assert (batch.request_counts.total, batch.request_counts.completed,
            batch.request_counts.failed) == (200, 200, 0)
    assert batch.metadata == {"job": "nightly"} and batch.error_file_id is None
    assert batch.in_progress_at and batch.finalizing_at and batch.completed_at
    lines = await output_lines(client, batch.output_file_id)
    assert sorted(item["custom_id"] for item in lines) == sorted(f"req-{n}" for n in range(200))
    direct = await client.chat.completions.create(
        model="echo", messages=[{"role": "user", "content": "say 7"}])
    [seventh] = [item for item in lines if item["custom_id"] == "req-7"]
    assert seventh["error"] is None and seventh["response"]["status_code"] == 200
    body = seventh["response"]["body"]
    # The same answer a direct call gives (ids and times aside).
    assert body["model"] == direct.model == "echo"
    assert body["choices"][0]["message"]["content"] == direct.choices[0].message.content
    assert (await client.files.retrieve(batch.output_file_id)).purpose == "batch_output"
    listed = [b.id async for b in client.batches.list()]
    assert listed == [batch.id]


@pytest.mark.parametrize("endpoint,kind", [("/v1/embeddings", "list"),
                                           ("/v1/completions", "text_completion"),
                                           ("/v1/responses", "response")])
async def test_each_served_endpoint_runs_as_a_batch(nursery: trio.Nursery, redis_url: str,
                                                    endpoint: str, kind: str) -> None:
    gateway = await batch_gateway(nursery, redis_url, workers=True)
    client = gateway.client()
    batch = await run_batch(client, [line(n, url=endpoint) for n in range(3)], endpoint)
    assert (batch.status, batch.request_counts.completed) == ("completed", 3), batch.errors
    lines = await output_lines(client, batch.output_file_id)
    assert {item["response"]["body"]["object"] for item in lines} == {kind}


async def test_a_refused_line_is_in_the_error_file_with_the_providers_answer(
        nursery: trio.Nursery, redis_url: str, fake_openai: FakeOpenAI) -> None:
    fake_openai.when("say 1", fake_openai_refusal())
    config = make_config(redis_url, {"up": {"kind": "openai", "base_url": fake_openai.base_url,
                                            "max_retries": 0}},
                         [{"slug": "echo", "routes": [{"provider": "up", "model": "u"}]}])
    gateway = await start_gateway(nursery, config)
    client = gateway.client()
    batch = await run_batch(client, [line(n) for n in range(3)])
    assert (batch.status, batch.request_counts.completed, batch.request_counts.failed) == \
        ("completed", 2, 1)
    [error] = await output_lines(client, batch.error_file_id)
    assert error["custom_id"] == "req-1" and error["error"] is None
    assert error["response"]["status_code"] == 400
    assert error["response"]["body"]["error"]["code"] == "context_length_exceeded"


def fake_openai_refusal() -> Behavior:
    return Behavior(status=400, error={"error": {
        "message": "too long", "type": "invalid_request_error",
        "code": "context_length_exceeded", "param": "messages"}})


async def test_cancel_through_the_sdk_ends_cancelled_and_another_org_sees_nothing(
        nursery: trio.Nursery, redis_url: str, fake_openai: FakeOpenAI) -> None:
    fake_openai.slow(0.2)
    config = make_config(redis_url, {"up": {"kind": "openai", "base_url": fake_openai.base_url,
                                            "max_concurrency": 2}},
                         [{"slug": "echo", "routes": [{"provider": "up", "model": "u"}]}])
    gateway = await start_gateway(nursery, config)
    client = gateway.client()
    upload = await client.files.create(file=("in.jsonl", jsonl([line(n) for n in range(200)])),
                                       purpose="batch")
    batch = await client.batches.create(input_file_id=upload.id, endpoint=CHAT,
                                        completion_window="24h")
    with trio.fail_after(30):
        while (await client.batches.retrieve(batch.id)).request_counts.completed < 2:  # type: ignore[union-attr]
            await trio.sleep(0.05)
    rival = gateway.client(api_key=await other_org_secret(gateway))
    for call in (rival.batches.retrieve(batch.id), rival.batches.cancel(batch.id),
                 rival.files.retrieve(upload.id), rival.files.content(upload.id)):
        with pytest.raises(openai.NotFoundError):
            await call
    assert (await client.batches.cancel(batch.id)).status == "cancelling"
    asked_at_cancel = len(fake_openai.requests)
    ended = await poll(client, batch.id)
    assert ended.status == "cancelled" and ended.cancelled_at
    assert ended.request_counts.completed < 200
    # Lines in flight at the cancel finish; no new one starts (two slots: at most two more).
    assert len(fake_openai.requests) <= asked_at_cancel + 2
    if ended.output_file_id:
        done = await output_lines(client, ended.output_file_id)
        assert len(done) == ended.request_counts.completed


async def test_a_worker_and_the_ingress_sigkilled_mid_batch_lose_and_double_no_line(
        tmp_path: Path, redis_url: str, fake_openai: FakeOpenAI) -> None:
    fake_openai.slow(0.05)
    config_text = f"""
redis_url = "{redis_url}"
[limits]
heartbeat_s = 0.2
reclaim_after_s = 1.0
key_cache_s = 0.0
[providers.up]
kind = "openai"
base_url = "{fake_openai.base_url}"
max_concurrency = 8
[[models]]
slug = "echo"
routes = [{{ provider = "up", model = "u" }}]
"""
    fleet = Fleet(tmp_path, config_text, redis_url)
    try:
        base = await fleet.serve("in1")
        await fleet.worker("w1")
        await fleet.worker("w2", "--lane", "batch", "--nice", "5")  # finishes the batch alone
        async with connect(redis_url) as redis:
            _, secret = await KeyStore(redis).create("acme", "proj", "", "fleet")
        client = openai.AsyncOpenAI(base_url=base + "/v1", api_key=secret, max_retries=0)
        upload = await client.files.create(
            file=("in.jsonl", jsonl([line(n) for n in range(300)])), purpose="batch")
        batch = await client.batches.create(input_file_id=upload.id, endpoint=CHAT,
                                            completion_window="24h")
        with trio.fail_after(30):
            while (await client.batches.retrieve(batch.id)).request_counts.completed < 40:  # type: ignore[union-attr]
                await trio.sleep(0.05)
        fleet.kill("w1", signal.SIGKILL)
        fleet.kill("in1", signal.SIGKILL)  # the ingress that took the batch, too
        killed_at = time.time()
        client = openai.AsyncOpenAI(base_url=await fleet.serve("in2") + "/v1", api_key=secret,
                                    max_retries=0)
        ended = await poll(client, batch.id, timeout_s=90)
        assert ended.status == "completed"
        assert (ended.request_counts.completed, ended.request_counts.failed) == (300, 0)
        lines = await output_lines(client, ended.output_file_id)
        assert sorted(item["custom_id"] for item in lines) == sorted(f"req-{n}" for n in range(300))
        assert ended.completed_at and ended.completed_at >= int(killed_at)
    finally:
        fleet.stop_all()


async def test_the_batch_leaves_only_its_files_and_record(nursery: trio.Nursery,
                                                         redis_url: str) -> None:
    gateway = await batch_gateway(nursery, redis_url, workers=True)
    batch = await run_batch(gateway.client(), [line(n) for n in range(5)])
    assert not await gateway.redis.sismember(names.BATCHES_ACTIVE, batch.id)
    left = {key.decode() for key in await gateway.redis.keys(names.batch(batch.id) + "*")}
    assert left == {names.batch(batch.id)}
