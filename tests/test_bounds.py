"""What one request may carry, each bound a config knob refused in the error shape that
names it (issue 9, item 20), and upstream errors that never carry the credential (item 21)."""

from __future__ import annotations

import json
import math
import time
from typing import Any

import httpx
import openai
import pytest
import trio

from schemas import names
from schemas.config import Limits
from tests.conftest import TLS, UPSTREAM_SECRET, Gateway, make_config, start_gateway
from tests.fakes.openai_upstream import Behavior, FakeOpenAI

HI = [{"role": "user", "content": "hi"}]
CHAT, EMBED = "/v1/chat/completions", "/v1/embeddings"
ANTHROPIC, GEMINI = "/anthropic/v1/messages", "/gemini/v1beta/models/echo:generateContent"


async def post(gateway: Gateway, path: str, body: Any) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"authorization": f"Bearer {gateway.secret}", "content-type": "application/json"}
    async with httpx.AsyncClient(verify=TLS, base_url=gateway.base_url, timeout=30) as http:
        return await http.post(path, content=content, headers=headers)


def refused(reply: httpx.Response, knob: str, status: int = 400) -> dict[str, Any]:
    """The answer is the error shape and names the bound `knob`."""
    assert reply.status_code == status, (reply.status_code, reply.text[:300])
    assert reply.headers["x-request-id"]
    body = reply.json()
    error = body["error"]
    assert f"{knob} = " in error["message"], error  # `limits.knob = N`, `providers.p.knob = N`
    if "details" in error and isinstance(error["details"], dict):  # Gemini's shape has a list
        assert error["details"]["limit"] == knob, error
    return dict(error)


async def assert_nothing_changed(gateway: Gateway) -> None:
    for provider in gateway.config.providers:
        assert await gateway.redis.xlen(names.queue(provider)) == 0
    assert await gateway.usage() == {}


def nested(levels: int) -> str:
    """`levels` nested arrays: 2 bytes a level."""
    return "[" * levels + "]" * levels


DEEP_BODIES = {  # 4 KB bodies whose nesting sits where each endpoint's decoder must go
    CHAT: {"model": "echo", "messages": HI, "tools": [{"type": "function", "function": {
        "name": "f", "parameters": {"type": "object", "x": "@"}}}]},
    EMBED: {"model": "echo", "input": "hi", "vendor_knob": "@"},
    ANTHROPIC: {"model": "echo", "max_tokens": 5, "messages": HI, "metadata": "@"},
    GEMINI: {"contents": [{"role": "user", "parts": [{"text": "hi"}]}], "toolConfig": "@"},
}


def deep_body(path: str, levels: int) -> bytes:
    return json.dumps(DEEP_BODIES[path]).replace('"@"', nested(levels)).encode()


@pytest.mark.parametrize("path", [CHAT, EMBED, ANTHROPIC, GEMINI])
async def test_deeply_nested_json_is_a_400_naming_the_depth_bound(openai_gateway: Gateway,
                                                                  path: str) -> None:
    body = deep_body(path, 2000)
    assert len(body) < 4200
    refused(await post(openai_gateway, path, body), "max_json_depth")
    await assert_nothing_changed(openai_gateway)
    # Just under the bound the same body is decoded as usual (no 400 for its depth).
    shallow = await post(openai_gateway, path, deep_body(path, Limits().max_json_depth - 8))
    assert shallow.status_code != 400 or "max_json_depth" not in shallow.text


def many(n: int) -> list[dict[str, Any]]:
    return [{"role": "user", "content": "hi"}] * n


def tools(n: int) -> list[dict[str, Any]]:
    return [{"type": "function", "function": {"name": f"f{i}"}} for i in range(n)]


LIST_BOUNDS = [  # (path, body with one entry over the default bound, knob)
    (CHAT, {"model": "echo", "messages": many(2049)}, "max_messages"),
    (CHAT, {"model": "echo", "messages": HI, "tools": tools(129)}, "max_tools"),
    (EMBED, {"model": "echo", "input": ["a"] * 2049}, "max_inputs"),
    (EMBED, {"model": "echo", "input": [[1, 2]] * 2049}, "max_inputs"),
    (ANTHROPIC, {"model": "echo", "max_tokens": 5, "messages": many(2049)}, "max_messages"),
    (ANTHROPIC, {"model": "echo", "max_tokens": 5, "messages": HI,
                 "tools": [{"name": f"t{i}", "input_schema": {}} for i in range(129)]}, "max_tools"),
    (GEMINI, {"contents": [{"role": "user", "parts": [{"text": "x"}]}] * 2049}, "max_messages"),
    (GEMINI, {"contents": [{"role": "user", "parts": [{"text": "x"}]}],
              "tools": [{"functionDeclarations": []}] * 129}, "max_tools"),
    (EMBED, {"model": "echo", "input": "hi", "dimensions": 8193}, "max_dimensions"),
]


@pytest.mark.parametrize(("path", "body", "knob"), LIST_BOUNDS,
                         ids=[f"{p}-{k}" for p, _, k in LIST_BOUNDS])
async def test_list_bounds_are_a_400_naming_the_bound(openai_gateway: Gateway, path: str,
                                                      body: dict[str, Any], knob: str) -> None:
    error = refused(await post(openai_gateway, path, body), knob)
    assert error.get("code", error.get("type")) in ("limit_exceeded", 400, "invalid_request_error")
    await assert_nothing_changed(openai_gateway)


async def test_at_the_bound_is_served(openai_gateway: Gateway) -> None:
    reply = await post(openai_gateway, CHAT, {"model": "echo", "messages": many(2048)})
    assert reply.status_code == 200, reply.text[:300]
    reply = await post(openai_gateway, EMBED, {"model": "echo", "input": ["a"] * 2048,
                                               "dimensions": 4})
    assert reply.status_code == 200, reply.text[:300]
    assert len(reply.json()["data"]) == 2048
    # One pre-tokenized input is one input, however many token ids it has.
    reply = await post(openai_gateway, EMBED, {"model": "echo", "input": list(range(3000))})
    assert reply.status_code == 200, reply.text[:300]
    assert len(reply.json()["data"]) == 1
    # (2,048 inputs of 8,192 dimensions is one 100 MB answer: the frame cap's business.)
    reply = await post(openai_gateway, EMBED, {"model": "echo", "input": "a", "dimensions": 8192})
    assert reply.status_code == 200, reply.text[:300]
    assert len(reply.json()["data"][0]["embedding"]) == 8192


async def test_a_mixed_embeddings_input_is_a_422(openai_gateway: Gateway) -> None:
    # Found by the fuzzer: it used to crash the mock provider's job (a 500).
    for mixed in (["a", 5], [[1, 2], "b"], [1, [2]]):
        reply = await post(openai_gateway, EMBED, {"model": "echo", "input": mixed})
        assert reply.status_code == 422, reply.text
        assert reply.json()["error"]["param"] == "input"
    await assert_nothing_changed(openai_gateway)


@pytest.mark.parametrize("path", [CHAT, EMBED, ANTHROPIC, GEMINI])
async def test_invalid_utf8_inside_a_string_is_a_400(openai_gateway: Gateway, path: str) -> None:
    # Found by the fuzzer: msgspec raises UnicodeDecodeError (not DecodeError) there: a 500.
    body = json.dumps(DEEP_BODIES[path]).replace('"@"', '"@"').encode().replace(b"@", b"\xff\xfe")
    reply = await post(openai_gateway, path, body)
    assert reply.status_code == 400, reply.text
    assert "UTF-8" in reply.json()["error"]["message"]
    await assert_nothing_changed(openai_gateway)


async def test_a_long_slug_is_refused_without_being_echoed(openai_gateway: Gateway) -> None:
    slug = "m" * 257 + "-slug-echo-marker"
    for path, body in ((CHAT, {"model": slug, "messages": HI}),
                       (EMBED, {"model": slug, "input": "hi"}),
                       (ANTHROPIC, {"model": slug, "max_tokens": 5, "messages": HI}),
                       (f"/gemini/v1beta/models/{slug}:generateContent",
                        {"contents": [{"role": "user", "parts": [{"text": "x"}]}]})):
        reply = await post(openai_gateway, path, body)
        refused(reply, "max_model_chars")
        assert "slug-echo-marker" not in reply.text
    async with httpx.AsyncClient(verify=TLS, base_url=openai_gateway.base_url) as http:
        reply = await http.post(CHAT, json={"model": "echo", "messages": HI},
                                headers={"authorization": f"Bearer {openai_gateway.secret}",
                                         "vendor": slug})
        refused(reply, "max_model_chars")
        assert "slug-echo-marker" not in reply.text
        reply = await http.get(f"/v1/router/models/{slug}/providers",
                               headers={"authorization": f"Bearer {openai_gateway.secret}"})
    refused(reply, "max_model_chars")
    assert "slug-echo-marker" not in reply.text
    await assert_nothing_changed(openai_gateway)


async def test_the_default_body_limit_is_a_few_mib(openai_gateway: Gateway) -> None:
    assert Limits().max_body_bytes <= 8 * 1024 * 1024
    body = json.dumps({"model": "echo", "messages": [
        {"role": "user", "content": "x" * (Limits().max_body_bytes + 10)}]}).encode()
    refused(await post(openai_gateway, CHAT, body), "max_body_bytes", status=413)
    await assert_nothing_changed(openai_gateway)


async def test_every_bound_is_configurable(nursery: trio.Nursery, redis_url: str) -> None:
    limits = {"max_messages": 3, "max_tools": 1, "max_inputs": 2, "max_model_chars": 8,
              "max_dimensions": 16, "max_json_depth": 6, "max_body_bytes": 4096}
    config = make_config(redis_url, {"local": {"kind": "mock"}},
                         [{"slug": "echo", "routes": [{"provider": "local", "model": "echo"}]}],
                         limits=limits)
    gateway = await start_gateway(nursery, config)
    cases = [  # (path, body at the bound, body over it, knob)
        (CHAT, {"model": "echo", "messages": many(3)}, {"model": "echo", "messages": many(4)},
         "max_messages"),
        (CHAT, {"model": "echo", "messages": HI, "tools": tools(1)},
         {"model": "echo", "messages": HI, "tools": tools(2)}, "max_tools"),
        (EMBED, {"model": "echo", "input": ["a", "b"]}, {"model": "echo", "input": ["a"] * 3},
         "max_inputs"),
        (EMBED, {"model": "echo", "input": "a", "dimensions": 16},
         {"model": "echo", "input": "a", "dimensions": 17}, "max_dimensions"),
        (CHAT, {"model": "echo", "messages": HI, "x": [[[[[1]]]]]},  # depth 6 with the object
         {"model": "echo", "messages": HI, "x": [[[[[[1]]]]]]}, "max_json_depth"),
        (CHAT, {"model": "echo", "messages": HI, "pad": "x" * 3900},
         {"model": "echo", "messages": HI, "pad": "x" * 4100}, "max_body_bytes"),
    ]
    for path, fits, over, knob in cases:
        served = await post(gateway, path, fits)
        assert served.status_code == 200, (knob, served.text[:300])
        error = refused(await post(gateway, path, over), knob, 413 if knob == "max_body_bytes" else 400)
        assert error["details"]["max"] == limits[knob]
    refused(await post(gateway, CHAT, {"model": "echo-long", "messages": HI}), "max_model_chars")


async def test_a_provider_queue_holds_at_most_its_byte_budget(nursery: trio.Nursery,
                                                             redis_url: str) -> None:
    budget = 64 * 1024
    config = make_config(redis_url, {"local": {"kind": "mock", "max_queue_bytes": budget}},
                         [{"slug": "echo", "routes": [{"provider": "local", "model": "echo"}]}])
    gateway = await start_gateway(nursery, config, workers=False)  # nothing drains the queue
    body = {"model": "echo", "messages": [{"role": "user", "content": "x" * 8000}]}
    answers: list[httpx.Response] = []
    async with trio.open_nursery() as waiting:
        for sent in range(1, 41):  # far more than fit: the count limit (10,000) never binds here
            waiting.start_soon(_keep, answers, post(gateway, CHAT, body))
            with trio.fail_after(10):  # each one is either queued (it waits) or answered
                while not answers and await gateway.redis.xlen("{sb}:q:local") < sent:
                    await trio.sleep(0.01)
            if answers:
                break
        queued = await gateway.redis.xlen("{sb}:q:local")
        used = await gateway.redis.memory_usage("{sb}:q:local", samples=0)
        waiting.cancel_scope.cancel()
    full = answers[-1]
    error = refused(full, "max_queue_bytes", status=429)
    assert error["code"] == "queue_full" and full.headers["retry-after"]
    assert 3 <= queued <= budget // 8000, queued  # the budget, not the count, stopped it
    assert used <= budget + 9000  # never more than one job over the budget


async def test_admission_counts_a_queue_s_memory_at_most_once_a_second_far_from_full(
        nursery: trio.Nursery, redis_url: str) -> None:
    # Counting a stream's memory walks all of it: once per admission, a deep queue made
    # every admission cost Redis time in proportion to the queue's length.
    config = make_config(redis_url, {"local": {"kind": "mock", "max_queue_bytes": 2**30}},
                         [{"slug": "echo", "routes": [{"provider": "local", "model": "echo"}]}])
    gateway = await start_gateway(nursery, config)
    body = {"model": "echo", "messages": [{"role": "user", "content": "hello"}]}
    await gateway.redis.config_resetstat()
    started = time.monotonic()
    for _ in range(40):
        assert (await post(gateway, CHAT, body)).status_code == 200
    seconds = time.monotonic() - started
    stats = await gateway.redis.info("commandstats")
    counted = stats.get("cmdstat_memory|usage", {}).get("calls", 0)
    assert 1 <= counted <= math.ceil(seconds) + 1, (counted, seconds)


async def _keep(answers: list[Any], request: Any) -> None:
    answers.append(await request)


async def test_openai_kind_never_relays_the_credential(openai_gateway: Gateway,
                                                       fake_openai: FakeOpenAI,
                                                       switchboard_logs: pytest.LogCaptureFixture
                                                       ) -> None:
    # The upstream quotes the credential in the message and in the error code of a 400.
    echo = {"error": {"message": f"invalid key {UPSTREAM_SECRET} for this model",
                      "type": "invalid_request_error", "param": None,
                      "code": f"bad_key_{UPSTREAM_SECRET}"}}
    fake_openai.then(Behavior(status=400, error=echo), Behavior(status=400, error=echo),
                     Behavior(status=422, error={"error": f"{UPSTREAM_SECRET} rejected"}))
    client = openai_gateway.client()
    seen: list[str] = []
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(model="gpt-test", messages=HI,  # type: ignore[arg-type]
                                                 stream=stream)
        seen += [caught.value.response.text, caught.value.message, str(caught.value.body)]
        assert "[redacted]" in caught.value.response.text  # relayed, with the key blotted out
    with pytest.raises(openai.UnprocessableEntityError) as caught_422:
        await client.embeddings.create(model="gpt-test", input="x")
    seen.append(caught_422.value.response.text)
    assert len(fake_openai.requests) == 3
    lines = [record.getMessage() for record in switchboard_logs.records]
    assert [text for text in seen + lines if UPSTREAM_SECRET in text] == []
