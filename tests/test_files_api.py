"""The Files API with the official openai SDK: upload (checked line by line), list, retrieve,
download, delete; per org; the upload size limit of its own."""

from __future__ import annotations

import time

import httpx
import openai
import pytest
import trio

from ingress.keys import KeyStore
from schemas import names
from tests import rawhttp
from tests.batchfiles import CHAT, batch_gateway, gateway, jsonl, keys, line, other_org_secret
from tests.conftest import Gateway

__all__ = ["gateway"]  # the fixture


async def test_upload_list_retrieve_download_delete(gateway: Gateway) -> None:
    client = gateway.client()
    data = jsonl([line(1), line(2), line(3, url=CHAT)])
    before = int(time.time())
    made = await client.files.create(file=("prompts.jsonl", data), purpose="batch")
    assert made.id.startswith("file-") and made.object == "file"
    assert (made.purpose, made.bytes, made.filename) == ("batch", len(data), "prompts.jsonl")
    assert before <= made.created_at <= time.time()
    assert made.expires_at == made.created_at + 30 * 86400  # batch.retention_days
    assert await client.files.retrieve(made.id) == made
    assert (await client.files.content(made.id)).content == data
    second = await client.files.create(file=("more.jsonl", jsonl([line(9)])), purpose="batch")

    listed = await client.files.list()
    assert [f.id for f in listed.data] == [second.id, made.id]  # newest first
    assert [f.id for f in (await client.files.list(order="asc")).data] == [made.id, second.id]
    page = await client.files.list(limit=1)
    assert [f.id for f in page.data] == [second.id] and page.has_more
    rest = await client.files.list(limit=1, after=second.id)
    assert [f.id for f in rest.data] == [made.id] and not rest.has_more
    assert (await client.files.list(purpose="batch_output")).data == []

    deleted = await client.files.delete(made.id)
    assert deleted.id == made.id and deleted.deleted
    for call in (client.files.retrieve, client.files.content, client.files.delete):
        with pytest.raises(openai.NotFoundError):
            await call(made.id)
    assert [f.id for f in (await client.files.list()).data] == [second.id]
    assert not await gateway.redis.exists([names.file(made.id), names.file_data(made.id)])


async def test_a_file_expires_and_leaves_the_list(gateway: Gateway) -> None:
    client = gateway.client()
    made = await client.files.create(file=("a.jsonl", jsonl([line(1)])), purpose="batch",
                                     expires_after={"anchor": "created_at", "seconds": 3600})
    assert made.expires_at == made.created_at + 3600
    assert await gateway.redis.ttl(names.file_data(made.id)) > 3500
    await gateway.redis.delete([names.file(made.id), names.file_data(made.id)])  # as expiry
    assert (await client.files.list()).data == []
    assert await gateway.redis.zcard(names.files("acme")) == 0  # the dead id was dropped


async def test_a_bad_file_is_refused_with_its_lines_and_nothing_is_stored(
        gateway: Gateway) -> None:
    bad = jsonl([
        line(1),
        b"{not json",
        line(1),  # duplicate custom_id
        line(4, method="GET"),
        line(5, url="/v1/images/generations"),
        line(6, url="/v1/embeddings"),  # not the first line's url
        {"custom_id": "req-7", "method": "POST", "url": CHAT,
         "body": {"model": "echo", "messages": "hi"}},  # what the endpoint answers 422 for
        {**line(8), "body": {"model": "echo", "stream": True,
                             "messages": [{"role": "user", "content": "x"}]}},
        {"method": "POST", "url": CHAT, "body": {}},  # no custom_id
        b"   ",  # blank: skipped, still counted
        [1, 2],
        line(12),
    ])
    with pytest.raises(openai.BadRequestError) as caught:
        await gateway.client().files.create(file=("bad.jsonl", bad), purpose="batch")
    error = caught.value.body
    assert isinstance(error, dict) and error["code"] == "invalid_batch_file"
    found = [(e["line"], e["code"], e["param"]) for e in error["details"]["errors"]]
    assert found == [
        (2, "invalid_json_line", None),
        (3, "duplicate_custom_id", "custom_id"),
        (4, "invalid_request", "method"),
        (5, "invalid_url", "url"),
        (6, "url_mismatch", "url"),
        (7, "validation_error", "body.messages"),
        (8, "invalid_request", "body.stream"),
        (9, "invalid_request", "custom_id"),
        (11, "invalid_request", None),
    ], found
    assert all(e["message"] for e in error["details"]["errors"])
    assert error["details"]["truncated"] is False
    assert await keys(gateway, "{sb}:file*") == []


@pytest.mark.parametrize("content,code", [(b"", "empty_file"), (b"\n\n", "empty_file")])
async def test_an_empty_file_is_refused(gateway: Gateway, content: bytes, code: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await gateway.client().files.create(file=("e.jsonl", content), purpose="batch")
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["details"]["errors"][0]["code"] == code


async def test_every_served_endpoint_checks_its_own_bodies(gateway: Gateway) -> None:
    client = gateway.client()
    for url in ("/v1/embeddings", "/v1/completions", "/v1/responses"):
        good = await client.files.create(file=("ok.jsonl", jsonl([line(1, url=url)])),
                                         purpose="batch")
        assert good.bytes > 0
        wrong = jsonl([line(1, url=url) | {"body": {"model": 5, "input": "x", "prompt": "x"}}])
        with pytest.raises(openai.BadRequestError) as caught:
            await client.files.create(file=("bad.jsonl", wrong), purpose="batch")
        assert isinstance(caught.value.body, dict)
        problem = caught.value.body["details"]["errors"][0]
        assert (problem["line"], problem["param"]) == (1, "body.model"), url


async def test_too_many_lines_and_only_batch_purpose(nursery: trio.Nursery,
                                                     redis_url: str) -> None:
    gateway = await batch_gateway(nursery, redis_url, max_lines=3,
                                  limits={"max_body_bytes": 2048})
    client = gateway.client()
    await client.files.create(file=("ok.jsonl", jsonl([line(n) for n in range(3)])),
                              purpose="batch")
    for many in (jsonl([line(n) for n in range(4)]), b"\n" * 7 + jsonl([line(1)])):
        with pytest.raises(openai.BadRequestError) as caught:
            await client.files.create(file=("big.jsonl", many), purpose="batch")
        assert isinstance(caught.value.body, dict)
        assert caught.value.body["details"]["errors"] == [{
            "line": None, "code": "too_many_tasks", "param": None,
            "message": "the file holds more than 3 requests (batch.max_lines = 3)"}]
    huge = line(2) | {"body": {"model": "echo", "messages": [
        {"role": "user", "content": "x" * 3000}]}}
    with pytest.raises(openai.BadRequestError) as caught:
        await client.files.create(file=("huge.jsonl", jsonl([line(1), huge])), purpose="batch")
    assert isinstance(caught.value.body, dict)
    assert [(e["line"], e["code"], e["param"]) for e in caught.value.body["details"]["errors"]
            ] == [(2, "request_too_large", "body")]
    with pytest.raises(openai.BadRequestError) as caught:
        await client.files.create(file=("x.jsonl", jsonl([line(1)])), purpose="fine-tune")
    assert caught.value.param == "purpose"  # type: ignore[attr-defined]
    async with httpx.AsyncClient(base_url=gateway.base_url) as http:
        auth = {"authorization": f"Bearer {gateway.secret}"}
        answer = await http.post("/v1/files", headers=auth, json={"purpose": "batch"})
        assert answer.status_code == 415 and answer.json()["error"]["code"]
        answer = await http.post("/v1/files", headers=auth,
                                 files={"file": ("a.jsonl", jsonl([line(1)]))})
        assert answer.status_code == 400 and answer.json()["error"]["param"] == "purpose"
        answer = await http.post("/v1/files", headers=auth, data={"purpose": "batch"},
                                 files={"other": ("a.jsonl", b"x")})
        assert answer.status_code == 400 and answer.json()["error"]["param"] == "file"
    assert await gateway.redis.zcard(names.files("acme")) == 1


async def test_the_upload_limit_is_its_own(nursery: trio.Nursery, redis_url: str) -> None:
    """/v1/files takes bodies up to batch.max_file_bytes, every other path stays at
    limits.max_body_bytes; a file above its limit is a 413 and the connection is usable."""
    gateway = await batch_gateway(nursery, redis_url, max_file_bytes=64 * 1024)
    pad = "x" * 1000
    big = jsonl([line(n) | {"pad": pad} for n in range(40)])  # ~45 KB
    assert 8 * 1024 < len(big) < 64 * 1024
    client = gateway.client()
    made = await client.files.create(file=("ok.jsonl", big), purpose="batch")
    assert made.bytes == len(big)
    over = jsonl([line(n) | {"pad": pad} for n in range(80)])
    with pytest.raises(openai.APIStatusError) as caught:
        await client.files.create(file=("over.jsonl", over), purpose="batch")
    assert caught.value.status_code == 413
    assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "file_too_large"
    async with httpx.AsyncClient(base_url=gateway.base_url) as http:
        auth = {"authorization": f"Bearer {gateway.secret}"}
        answer = await http.post("/v1/files", headers=auth, data={"purpose": "batch"},
                                 files={"file": ("over.jsonl", over)})
        assert answer.status_code == 413
        assert (await http.get("/v1/files", headers=auth)).status_code == 200  # still usable
        # Far above: the edge refuses the body itself (the form's slack passed), same answer.
        far = jsonl([line(n) | {"pad": pad} for n in range(300)])
        answer = await http.post("/v1/files", headers=auth, data={"purpose": "batch"},
                                 files={"file": ("far.jsonl", far)})
        assert answer.status_code == 413 and answer.headers["connection"] == "close"
        assert answer.json()["error"]["code"] == "file_too_large"
        assert (await http.get("/v1/files", headers=auth)).status_code == 200
    assert [f.id for f in (await client.files.list()).data] == [made.id]


async def test_other_paths_keep_the_edge_limit(nursery: trio.Nursery, redis_url: str) -> None:
    gateway = await batch_gateway(nursery, redis_url)
    body = b'{"model":"echo","messages":[{"role":"user","content":"' + b"x" * (5 << 20) + b'"}]}'
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=30) as http:
        auth = {"authorization": f"Bearer {gateway.secret}", "content-type": "application/json"}
        answer = await http.post(CHAT, headers=auth, content=body)
        assert answer.status_code == 413
        assert answer.json()["error"]["code"] == "request_too_large"
        # A 5 MiB file (above max_body_bytes, below max_file_bytes) is taken.
        data = jsonl([line(n) | {"pad": "y" * 50_000} for n in range(105)])
        assert len(data) > 5 << 20
        answer = await http.post("/v1/files", headers={"authorization": auth["authorization"]},
                                 data={"purpose": "batch"}, files={"file": ("big.jsonl", data)})
        assert answer.status_code == 200, answer.text
        file_id = answer.json()["id"]
        answer = await http.get(f"/v1/files/{file_id}/content", headers=auth)
        assert answer.content == data


async def test_another_org_sees_no_file(gateway: Gateway) -> None:
    made = await gateway.client().files.create(file=("a.jsonl", jsonl([line(1)])),
                                               purpose="batch")
    rival = gateway.client(api_key=await other_org_secret(gateway))
    for call in (rival.files.retrieve, rival.files.content, rival.files.delete):
        with pytest.raises(openai.NotFoundError) as caught:
            await call(made.id)
        assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "not_found"
    assert (await rival.files.list()).data == []
    assert (await gateway.client().files.retrieve(made.id)).id == made.id  # still there


async def test_an_operator_key_is_refused(gateway: Gateway) -> None:
    _, secret = await KeyStore(gateway.redis).create("", role="operator", name="ops")
    with pytest.raises(openai.PermissionDeniedError):
        await gateway.client(api_key=secret).files.list()
    with pytest.raises(openai.AuthenticationError):
        await gateway.client(api_key="sk-nope").files.list()


async def test_files_the_workers_write_are_served(gateway: Gateway) -> None:
    """An output file in the layout the workers write (names.file, file_data, files(org);
    purpose batch_output) is listed, read, downloaded and deleted like an upload."""
    import msgspec

    from ingress.filestore import new_file_id
    from schemas.batch import FileObject

    data = b'{"id": "batch_req_1", "custom_id": "a", "response": null, "error": null}\n'
    created = int(time.time())
    meta = FileObject(id=new_file_id(), bytes=len(data), created_at=created,
                      filename="batch_x_output.jsonl", purpose="batch_output",
                      expires_at=created + 3600)
    await gateway.redis.set(names.file_data(meta.id), data)
    await gateway.redis.hset(names.file(meta.id), {"org": "acme",
                                                   "meta": msgspec.json.encode(meta)})
    await gateway.redis.zadd(names.files("acme"), {meta.id: created})
    client = gateway.client()
    assert [f.id for f in (await client.files.list(purpose="batch_output")).data] == [meta.id]
    assert (await client.files.retrieve(meta.id)).purpose == "batch_output"
    assert (await client.files.content(meta.id)).content == data
    rival = gateway.client(api_key=await other_org_secret(gateway))
    with pytest.raises(openai.NotFoundError):
        await rival.files.content(meta.id)
    assert (await client.files.delete(meta.id)).deleted
    assert await keys(gateway, "{sb}:file:*") == []


@pytest.mark.parametrize("authorization", ["", "Bearer sk-not-a-key"])
async def test_a_caller_without_a_valid_key_is_refused_before_its_upload_is_read(
        gateway: Gateway, authorization: str) -> None:
    """Only a known caller may make the ingress read (and hold) a body past max_body_bytes:
    a 100 MB upload from anyone else is answered 401 at once, its body never waited for."""
    port = int(gateway.base_url.rsplit(":", 1)[1])
    head = (f"POST /v1/files HTTP/1.1\r\nHost: x\r\nContent-Length: {100 * 1024 * 1024}\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\n"
            + (f"Authorization: {authorization}\r\n" if authorization else "") + "\r\n")

    def ask() -> rawhttp.Answer:
        with rawhttp.connection(port) as sock:
            sock.sendall(head.encode() + b"--b\r\n" + b"x" * 65536)  # and nothing more
            return rawhttp.read_answer(sock)

    with trio.fail_after(5):  # the body timeout (60 s) would pass first if it were read
        status, headers, body = await trio.to_thread.run_sync(ask)
    assert status == 401, body
    assert b'"code":"unauthorized"' in body or b'"code":"invalid_api_key"' in body, body
    assert headers.get("connection") == "close"
