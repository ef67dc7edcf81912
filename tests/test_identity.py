"""`identity` and `thread` in the body, and W3C `traceparent` (issue 10).

The gateway's own request fields are validated at the edge, never reach any provider
kind's upstream (the fakes record every byte they receive), and are recorded as ids in
the ingress `request` and worker `job` log lines; a client's `traceparent` is forwarded
with a new span id per upstream call, and without a valid one the request id starts the
trace.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.conftest import TLS, KindGateways
from tests.kinds import CASES

CHAT_KINDS = ["openai", "azure", "anthropic", "gemini"]
EMBED_KINDS = ["openai", "azure", "gemini"]  # Anthropic serves no embeddings
IDENTITY = {"id": "user-42", "display_name": "Ada Lovelace", "email": "ada@example.com",
            "metadata": {"team": "analytics"}}
THREAD = {"id": "thread-7", "tags": ["support", "beta"]}
PERSONAL = ("Ada Lovelace", "ada@example.com", "analytics")
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
EMBED_MODELS = [{"slug": "emb", "routes": [{"provider": "primary", "model": "embed-model-1"}]}]


async def post(gateway: Any, path: str, body: bytes | dict[str, Any],
               headers: dict[str, str] | None = None) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with httpx.AsyncClient(verify=TLS, timeout=20) as http:
        return await http.post(gateway.base_url + path, content=content, headers={
            "authorization": f"Bearer {gateway.secret}", "content-type": "application/json",
            **(headers or {})})


def chat_body(slug: str, **extra: Any) -> dict[str, Any]:
    return {"model": slug, "messages": [{"role": "user", "content": "hi"}], **extra}


def log_lines(logs: pytest.LogCaptureFixture, event: str) -> list[dict[str, Any]]:
    lines = [json.loads(r.getMessage()) for r in logs.records if r.getMessage().startswith("{")]
    return [line for line in lines if line.get("event") == event]


def upstream_traceparents(fake: Any) -> list[str]:
    return [request.headers.get("traceparent", "") for request in fake.requests]


@pytest.mark.parametrize("kind", CHAT_KINDS)
@pytest.mark.parametrize("stream", [False, True])
async def test_chat_identity_and_thread_never_reach_the_upstream(
        kind: str, stream: bool, kind_gateway: KindGateways,
        switchboard_logs: pytest.LogCaptureFixture) -> None:
    gateway = await kind_gateway(kind)
    response = await post(gateway, "/v1/chat/completions", chat_body(
        gateway.slug, identity=IDENTITY, thread=THREAD, temperature=0.5, stream=stream))
    assert response.status_code == 200, response.text
    raw = gateway.fake.requests[-1].raw
    assert b"identity" not in raw and b"thread" not in raw and b"user-42" not in raw
    assert not any(word.encode() in raw for word in PERSONAL)
    assert b"hi" in raw  # the rest of the request did arrive
    request_id = response.headers["x-request-id"]
    [ingress] = [line for line in log_lines(switchboard_logs, "request")
                 if line["request_id"] == request_id]
    [worker] = [line for line in log_lines(switchboard_logs, "job")
                if line["request_id"] == request_id]
    for line in (ingress, worker):
        assert line["identity"] == "user-42" and line["thread"] == "thread-7"
    everything = "\n".join(record.getMessage() for record in switchboard_logs.records)
    assert not any(word in everything for word in PERSONAL)  # ids only: never personal data


@pytest.mark.parametrize("kind", EMBED_KINDS)
async def test_embeddings_identity_and_thread_never_reach_the_upstream(
        kind: str, kind_gateway: KindGateways, switchboard_logs: pytest.LogCaptureFixture) -> None:
    gateway = await kind_gateway(kind, models=EMBED_MODELS)
    response = await post(gateway, "/v1/embeddings", {
        "model": "emb", "input": "hello", "identity": {"id": "user-42"}, "thread": THREAD})
    assert response.status_code == 200, response.text
    raw = gateway.fake.requests[-1].raw
    assert b"identity" not in raw and b"thread" not in raw and b"user-42" not in raw
    [ingress] = [line for line in log_lines(switchboard_logs, "request")
                 if line["request_id"] == response.headers["x-request-id"]]
    assert ingress["identity"] == "user-42" and ingress["thread"] == "thread-7"


async def test_stripping_keeps_the_other_bytes_as_sent(kind_gateway: KindGateways) -> None:
    gateway = await kind_gateway("openai")
    # Odd but valid JSON inside the values: the openai kind relays values byte for byte.
    messages = b'[ {"role" : "user",  "content":"caf\\u00e9 \\"x\\""} ]'
    body = (b'{"model": "' + gateway.slug.encode() + b'", "identity": {"id": "u1"},\n'
            b' "messages": ' + messages + b', "thread": {"id": "t1", "tags": []},'
            b' "temperature": 0.50, "user": "u-legacy"}')
    response = await post(gateway, "/v1/chat/completions", body)
    assert response.status_code == 200, response.text
    raw = gateway.fake.requests[-1].raw
    assert messages in raw and b'"temperature":0.50' in raw and b'"user":"u-legacy"' in raw
    assert b"identity" not in raw and b"thread" not in raw


@pytest.mark.parametrize(("field", "value", "where"), [
    ("identity", {"display_name": "no id"}, "identity"),
    ("identity", "user-42", "identity"),
    ("identity", {"id": ""}, "identity.id"),
    ("identity", {"id": "x" * 257}, "identity.id"),
    ("identity", {"id": "u", "email": 5}, "identity.email"),
    ("identity", {"id": "u", "metadata": {f"k{i}": "v" for i in range(17)}}, "identity.metadata"),
    ("identity", {"id": "u", "metadata": {"k": "v" * 513}}, "identity.metadata"),
    ("thread", {"tags": ["a"]}, "thread"),
    ("thread", {"id": "t", "tags": [f"t{i}" for i in range(33)]}, "thread.tags"),
    ("thread", {"id": "t", "tags": ["x" * 65]}, "thread.tags"),
])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/embeddings"])
async def test_a_wrong_shape_is_422_naming_the_field(
        field: str, value: Any, where: str, path: str, kind_gateway: KindGateways) -> None:
    gateway = await kind_gateway("openai", models=EMBED_MODELS)
    body = (chat_body(gateway.slug) if "chat" in path else {"model": "emb", "input": "x"})
    response = await post(gateway, path, {**body, field: value})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert error["param"].startswith(where), error
    assert gateway.fake.requests == []  # nothing went upstream


async def test_without_identity_the_user_field_is_the_identity(
        kind_gateway: KindGateways, switchboard_logs: pytest.LogCaptureFixture) -> None:
    gateway = await kind_gateway("openai")
    response = await post(gateway, "/v1/chat/completions", chat_body(gateway.slug, user="u-9"))
    assert response.status_code == 200, response.text
    assert gateway.fake.requests[-1].body["user"] == "u-9"  # still forwarded, as before
    request_id = response.headers["x-request-id"]
    for event in ("request", "job"):
        [line] = [x for x in log_lines(switchboard_logs, event) if x["request_id"] == request_id]
        assert line["identity"] == "u-9" and line["thread"] == ""


@pytest.mark.parametrize("kind", CHAT_KINDS)
async def test_a_valid_traceparent_is_forwarded_with_a_new_span_per_call(
        kind: str, kind_gateway: KindGateways, switchboard_logs: pytest.LogCaptureFixture) -> None:
    gateway = await kind_gateway(kind)  # max_retries=1: a 5xx is tried once more
    case = CASES[kind]
    assert case.server_error is not None
    gateway.fake.then(case.server_error("try again"))
    response = await post(gateway, "/v1/chat/completions", chat_body(gateway.slug),
                          {"traceparent": TRACEPARENT, "tracestate": "vendor=abc"})
    assert response.status_code == 200, response.text
    sent = upstream_traceparents(gateway.fake)
    assert len(sent) == 2
    spans = set()
    for header in sent:
        version, trace_id, span_id, flags = header.split("-")
        assert (version, trace_id, flags) == ("00", TRACE_ID, "01")
        assert len(span_id) == 16 and span_id != "00f067aa0ba902b7" and span_id != "0" * 16
        spans.add(span_id)
    assert len(spans) == 2  # one span per upstream call
    assert all(r.headers.get("tracestate") == "vendor=abc" for r in gateway.fake.requests)
    request_id = response.headers["x-request-id"]
    for event in ("request", "job"):
        [line] = [x for x in log_lines(switchboard_logs, event) if x["request_id"] == request_id]
        assert line["trace_id"] == TRACE_ID


@pytest.mark.parametrize("header", [
    None,
    "00-" + "0" * 32 + "-00f067aa0ba902b7-01",  # all-zero trace id
    f"00-{TRACE_ID}-{'0' * 16}-01",  # all-zero parent id
    f"00-{TRACE_ID.upper()}-00f067aa0ba902b7-01",  # upper-case hex
    f"ff-{TRACE_ID}-00f067aa0ba902b7-01",  # the forbidden version
    f"00-{TRACE_ID}-00f067aa0ba902b7-01-extra",  # version 00 is exactly 55 characters
    "garbage",
])
async def test_without_a_valid_traceparent_the_request_id_starts_the_trace(
        header: str | None, kind_gateway: KindGateways,
        switchboard_logs: pytest.LogCaptureFixture) -> None:
    gateway = await kind_gateway("openai")
    headers = {"traceparent": header, "tracestate": "vendor=abc"} if header else {}
    response = await post(gateway, "/v1/chat/completions", chat_body(gateway.slug), headers)
    assert response.status_code == 200, response.text
    request_id = response.headers["x-request-id"]
    expected = request_id.removeprefix("req_")
    [sent] = upstream_traceparents(gateway.fake)
    version, trace_id, span_id, _flags = sent.split("-")
    assert version == "00" and trace_id == expected and len(span_id) == 16
    assert "tracestate" not in gateway.fake.requests[-1].headers  # invalid parent: state dropped
    for event in ("request", "job"):
        [line] = [x for x in log_lines(switchboard_logs, event) if x["request_id"] == request_id]
        assert line["trace_id"] == expected


async def test_a_higher_version_traceparent_is_parsed_and_forwarded_as_version_00(
        kind_gateway: KindGateways) -> None:
    gateway = await kind_gateway("openai")
    response = await post(gateway, "/v1/chat/completions", chat_body(gateway.slug),
                          {"traceparent": f"cc-{TRACE_ID}-00f067aa0ba902b7-01-what-the-future"})
    assert response.status_code == 200, response.text
    [sent] = upstream_traceparents(gateway.fake)
    assert sent.startswith(f"00-{TRACE_ID}-") and sent.endswith("-01") and len(sent) == 55


@pytest.mark.parametrize("members", [b'"identity": null, "thread": null',
                                     b'"\\u0069dentity": {"id": "u1"}, "thr\\u0065ad": null'])
async def test_null_or_escaped_fields_are_stripped_too(members: bytes,
                                                       kind_gateway: KindGateways) -> None:
    gateway = await kind_gateway("anthropic")  # its translator refuses fields it does not know
    body = (b'{"model": "' + gateway.slug.encode() + b'", ' + members +
            b', "messages": [{"role": "user", "content": "hi"}]}')
    response = await post(gateway, "/v1/chat/completions", body)
    assert response.status_code == 200, response.text
    raw = gateway.fake.requests[-1].raw
    assert b"dentity" not in raw and b"ad\"" not in raw and b"u1" not in raw
