"""Every error of the documented table, as the official SDK sees it; bad input changes nothing."""

from __future__ import annotations

import httpx
import openai
import pytest
import trio

from schemas import names
from schemas.envelopes import job_decoder
from tests.conftest import TLS, UPSTREAM_SECRET, Gateway, make_config, start_gateway
from tests.fakes.openai_upstream import Behavior, FakeOpenAI

HI = [{"role": "user", "content": "hi"}]


async def assert_nothing_changed(gateway: Gateway) -> None:
    """Bad input leaves no job on any stream and no metered usage."""
    for provider in gateway.config.providers:
        assert await gateway.redis.xlen(names.queue(provider)) == 0
    assert await gateway.usage() == {}


async def test_missing_unknown_and_revoked_keys_are_401(openai_gateway: Gateway) -> None:
    async with httpx.AsyncClient(verify=TLS, base_url=openai_gateway.base_url) as http:
        anonymous = await http.post("/v1/chat/completions", json={"model": "echo", "messages": HI})
    assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "unauthorized"
    with pytest.raises(openai.AuthenticationError) as caught:
        await openai_gateway.client(api_key="sb-not-a-key").chat.completions.create(
            model="echo", messages=HI)  # type: ignore[arg-type]
    assert caught.value.status_code == 401
    assert caught.value.body["code"] == "unauthorized"  # type: ignore[index]
    from ingress.keys import KeyStore
    assert await KeyStore(openai_gateway.redis).revoke(openai_gateway.key_id)
    with pytest.raises(openai.AuthenticationError):
        await openai_gateway.client().chat.completions.create(model="echo", messages=HI)  # type: ignore[arg-type]
    await assert_nothing_changed(openai_gateway)


async def test_keys_are_stored_hashed(openai_gateway: Gateway) -> None:
    for key in await openai_gateway.redis.keys("{sb}:*"):
        assert openai_gateway.secret.encode() not in key
        if (await openai_gateway.redis.type(key)) == b"hash":
            values = await openai_gateway.redis.hgetall(key)
            assert all(openai_gateway.secret.encode() not in v for v in values.values())


async def test_invalid_json_is_400(openai_gateway: Gateway) -> None:
    async with httpx.AsyncClient(verify=TLS, base_url=openai_gateway.base_url) as http:
        reply = await http.post("/v1/chat/completions", content=b'{"model": "echo", ',
                                headers={"authorization": f"Bearer {openai_gateway.secret}"})
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["code"] == "invalid_json" and error["type"] == "invalid_request_error"
    assert reply.headers["x-request-id"]
    await assert_nothing_changed(openai_gateway)


async def test_missing_messages_is_422(openai_gateway: Gateway) -> None:
    async with httpx.AsyncClient(verify=TLS, base_url=openai_gateway.base_url) as http:
        reply = await http.post("/v1/chat/completions", json={"model": "echo"},
                                headers={"authorization": f"Bearer {openai_gateway.secret}"})
    assert reply.status_code == 422
    assert "messages" in reply.json()["error"]["message"]
    await assert_nothing_changed(openai_gateway)


@pytest.mark.parametrize(("body", "field"), [
    ({"model": "echo", "messages": []}, "$.messages"),
    ({"model": "echo", "messages": [{"role": "robot", "content": "x"}]}, "$.messages[0].role"),
    ({"model": "echo", "messages": HI, "temperature": "hot"}, "$.temperature"),
    ({"model": "echo", "messages": HI, "stop": 5}, "$.stop"),
    ({"model": "echo", "messages": HI, "tool_choice": 3}, "$.tool_choice"),
    ({"model": "echo", "messages": HI, "n": 0}, "$.n"),
])
async def test_schema_violations_are_422_naming_the_field(openai_gateway: Gateway,
                                                          body: dict[str, object], field: str) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        await openai_gateway.client().chat.completions.create(**body)  # type: ignore[call-overload]
    error = caught.value.body
    assert error["code"] == "validation_error"  # type: ignore[index]
    assert error["details"]["field"] == field  # type: ignore[index]
    await assert_nothing_changed(openai_gateway)


async def test_unknown_slug_and_slug_without_provider_are_400(nursery: trio.Nursery,
                                                               redis_url: str) -> None:
    config = make_config(redis_url, {"local": {"kind": "mock"}}, [
        {"slug": "echo", "routes": [{"provider": "local", "model": "m"}]},
        {"slug": "orphan", "routes": [{"provider": "elsewhere", "model": "m"}]}])
    gateway = await start_gateway(nursery, config)
    client = gateway.client()
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model="no-such-model", messages=HI)  # type: ignore[arg-type]
    assert caught.value.body["code"] == "model_not_found"  # type: ignore[index]
    assert "no-such-model" in caught.value.message
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model="orphan", messages=HI)  # type: ignore[arg-type]
    assert caught.value.body["code"] == "no_provider"  # type: ignore[index]
    await assert_nothing_changed(gateway)


async def test_body_over_limit_is_413(nursery: trio.Nursery, redis_url: str) -> None:
    config = make_config(redis_url, {"local": {"kind": "mock"}},
                         [{"slug": "echo", "routes": [{"provider": "local", "model": "m"}]}],
                         limits={"max_body_bytes": 4096})
    gateway = await start_gateway(nursery, config)
    with pytest.raises(openai.APIStatusError) as caught:
        await gateway.client().chat.completions.create(
            model="echo", messages=[{"role": "user", "content": "x" * 10_000}])
    assert caught.value.status_code == 413
    assert caught.value.body["code"] == "request_too_large"  # type: ignore[index]
    await assert_nothing_changed(gateway)


async def test_full_queue_is_429_with_retry_after_and_keeps_accepted_jobs(
        nursery: trio.Nursery, redis_url: str) -> None:
    # One org fills the whole queue here: its share (a quarter by default) is all of it.
    config = make_config(redis_url, {"local": {"kind": "mock", "max_queue": 2,
                                               "max_queue_per_org": 2}},
                         [{"slug": "echo", "routes": [{"provider": "local", "model": "m"}]}])
    gateway = await start_gateway(nursery, config, workers=False)  # nobody drains the queue
    client = gateway.client()
    async with trio.open_nursery() as waiting:
        for _ in range(2):
            waiting.start_soon(lambda: client.chat.completions.create(model="echo", messages=HI))
        while await gateway.redis.xlen("{sb}:q:local") < 2:
            await trio.sleep(0.01)
        with pytest.raises(openai.RateLimitError) as caught:
            await client.chat.completions.create(model="echo", messages=HI)  # type: ignore[arg-type]
        assert caught.value.response.headers["retry-after"] == "1"
        assert caught.value.body["code"] == "queue_full"  # type: ignore[index]
        assert await gateway.redis.xlen("{sb}:q:local") == 2  # nothing accepted was trimmed
        await gateway.start_worker()  # the queued two are served
    assert (await gateway.usage())["requests"] == 2


async def test_upstream_timeout_is_504(nursery: trio.Nursery, redis_url: str,
                                       fake_openai: FakeOpenAI) -> None:
    config = make_config(redis_url, {"up": {"kind": "openai", "base_url": fake_openai.base_url,
                                            "timeout_s": 0.3, "max_retries": 0}},
                         [{"slug": "slow", "routes": [{"provider": "up", "model": "m"}]}])
    gateway = await start_gateway(nursery, config)
    fake_openai.then(Behavior(delay_s=5))
    with pytest.raises(openai.APIStatusError) as caught:
        await gateway.client().chat.completions.create(model="slow", messages=HI)  # type: ignore[arg-type]
    assert caught.value.status_code == 504
    assert caught.value.body["code"] == "upstream_timeout"  # type: ignore[index]


async def test_unknown_path_and_method_use_the_error_shape(openai_gateway: Gateway) -> None:
    async with httpx.AsyncClient(verify=TLS, base_url=openai_gateway.base_url) as http:
        missing = await http.get("/v1/nothing")
        wrong = await http.get("/v1/chat/completions")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"
    assert missing.headers["x-request-id"] and wrong.headers["x-request-id"]


async def test_job_envelopes_carry_no_credential_or_key(nursery: trio.Nursery, redis_url: str,
                                                        fake_openai: FakeOpenAI,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_UP_KEY", UPSTREAM_SECRET)
    config = make_config(redis_url, {"up": {"kind": "openai", "base_url": fake_openai.base_url,
                                            "api_key_env": "FAKE_UP_KEY"}},
                         [{"slug": "m", "routes": [{"provider": "up", "model": "u"}]}])
    gateway = await start_gateway(nursery, config, workers=False)  # the job stays queued
    async with trio.open_nursery() as waiting:
        waiting.start_soon(lambda: gateway.client().chat.completions.create(model="m", messages=HI))
        while await gateway.redis.xlen("{sb}:q:up") == 0:
            await trio.sleep(0.01)
        entries = await gateway.redis.xrange("{sb}:q:up")
        waiting.cancel_scope.cancel()
    raw = entries[0].field_values[b"j"]
    job = job_decoder.decode(raw)
    assert job.org == "acme" and job.model == "m" and job.key_id == gateway.key_id
    assert UPSTREAM_SECRET.encode() not in raw and gateway.secret.encode() not in raw


# The deep one is valid JSON whose nesting sits in an unknown field, so a decoder must go
# all the way down (a body invalid at its second byte would never try the depth).
DEEP = b'{"model": "echo", "messages": [{"role": "user", "content": "hi"}], "x": ' + \
    b"[" * 5000 + b"]" * 5000 + b"}"
GARBAGE = [b"", b"\xff\xfe\x00", b"[]", b"null", b"42", b'"text"', DEEP,
           b'{"model": "echo", "messages": [null]}', b'{"model": ["x"], "messages": []}',
           b'{"model": "echo", "messages": [{"role": "user", "content": {"a": 1}}]}',
           b'{"model": "echo", "messages": [{"role": "user", "content": [{"text": "no type"}]}]}',
           b'{"model": "echo", "input": [[1, "a"]]}', b'{"model": "echo", "contents": "x"}']


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/embeddings",
                                  "/anthropic/v1/messages",
                                  "/gemini/v1beta/models/echo:generateContent"])
async def test_garbage_bodies_get_a_4xx_and_change_nothing(openai_gateway: Gateway,
                                                           path: str) -> None:
    headers = {"authorization": f"Bearer {openai_gateway.secret}"}
    async with httpx.AsyncClient(verify=TLS, base_url=openai_gateway.base_url, headers=headers) as http:
        for body in GARBAGE:
            reply = await http.post(path, content=body)
            assert 400 <= reply.status_code < 500, (body[:40], reply.status_code, reply.text)
            assert reply.headers["x-request-id"]
        assert (await http.get("/healthz")).status_code == 200  # the process is fine
    await assert_nothing_changed(openai_gateway)
