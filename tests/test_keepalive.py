"""Every answer leaves the connection usable (invariant 10).

An answer made before the request body was read (unknown path, wrong method, bad key, body
over the limit, ...) must leave one keep-alive connection ready for the next request, or close
it cleanly; it must never leave it half-read, so that the client's next request waits.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import openai
import pytest
import trio

from tests.conftest import TLS, Gateway, make_config, start_gateway

LIMIT = 4 * 1024 * 1024
CHAT = json.dumps({"model": "echo", "messages": [{"role": "user", "content": "ping " * 4000}]}).encode()
BIG = b'{"model": "echo", "padding": "' + b"x" * 3_000_000 + b'"}'  # under the limit
HUGE = b"x" * (LIMIT + 2_000_000)


@dataclass(frozen=True)
class Early:
    """One kind of early answer: the request, and the status and code it must get."""

    method: str
    path: str
    body: bytes
    status: int
    code: str
    key: str | None = "good"  # "good", "bad" or None (no key)


def early_answers() -> Iterator[Early]:
    for size in (0, 20_000, 3_000_000):
        yield Early("POST", "/v1/responses-not-served", b"x" * size, 404, "not_found")
    yield Early("GET", "/nope", b"", 404, "not_found")
    yield Early("GET", "/nope", CHAT, 404, "not_found")
    yield Early("GET", "/v1/chat/completions", CHAT, 405, "method_not_allowed")
    yield Early("PUT", "/v1/chat/completions", BIG, 405, "method_not_allowed")
    yield Early("POST", "/v1/chat/completions", CHAT, 401, "unauthorized", key=None)
    yield Early("POST", "/v1/chat/completions", CHAT, 401, "unauthorized", key="bad")
    yield Early("POST", "/v1/chat/completions", BIG, 401, "unauthorized", key="bad")
    yield Early("POST", "/v1/chat/completions", b"x" * (LIMIT + 1), 413, "request_too_large")
    yield Early("POST", "/v1/chat/completions", HUGE, 413, "request_too_large")
    yield Early("POST", "/v1/nothing", HUGE, 404, "not_found")
    yield Early("POST", "/v1/chat/completions", b"{not json" + b" " * 20_000, 400, "invalid_json")
    yield Early("POST", "/gemini/v1beta/models/m:bogusMethod", CHAT, 404, "not_found")
    yield Early("GET", "/anthropic/v1/messages", CHAT, 405, "method_not_allowed")


@pytest.fixture
async def gateway(nursery: trio.Nursery, redis_url: str) -> Gateway:
    config = make_config(redis_url, {"local": {"kind": "mock"}},
                         [{"slug": "echo", "routes": [{"provider": "local", "model": "echo"}]}],
                         limits={"max_body_bytes": LIMIT})
    return await start_gateway(nursery, config)


def error_code(response: httpx.Response) -> str:
    """The gateway's code, in whichever dialect the path answers."""
    body = response.json()
    if response.request.url.path.startswith("/gemini/"):
        return str(body["error"]["details"][0]["reason"])
    return str(body["error"]["code"])


@pytest.mark.parametrize("early", list(early_answers()),
                         ids=lambda e: f"{e.method}-{e.path}-{len(e.body)}-{e.key}")
async def test_an_early_answer_leaves_the_connection_usable(gateway: Gateway, early: Early) -> None:
    keys = {"good": gateway.secret, "bad": "sb-not-a-key", None: None}
    headers = {"authorization": f"Bearer {keys[early.key]}"} if keys[early.key] else {}
    # One connection at most: every follow-up either reuses it or replaces a cleanly closed one.
    async with httpx.AsyncClient(verify=TLS, base_url=gateway.base_url, timeout=5,
                                 limits=httpx.Limits(max_connections=1)) as http:
        for _ in range(8):
            answer = await http.request(early.method, early.path, content=early.body, headers=headers)
            assert answer.status_code == early.status, answer.text
            assert error_code(answer) == early.code
            assert answer.headers["x-request-id"].startswith("req_")
            # A hang here is an httpx.ReadTimeout after 5 s, and fails the test.
            follow_up = await http.post("/v1/chat/completions", content=CHAT, headers={
                "authorization": f"Bearer {gateway.secret}", "content-type": "application/json"})
            assert follow_up.status_code == 200, follow_up.text
            assert follow_up.json()["choices"][0]["message"]["content"].startswith("ping")


async def test_small_early_answers_keep_the_connection_alive(gateway: Gateway) -> None:
    """Bodies the gateway can afford to read are read: the same connection serves on."""
    peers: set[tuple[str, int]] = set()

    async with httpx.AsyncClient(verify=TLS, base_url=gateway.base_url, timeout=5,
                                 limits=httpx.Limits(max_connections=1)) as http:
        for path in ("/v1/nothing", "/v1/chat/completions"):
            for _ in range(5):
                answer = await http.post(path, content=b"x" * 20_000)
                assert answer.status_code in (401, 404)
                assert "connection" not in answer.headers
                async with http.stream("POST", "/v1/chat/completions", content=CHAT, headers={
                        "authorization": f"Bearer {gateway.secret}"}) as follow_up:
                    stream = follow_up.extensions["network_stream"]
                    peers.add(stream.get_extra_info("client_addr"))
                    await follow_up.aread()
                assert follow_up.status_code == 200
    assert len(peers) == 1  # one TCP connection served all twenty requests


async def test_unknown_paths_name_the_served_endpoints(gateway: Gateway) -> None:
    async with httpx.AsyncClient(verify=TLS, base_url=gateway.base_url, timeout=5) as http:
        missing = await http.post("/v1/responses-not-served", content=b"{}")
        wrong = await http.delete("/v1/chat/completions")
        gemini = await http.get("/gemini/v1beta/nothing")
        anthropic = await http.get("/anthropic/v1/nothing")
    assert missing.status_code == 404
    error = missing.json()["error"]
    assert error["code"] == "not_found" and error["type"] == "not_found_error"
    assert "/v1/chat/completions" in error["message"] and "/v1/embeddings" in error["message"]
    assert "<" not in error["message"]  # not the framework's HTML page
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"
    assert "POST" in wrong.json()["error"]["message"]
    assert gemini.status_code == 404 and gemini.json()["error"]["status"] == "NOT_FOUND"
    assert anthropic.status_code == 404 and anthropic.json()["type"] == "error"
    assert anthropic.json()["error"]["type"] == "not_found_error"


async def test_openai_sdk_unknown_endpoint_then_chat_is_immediate(gateway: Gateway) -> None:
    client = gateway.client(timeout=5, max_retries=0)
    for _ in range(5):
        with pytest.raises(openai.NotFoundError) as caught:
            # An endpoint the gateway does not serve (Responses is served now).
            await client.vector_stores.create(name="x" * 20_000)
        assert caught.value.body["code"] == "not_found"  # type: ignore[index]
        # A stalled connection would raise APITimeoutError after 5 s instead.
        answer = await client.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": "after the 404"}])
        assert answer.choices[0].message.content == "after the 404"


async def test_a_body_over_the_limit_is_not_buffered(gateway: Gateway) -> None:
    """A 413 is answered without holding the oversized body, and the gateway serves on."""
    async with httpx.AsyncClient(verify=TLS, base_url=gateway.base_url, timeout=10) as http:
        answer = await http.post("/v1/chat/completions", content=b"x" * 64_000_000,
                                 headers={"authorization": f"Bearer {gateway.secret}"})
        assert answer.status_code == 413
        assert answer.headers.get("connection") == "close"
        follow_up = await http.post("/v1/chat/completions", content=CHAT,
                                    headers={"authorization": f"Bearer {gateway.secret}"})
        assert follow_up.status_code == 200


async def test_an_idle_keep_alive_connection_does_not_hold_a_graceful_stop(
        nursery: trio.Nursery, redis_url: str) -> None:
    """The answer's end used to be cut short, leaving the connection without its idle timer:
    a graceful stop then waited the whole 30 s grace for it."""
    from ingress.server import run_ingress

    config = make_config(redis_url, {"local": {"kind": "mock"}},
                         [{"slug": "echo", "routes": [{"provider": "local", "model": "echo"}]}])
    stop = trio.Event()
    stopped = trio.Event()

    async def serve(task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
        await run_ingress(config, "127.0.0.1", 0, stop=stop, task_status=task_status)
        stopped.set()

    binds = await nursery.start(serve)
    async with httpx.AsyncClient(verify=TLS, base_url=binds[0], timeout=5) as http:
        for path in ("/v1/chat/completions", "/v1/nothing"):
            assert (await http.post(path, content=b"{}")).status_code in (401, 404)
        stop.set()
        with trio.fail_after(10):  # a third of the grace period the bug waited for
            await stopped.wait()
