"""The Batch API with the official openai SDK: create (every line a job on its provider's
list, or the batch `failed` at once with the lines that cannot run), retrieve, list,
cancel; per org; bad bodies change nothing. No workers run here: a batch stays as the API
left it (how batches drain is tests/test_batch_drain.py)."""

from __future__ import annotations

import httpx
import openai
import pytest
import trio

from schemas import names
from schemas.envelopes import job_decoder
from tests.batchfiles import CHAT, gateway, jsonl, keys, line, other_org_secret
from tests.conftest import Gateway

__all__ = ["gateway"]  # the fixture


async def _upload(gateway: Gateway, lines: list[dict[str, object]]) -> str:
    made = await gateway.client().files.create(file=("in.jsonl", jsonl(lines)),
                                               purpose="batch")
    return made.id


async def test_create_makes_a_job_of_every_line(gateway: Gateway) -> None:
    client = gateway.client()
    file_id = await _upload(gateway, [line(n) for n in range(5)])
    batch = await client.batches.create(input_file_id=file_id, endpoint=CHAT,
                                        completion_window="24h", metadata={"run": "nightly"})
    assert batch.id.startswith("batch_") and batch.object == "batch"
    assert (batch.status, batch.endpoint, batch.input_file_id) == ("validating", CHAT, file_id)
    assert batch.expires_at == batch.created_at + 24 * 3600
    assert batch.request_counts is not None and batch.request_counts.total == 5
    assert batch.metadata == {"run": "nightly"} and batch.errors is None
    assert await client.batches.retrieve(batch.id) == batch
    assert await gateway.redis.sismember(names.BATCHES_ACTIVE, batch.id)
    raw = await gateway.redis.lrange(names.batch_lines(batch.id, "local"), 0, -1)
    jobs = [job_decoder.decode(j) for j in raw]
    assert [(j.batch, j.batch_line, j.custom_id) for j in jobs] == [
        (batch.id, n, f"req-{n}") for n in range(5)]
    job = jobs[0]
    assert job.request_id.startswith("batch_req_") and len({j.request_id for j in jobs}) == 5
    assert (job.reply_to, job.stream, job.deadline) == ("", False, batch.expires_at)
    assert (job.org, job.project, job.key_id) == ("acme", "proj", gateway.key_id)
    assert job.endpoint == "chat" and job.model == "echo"
    assert [(r.provider, r.model) for r in job.routes] == [("local", "echo")]
    assert b'"say 0"' in job.body


async def test_identity_and_thread_are_kept_off_the_body(gateway: Gateway) -> None:
    tracked = line(0) | {"body": {"model": "echo", "messages": [{"role": "user", "content": "x"}],
                                  "identity": {"id": "u-1"}, "thread": {"id": "t-9"}}}
    file_id = await _upload(gateway, [tracked])
    batch = await gateway.client().batches.create(input_file_id=file_id, endpoint=CHAT,
                                                  completion_window="24h")
    job = job_decoder.decode((await gateway.redis.lrange(
        names.batch_lines(batch.id, "local"), 0, 0))[0])
    assert (job.identity, job.thread) == ("u-1", "t-9")
    assert b"identity" not in job.body and b"thread" not in job.body


async def test_lines_that_cannot_run_fail_the_batch_at_once(gateway: Gateway) -> None:
    client = gateway.client()
    file_id = await _upload(gateway, [line(1), line(2, model="no-such-model"), line(3),
                                      line(4, model="gpt-nope")])
    batch = await client.batches.create(input_file_id=file_id, endpoint=CHAT,
                                        completion_window="24h")
    assert batch.status == "failed" and batch.failed_at is not None
    assert batch.errors is not None and batch.errors.data is not None
    assert [(e.line, e.code, e.param) for e in batch.errors.data] == [
        (2, "model_not_found", "body.model"), (4, "model_not_found", "body.model")]
    assert "no-such-model" in (batch.errors.data[0].message or "")
    assert batch.request_counts is not None and batch.request_counts.total == 0
    assert await client.batches.retrieve(batch.id) == batch
    assert not await gateway.redis.sismember(names.BATCHES_ACTIVE, batch.id)
    assert await keys(gateway, names.batch(batch.id) + ":*") == []  # no line lists

    # A chat file given as an embeddings batch: every line's url is wrong.
    mismatched = await client.batches.create(input_file_id=file_id, endpoint="/v1/embeddings",
                                             completion_window="24h")
    assert mismatched.status == "failed" and mismatched.errors is not None
    assert [(e.line, e.code) for e in mismatched.errors.data or []] == [
        (n, "url_mismatch") for n in (1, 2, 3, 4)]


async def test_a_failed_batch_lists_the_first_hundred_lines(gateway: Gateway) -> None:
    file_id = await _upload(gateway, [line(n, model="unknown") for n in range(150)])
    batch = await gateway.client().batches.create(input_file_id=file_id, endpoint=CHAT,
                                                  completion_window="24h")
    assert batch.status == "failed" and batch.errors is not None
    assert [e.line for e in batch.errors.data or []] == list(range(1, 101))


async def test_list_pages_newest_first(gateway: Gateway) -> None:
    client = gateway.client()
    file_id = await _upload(gateway, [line(1)])
    made = [await client.batches.create(input_file_id=file_id, endpoint=CHAT,
                                        completion_window="24h") for _ in range(3)]
    page = await client.batches.list(limit=2)
    assert [b.id for b in page.data] == [made[2].id, made[1].id] and page.has_more
    rest = await client.batches.list(limit=2, after=made[1].id)
    assert [b.id for b in rest.data] == [made[0].id] and not rest.has_more
    everything = [b.id async for b in client.batches.list(limit=1)]  # the SDK pages on
    assert everything == [b.id for b in reversed(made)]
    async with httpx.AsyncClient(base_url=gateway.base_url) as http:
        answer = await http.get("/v1/batches", params={"limit": 2},
                                headers={"authorization": f"Bearer {gateway.secret}"})
        body = answer.json()
        assert (body["object"], body["first_id"], body["last_id"], body["has_more"]) == (
            "list", made[2].id, made[1].id, True)
        for limit in ("0", "101", "x"):
            answer = await http.get("/v1/batches", params={"limit": limit},
                                    headers={"authorization": f"Bearer {gateway.secret}"})
            assert answer.status_code == 400 and answer.json()["error"]["param"] == "limit"


async def test_cancel(gateway: Gateway) -> None:
    client = gateway.client()
    file_id = await _upload(gateway, [line(1), line(2)])
    batch = await client.batches.create(input_file_id=file_id, endpoint=CHAT,
                                        completion_window="24h")
    cancelled = await client.batches.cancel(batch.id)
    assert cancelled.status == "cancelling" and cancelled.cancelling_at is not None
    assert (await client.batches.cancel(batch.id)).status == "cancelling"  # idempotent
    assert (await client.batches.retrieve(batch.id)).status == "cancelling"
    failed = await client.batches.create(input_file_id=await _upload(gateway, [line(1, model="x")]),
                                         endpoint=CHAT, completion_window="24h")
    with pytest.raises(openai.ConflictError) as caught:
        await client.batches.cancel(failed.id)
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["code"] == "batch_not_cancellable"
    assert (await client.batches.retrieve(failed.id)).status == "failed"


async def test_another_org_sees_no_batch(gateway: Gateway) -> None:
    file_id = await _upload(gateway, [line(1)])
    batch = await gateway.client().batches.create(input_file_id=file_id, endpoint=CHAT,
                                                  completion_window="24h")
    rival = gateway.client(api_key=await other_org_secret(gateway))
    for call in (rival.batches.retrieve, rival.batches.cancel):
        with pytest.raises(openai.NotFoundError):
            await call(batch.id)
    with pytest.raises(openai.NotFoundError) as caught:
        await rival.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h")
    assert caught.value.param == "input_file_id"  # type: ignore[attr-defined]
    assert (await rival.batches.list()).data == []
    assert (await gateway.client().batches.retrieve(batch.id)).status == "validating"


@pytest.mark.parametrize("body,status,param", [
    (b'{"input_file_id": ', 400, None),
    (b'[1]', 422, None),
    (b'{"endpoint": "/v1/chat/completions", "completion_window": "24h"}', 422, None),
    (b'{"input_file_id": "FILE", "endpoint": "/v1/images/generations", '
     b'"completion_window": "24h"}', 400, "endpoint"),
    (b'{"input_file_id": "FILE", "endpoint": "/v1/chat/completions", '
     b'"completion_window": "48h"}', 400, "completion_window"),
    (b'{"input_file_id": "FILE", "endpoint": "/v1/chat/completions", '
     b'"completion_window": "24h", "metadata": {' +
     b", ".join(b'"k%d": "v"' % n for n in range(17)) + b'}}', 400, "metadata"),
    (b'{"input_file_id": "FILE", "endpoint": "/v1/chat/completions", '
     b'"completion_window": "24h", "metadata": {"k": "' + b"v" * 513 + b'"}}', 400, "metadata"),
    (b'{"input_file_id": "file-nope", "endpoint": "/v1/chat/completions", '
     b'"completion_window": "24h"}', 404, "input_file_id"),
])
async def test_bad_create_bodies_change_nothing(gateway: Gateway, body: bytes, status: int,
                                                param: str | None) -> None:
    file_id = await _upload(gateway, [line(1)])
    before = set(await gateway.redis.keys("*"))
    async with httpx.AsyncClient(base_url=gateway.base_url) as http:
        answer = await http.post("/v1/batches", content=body.replace(b"FILE", file_id.encode()),
                                 headers={"authorization": f"Bearer {gateway.secret}",
                                          "content-type": "application/json"})
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["code"] and error["message"]
    if param is not None:
        assert error["param"] == param
    assert set(await gateway.redis.keys("*")) - before <= {b"{sb}:keys:used"}
    assert await keys(gateway, "{sb}:batch*") == []


async def test_bad_cancel_bodies_change_nothing(gateway: Gateway) -> None:
    file_id = await _upload(gateway, [line(1)])
    batch = await gateway.client().batches.create(input_file_id=file_id, endpoint=CHAT,
                                                  completion_window="24h")
    async with httpx.AsyncClient(base_url=gateway.base_url) as http:
        auth = {"authorization": f"Bearer {gateway.secret}", "content-type": "application/json"}
        for body, status in ((b"{nope", 400), (b"[1, 2]", 422), (b"[" * 5000, 400)):
            answer = await http.post(f"/v1/batches/{batch.id}/cancel", content=body, headers=auth)
            assert answer.status_code == status, answer.text
        answer = await http.post("/v1/batches/batch_nope/cancel", headers=auth)
        assert answer.status_code == 404
        answer = await http.post("/v1/batches/../cancel", headers=auth)
        assert answer.status_code == 404
    assert (await gateway.client().batches.retrieve(batch.id)).status == "validating"


async def test_every_served_endpoint_makes_jobs(gateway: Gateway) -> None:
    client = gateway.client()
    for url, endpoint in (("/v1/embeddings", "embeddings"), ("/v1/completions", "completions"),
                          ("/v1/responses", "responses")):
        file_id = await _upload(gateway, [line(1, url=url), line(2, url=url)])
        batch = await client.batches.create(input_file_id=file_id, endpoint=url,  # type: ignore[arg-type]
                                            completion_window="24h")
        assert batch.status == "validating", batch.errors
        raw = await gateway.redis.lrange(names.batch_lines(batch.id, "local"), 0, -1)
        assert [job_decoder.decode(j).endpoint for j in raw] == [endpoint, endpoint]


async def test_create_does_not_hold_the_event_loop(gateway: Gateway) -> None:
    """While a 3,000-line batch is created, other requests keep being answered."""
    client = gateway.client()
    file_id = await _upload(gateway, [line(n) for n in range(3000)])
    answered_during = 0
    done = trio.Event()

    async def create() -> None:
        batch = await client.batches.create(input_file_id=file_id, endpoint=CHAT,
                                            completion_window="24h")
        assert batch.request_counts is not None and batch.request_counts.total == 3000
        done.set()

    async def poll() -> None:
        nonlocal answered_during
        async with httpx.AsyncClient(base_url=gateway.base_url) as http:
            while not done.is_set():
                assert (await http.get("/healthz")).status_code == 200
                answered_during += not done.is_set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(create)
        nursery.start_soon(poll)
    assert answered_during > 3
    assert await gateway.redis.llen(names.batch_lines(
        (await client.batches.list(limit=1)).data[0].id, "local")) == 3000


def test_the_openapi_document_describes_files_and_batches() -> None:
    from ingress.openapi import openapi_document

    paths = openapi_document()["paths"]
    assert set(paths["/v1/files"]) == {"post", "get"}
    assert "multipart/form-data" in paths["/v1/files"]["post"]["requestBody"]["content"]
    assert set(paths["/v1/files/{file_id}"]) == {"get", "delete"}
    assert "application/octet-stream" in \
        paths["/v1/files/{file_id}/content"]["get"]["responses"]["200"]["content"]
    assert set(paths["/v1/batches"]) == {"post", "get"}
    assert "409" in paths["/v1/batches/{batch_id}/cancel"]["post"]["responses"]
    schemas = openapi_document()["components"]["schemas"]
    assert {"FileObject", "FileList", "Batch", "BatchList", "CreateBatch"} <= set(schemas)


async def test_a_responses_line_resolves_its_agent_as_a_live_call(nursery: trio.Nursery,
                                                                   redis_url: str) -> None:
    from tests.conftest import make_config, start_gateway

    config = make_config(
        redis_url, {"local": {"kind": "mock"}},
        [{"slug": "echo", "routes": [{"provider": "local", "model": "echo"}]}],
        agents={"helper": {"model": "echo", "instructions": "Be brief, {{name}}."}})
    gateway = await start_gateway(nursery, config, workers=False)
    url = "/v1/responses"
    lines = [line(n, url=url) | {"body": {"model": "agent/helper", "input": f"hi {n}",
                                          "variables": {"name": {"value": "Ada"}}}}
             for n in range(600)]  # several chunks, each resolving agents from Redis
    file_id = await _upload(gateway, lines)
    batch = await gateway.client().batches.create(input_file_id=file_id, endpoint=url,
                                                  completion_window="24h")
    assert batch.status == "validating", batch.errors
    job = job_decoder.decode((await gateway.redis.lrange(
        names.batch_lines(batch.id, "local"), 599, 599))[0])
    assert (job.endpoint, job.model, job.custom_id) == ("responses", "echo", "req-599")
    assert b"Be brief, Ada." in job.body and b"hi 599" in job.body
    with pytest.raises(openai.BadRequestError) as caught:  # as the live call, at upload
        await _upload(gateway, [line(1, url=url) | {"body": {"model": "agent/nobody",
                                                             "input": "x"}}])
    assert isinstance(caught.value.body, dict)
    assert [(e["line"], e["code"], e["param"]) for e in caught.value.body["details"]["errors"]
            ] == [(1, "model_not_found", "body.model")]


async def test_a_list_page_skips_no_live_batch_when_expired_ones_are_dropped(
        gateway: Gateway) -> None:
    client = gateway.client()
    file_id = await _upload(gateway, [line(1)])
    made = [await client.batches.create(input_file_id=file_id, endpoint=CHAT,
                                        completion_window="24h") for _ in range(7)]
    for expired in (made[5], made[4]):  # their hashes expired; their ids are still listed
        await gateway.redis.delete([names.batch(expired.id)])
    live = [b.id for b in reversed(made) if b not in (made[4], made[5])]
    page = await client.batches.list(limit=3)
    assert [b.id for b in page.data] == live[:3] and page.has_more
    rest = await client.batches.list(limit=3, after=live[2])
    assert [b.id for b in rest.data] == live[3:] and not rest.has_more


async def test_a_created_batchs_line_lists_are_kept_as_long_as_the_batch(
        gateway: Gateway) -> None:
    """Lists are pushed with a short expiry (a create that fails half-way leaves them for
    an hour at most), then given the batch's retention with the batch itself."""
    file_id = await _upload(gateway, [line(n) for n in range(3)])
    batch = await gateway.client().batches.create(input_file_id=file_id, endpoint=CHAT,
                                                  completion_window="24h")
    kept = await gateway.redis.ttl(names.batch_lines(batch.id, "local"))
    assert kept > 3600 and abs(kept - await gateway.redis.ttl(names.batch(batch.id))) <= 1
