"""Fuzzing the edge: schemathesis against the served OpenAPI document, hypothesis for what
the document does not describe (huge and deep JSON, invalid UTF-8, wrong content types,
odd and oversized headers, slow bodies). Issue 9, item 22.

The gateway runs as the Procfile runs it: one `switchboard serve` and one `switchboard
worker` subprocess, behind them fake OpenAI, Anthropic and Gemini upstreams and a mock.
The fuzzers are synchronous (schemathesis calls with `requests`), so they run in a thread
while the fakes keep serving on the test's event loop. Every answer must be a 4xx in the
error shape of the endpoint's API (or a 200), never a 5xx; no process dies; afterwards
Redis holds no leftover state and the processes' whole log output holds no access key,
no provider credential and no message content.

Example counts are set so both tests together stay well under a minute on a small CI
machine while still sending a few thousand requests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
import schemathesis
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from ingress.dev import free_port
from ingress.openapi import openapi_document
from tests import rawhttp
from tests.conftest import FakeUpstreams

SWITCHBOARD = str(Path(sys.executable).with_name("switchboard"))
CREDENTIALS = {"FUZZ_OPENAI_KEY": "sk-fuzz-openai-credential-4411",
               "FUZZ_ANTHROPIC_KEY": "sk-ant-fuzz-credential-4412",
               "FUZZ_GEMINI_KEY": "AIzaSy-fuzz-credential-4413"}
CONTENT = "zebra-marker-content-7731"  # in every message the raw fuzzer sends
SLUGS = ["gpt", "claude", "gem", "echo"]
# CI runs about 2,000 requests in all (~35 s); SWITCHBOARD_FUZZ_SCALE=10 runs ten times as
# many examples of every kind, for a deeper run by hand before a release.
SCALE = max(1, int(os.environ.get("SWITCHBOARD_FUZZ_SCALE", "1")))
FUZZ = settings(database=None, deadline=None, derandomize=True, print_blob=False,
                suppress_health_check=list(HealthCheck))
BODY_LIMIT = 64 * 1024  # small, so "huge" bodies are cheap to send


@dataclass
class Served:
    """The gateway subprocesses, their key, and what the fuzzers saw."""

    base: str
    port: int
    secret: str
    processes: list[subprocess.Popen[bytes]]
    log: Path
    statuses: Counter[int] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    def alive(self) -> bool:
        return all(process.poll() is None for process in self.processes)


def _config(path: Path, fakes: dict[str, str]) -> Path:
    path.write_text(f"""
redis_url = "redis://127.0.0.1:1/0"   # REDIS_URL overrides it
[limits]
max_body_bytes = {BODY_LIMIT}
body_timeout_s = 1.5
request_timeout_s = 15
[providers.up]
kind = "openai"
base_url = "{fakes['openai']}"
api_key_env = "FUZZ_OPENAI_KEY"
max_retries = 0
[providers.claude]
kind = "anthropic"
base_url = "{fakes['anthropic']}"
api_key_env = "FUZZ_ANTHROPIC_KEY"
max_retries = 0
[providers.gem]
kind = "gemini"
base_url = "{fakes['gemini']}"
api_key_env = "FUZZ_GEMINI_KEY"
max_retries = 0
[providers.local]
kind = "mock"
[[models]]
slug = "gpt"
routes = [{{ provider = "up", model = "upstream-gpt" }}]
[[models]]
slug = "claude"
routes = [{{ provider = "claude", model = "claude-upstream" }}]
[[models]]
slug = "gem"
routes = [{{ provider = "gem", model = "gemini-upstream" }}]
[[models]]
slug = "echo"
routes = [{{ provider = "local", model = "echo" }}]
""")
    return path


@pytest.fixture
async def served(nursery: trio.Nursery, redis_url: str, fake_upstream: FakeUpstreams,
                 tmp_path: Path) -> Any:
    fakes = {kind: (await fake_upstream(kind)).base_url for kind in ("openai", "anthropic", "gemini")}
    config = str(_config(tmp_path / "fuzz.toml", fakes))
    env = {**os.environ, "REDIS_URL": redis_url, **CREDENTIALS}
    created = await trio.run_process(
        [SWITCHBOARD, "keys", "create", "--config", config, "--org", "fuzz"], env=env,
        capture_stdout=True, capture_stderr=True)
    secret = created.stdout.decode().strip().splitlines()[-1]
    port = free_port()
    log = tmp_path / "gateway.log"
    with log.open("wb") as sink:
        processes = [subprocess.Popen(command, env=env, stdout=sink, stderr=sink)  # noqa: ASYNC220
                     for command in ([SWITCHBOARD, "serve", "--config", config, "--port", str(port),
                                      "--processes", "1"],
                                     [SWITCHBOARD, "worker", "--config", config, "--processes", "1"])]
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base) as http:
            with trio.fail_after(30):
                while True:
                    try:
                        if (await http.get("/readyz")).status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    await trio.sleep(0.1)
            with trio.fail_after(30):  # the worker is ready once its streams exist
                while b'"event":"worker_ready"' not in log.read_bytes():
                    await trio.sleep(0.1)
        yield Served(base, port, secret, processes, log)
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
        for process in processes:
            process.wait(timeout=30)


# The error shape of each API the gateway serves, by path prefix.
def _error_shape(path: str, body: Any) -> bool:
    if not isinstance(body, dict):
        return False
    error = body.get("error")
    if path.startswith("/anthropic/"):
        return body.get("type") == "error" and isinstance(error, dict) and \
            isinstance(error.get("message"), str) and isinstance(error.get("type"), str)
    if path.startswith("/gemini/"):
        return isinstance(error, dict) and isinstance(error.get("message"), str) and \
            isinstance(error.get("code"), int) and isinstance(error.get("status"), str)
    return isinstance(error, dict) and isinstance(error.get("message"), str) and \
        isinstance(error.get("type"), str) and isinstance(error.get("code"), str)


def judge(served: Served, what: str, path: str, status: int, headers: Any, body: bytes) -> None:
    """Record one answer; anything but a 200 or a 4xx in the error shape is a problem."""
    served.statuses[status] += 1
    if status == 200:
        return
    if not 400 <= status < 500:
        served.problems.append(f"{what}: {status} {body[:200]!r}")
        return
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if not _error_shape(path, parsed):
        served.problems.append(f"{what}: {status} not in the error shape: {body[:200]!r}")
    elif "x-request-id" not in headers:
        served.problems.append(f"{what}: {status} without x-request-id")


def _constrained(document: dict[str, Any]) -> dict[str, Any]:
    """The document with every `model` a served slug, so valid requests reach the workers."""
    document = json.loads(json.dumps(document))
    for schema in document["components"]["schemas"].values():
        model = schema.get("properties", {}).get("model")
        if model is not None and model.get("type") == "string":
            schema["properties"]["model"] = {"type": "string", "enum": SLUGS}
    for item in document["paths"].values():
        for operation in item.values():
            for parameter in operation.get("parameters", []):
                if parameter["name"] == "target":
                    parameter["schema"] = {"type": "string", "enum": [
                        f"{slug}:{method}" for slug in SLUGS
                        for method in ("generateContent", "streamGenerateContent")]}
                if parameter["name"] == "model_id":
                    parameter["schema"] = {"type": "string", "enum": [*SLUGS, "nope"]}
    return document


def run_schemathesis(served: Served, examples: int) -> int:
    """Every operation of the served document, positive and negative, with and without a
    valid key, against the real document and one whose models are the served slugs."""
    session = requests.Session()
    sent = [0]
    auth = {"authorization": f"Bearer {served.secret}"}

    def fuzz(operation: Any, mode: GenerationMode, headers: dict[str, str]) -> None:
        documented = openapi_document()["paths"][operation.path][operation.method]["responses"]
        # Without a key every answer is the same 401: a few suffice. Chat bodies are the
        # slowest to generate (the largest schema): half as many, both chat paths share them.
        count = examples if headers else 4
        if operation.path.endswith("chat/completions"):
            count //= 2
        @settings(FUZZ, max_examples=count)
        @given(case=operation.as_strategy(generation_mode=mode))
        def call(case: Any) -> None:
            response = case.call(base_url=served.base, session=session, headers=headers,
                                 timeout=20)
            sent[0] += 1
            if str(response.status_code) not in documented:
                served.problems.append(f"{case.method} {case.path}: {response.status_code} is "
                                       "not among the document's responses")
            judge(served, f"{case.method} {case.formatted_path} ({mode.value}) {case.body!r:.200}",
                  case.formatted_path, response.status_code, response.headers, response.content)

        try:
            call()
        except Unsatisfiable:
            assert mode is GenerationMode.NEGATIVE  # an operation with nothing to get wrong

    for document, modes in ((openapi_document(), (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)),
                            (_constrained(openapi_document()), (GenerationMode.POSITIVE,))):
        schema = schemathesis.openapi.from_dict(document)
        for result in schema.get_all_operations():
            if _alias(result.ok().path):
                continue
            for mode in modes:
                for headers in (auth, {}):
                    fuzz(result.ok(), mode, headers)
    return sent[0]


def _alias(path: str) -> bool:
    """A `/v3/router/` path served by the same handler as its `/v1/` twin (chat excepted,
    which the fuzzer has always sent both ways): fuzzed once, under /v1."""
    return path.startswith("/v3/router/") and not path.endswith("chat/completions")


# --- what the document does not describe ------------------------------------------------

PATHS = ["/v1/chat/completions", "/v3/router/chat/completions", "/v1/embeddings",
         "/v1/completions", "/v1/images/generations", "/v1/audio/transcriptions",
         "/anthropic/v1/messages", "/gemini/v1beta/models/gem:generateContent", "/v1/responses",
         # The Batch API's JSON endpoints (no file of the fuzzer's org exists: a valid body is a
         # 404). POST /v1/files is multipart: schemathesis fuzzes it from the document only.
         "/v1/batches", "/v1/batches/batch_fuzz/cancel"]
CONTENT_TYPES = ["application/json", "text/plain", "application/x-www-form-urlencoded",
                 "multipart/form-data; boundary=x", "application/json; charset=latin-1", ""]


def _deep(levels: int) -> bytes:
    return b'{"model":"echo","messages":[{"role":"user","content":"' + CONTENT.encode() + \
        b'"}],"x":' + b"[" * levels + b"]" * levels + b"}"


def _valid(path: str) -> bytes:
    if "batches" in path:
        return json.dumps({"input_file_id": "file-" + CONTENT, "completion_window": "24h",
                           "endpoint": "/v1/chat/completions"}).encode()
    if "embeddings" in path:
        return json.dumps({"model": "echo", "input": CONTENT}).encode()
    if "responses" in path:
        return json.dumps({"model": "echo", "input": CONTENT}).encode()
    if path.endswith("/completions") and "chat" not in path:
        return json.dumps({"model": "echo", "prompt": CONTENT}).encode()
    if "images" in path:
        return json.dumps({"model": "echo", "prompt": CONTENT}).encode()
    if "anthropic" in path:
        return json.dumps({"model": "claude", "max_tokens": 5,
                           "messages": [{"role": "user", "content": CONTENT}]}).encode()
    if "gemini" in path:
        return json.dumps({"contents": [{"role": "user", "parts": [{"text": CONTENT}]}]}).encode()
    return json.dumps({"model": "gpt", "messages": [{"role": "user", "content": CONTENT}]}).encode()


bodies = st.one_of(
    st.integers(1, 6000).map(_deep),  # deep nesting, past the bound and below it
    st.integers(BODY_LIMIT - 200, BODY_LIMIT * 3).map(  # around and over the body limit
        lambda n: b'{"model":"echo","messages":[{"role":"user","content":"' + b"x" * n + b'"}]}'),
    st.binary(max_size=300),  # anything, invalid UTF-8 included
    st.sampled_from(PATHS).map(_valid).flatmap(  # a valid body with invalid bytes spliced in
        lambda body: st.tuples(st.integers(0, len(body)), st.binary(min_size=1, max_size=8)).map(
            lambda cut: body[:cut[0]] + cut[1] + body[cut[0]:])),
    st.sampled_from(PATHS).map(_valid),
)
header_names = st.text(st.characters(min_codepoint=33, max_codepoint=126, exclude_characters=":"),
                       min_size=1, max_size=40)
header_values = st.one_of(st.binary(max_size=100).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
                          st.integers(1, 70_000))  # an oversized one: its length


def run_raw(served: Served, examples: int) -> int:
    """What the document cannot describe, over raw sockets."""
    sent = 0
    auth = (b"authorization", b"Bearer " + served.secret.encode())

    def record(what: str, path: str, answer: tuple[int, dict[str, str], bytes],
               protocol_error_ok: bool = False) -> None:
        nonlocal sent
        sent += 1
        status, headers, body = answer
        if protocol_error_ok and status in (0, 400, 431) and not body:
            # h11 refused the request line or headers itself (before any application code):
            # an empty 400/431 or a closed connection is its answer.
            served.statuses[status] += 1
            return
        judge(served, what, path, status, headers, body)

    @settings(FUZZ, max_examples=examples)
    @given(path=st.sampled_from(PATHS), body=bodies,
           content_type=st.sampled_from(CONTENT_TYPES), authed=st.booleans())
    def odd_bodies(path: str, body: bytes, content_type: str, authed: bool) -> None:
        headers = [auth] if authed else []
        if content_type:
            headers.append((b"content-type", content_type.encode()))
        record(f"body {body[:40]!r} as {content_type!r}", path,
               rawhttp.post(served.port, path, body, headers))

    @settings(FUZZ, max_examples=examples // 2)
    @given(path=st.sampled_from(PATHS), extra=st.lists(st.tuples(header_names, header_values),
                                                        max_size=4))
    def odd_headers(path: str, extra: list[tuple[str, bytes | int]]) -> None:
        headers = [auth, (b"content-type", b"application/json"),
                   *((name.encode(), b"v" * value if isinstance(value, int) else value)
                     for name, value in extra)]
        record(f"headers {extra!r:.300}", path,
               rawhttp.post(served.port, path, _valid(path), headers), protocol_error_ok=True)

    @settings(FUZZ, max_examples=5)
    @given(path=st.sampled_from(PATHS), pauses=st.lists(st.floats(0.05, 0.4), min_size=1, max_size=3))
    def slow_bodies(path: str, pauses: list[float]) -> None:
        headers = [auth, (b"content-type", b"application/json")]
        record(f"slow body {pauses}", path, rawhttp.post(served.port, path, _valid(path), headers, pauses))

    for fuzz in (odd_bodies, odd_headers, slow_bodies):
        fuzz()
    # A body that stops arriving altogether is a 408 (body_timeout_s), not a hang.
    with rawhttp.connection(served.port) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n"
                     b"authorization: Bearer " + served.secret.encode() + b"\r\n\r\n{\"model\"")
        answer = rawhttp.read_answer(sock)
    record("stalled body", "/v1/chat/completions", answer)
    if answer[0] != 408:
        served.problems.append(f"stalled body: {answer[0]}, not 408")
    return sent


# --- the runs ----------------------------------------------------------------------------

async def _leftovers(redis: Any, before: set[bytes]) -> list[str]:
    """State the run left in Redis: queued or pending jobs, keys that are not metering."""
    found = []
    for key in sorted(set(await redis.keys("*")) - before):
        # usage and the request log of the requests that were answered (and the stored
        # responses of answered Responses requests), and when their key was last used
        if not key.startswith((b"{sb}:usage:", b"{sb}:log:", b"{sb}:resp:")) and key != b"{sb}:keys:used":
            found.append(f"new key {key!r} ({(await redis.type(key)).decode()})")
    for key in await redis.keys("{sb}:q:*"):
        if await redis.xlen(key):
            found.append(f"{key!r} still holds {await redis.xlen(key)} jobs")
    return found


async def _run(served: Served, fuzz: Callable[[Served, int], int], examples: int,
               redis_url: str) -> int:
    from workers.connection import connect

    async with connect(redis_url) as redis:
        before = set(await redis.keys("*"))
        sent = await trio.to_thread.run_sync(fuzz, served, examples)
        assert served.alive(), "a gateway process died"
        async with httpx.AsyncClient(base_url=served.base) as http:
            assert (await http.get("/readyz")).status_code == 200
        with trio.move_on_after(10):  # the last withdrawn and finished jobs settle
            while await _leftovers(redis, before):
                await trio.sleep(0.1)
        assert await _leftovers(redis, before) == []
    assert served.problems == [], served.problems[:20]
    print(f"{fuzz.__name__}: {sent} requests, statuses {dict(served.statuses)}")
    return sent


def _stop_and_read_logs(served: Served) -> str:
    for process in served.processes:
        process.terminate()
    for process in served.processes:
        assert process.wait(timeout=30) == 0  # a clean, drained stop: nothing crashed
    return served.log.read_text(errors="replace")


def _assert_logs_clean(served: Served, text: str) -> None:
    assert '"event":"request"' in text  # the log of the whole run is really here
    for secret in (served.secret, *CREDENTIALS.values(), CONTENT):
        assert secret not in text, f"{secret!r} appears in the log output"
    assert "Traceback" not in text and "request_crashed" not in text


async def test_schemathesis_finds_no_5xx_and_leaves_nothing(served: Served, redis_url: str) -> None:
    sent = await _run(served, run_schemathesis, 30 * SCALE, redis_url)
    assert sent > 600 * SCALE, sent  # some operations run out of distinct examples
    assert served.statuses[200] > 50, served.statuses  # valid requests were served, too
    assert {401, 422}.issubset(served.statuses), served.statuses
    _assert_logs_clean(served, _stop_and_read_logs(served))


async def test_what_the_document_does_not_describe(served: Served, redis_url: str) -> None:
    sent = await _run(served, run_raw, 900 * SCALE, redis_url)
    assert sent > 1200 * SCALE, sent
    assert {200, 400, 413}.issubset(served.statuses), served.statuses
    _assert_logs_clean(served, _stop_and_read_logs(served))
