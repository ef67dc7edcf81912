"""OTLP span export (issue 10): one trace from the client through the ingress and the worker
to the upstream, exported by real `switchboard serve` / `worker` processes to a fake OTLP/HTTP
collector that decodes the protobuf; nothing at all (not even the SDK loaded) when off.

The ingress span's parent is the client's span, the worker span's parent is the ingress span,
and each worker span's id is the parent id of the `traceparent` its upstream call carried
(the fake upstream records the headers). Spans go out at process exit at the latest (the
batch processor's flush), so each test stops its processes before it reads the collector.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import openai
import pytest
import trio

from ingress.cli import main
from ingress.keys import KeyStore
from schemas.config import ConfigError, parse_config
from tests.fakes.openai_upstream import Behavior, FakeOpenAI
from tests.fakes.otlp_collector import FakeCollector, Recorded
from tests.fakes.server import serve_asgi
from tests.fleet import Fleet
from workers.connection import connect

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
SECRET_UP = "sk-upstream-tracing-secret"
STOP_S = 30.0  # a drained process exits well within this (no request is open)
HUNG_STOP_S = 15.0  # ... and, its collector hanging, within tracing.timeout_s (1 s) more
PROMPT = "the secret recipe is forty-two"  # content: must never be in a span


def config_text(upstream: str, tracing: str = "") -> str:
    return f"""
[providers.up]
kind = "openai"
base_url = "{upstream}"
api_key_env = "FAKE_UP_KEY"
max_retries = 1
timeout_s = 10

[[models]]
slug = "gpt-traced"
routes = [{{ provider = "up", model = "upstream-model-1" }}]
{tracing}
"""


async def start(nursery: Any, redis_url: str, fake_upstream: Any,
                tmp_path: Path, tracing: str, env: dict[str, str] | None = None
                ) -> tuple[Fleet, str, str, FakeOpenAI]:
    """A fleet of one ingress and one worker process; returns it, its base URL, a key's
    secret and the fake upstream."""
    fake: FakeOpenAI = await fake_upstream("openai")
    async with connect(redis_url) as redis:
        _, secret = await KeyStore(redis).create("acme", "proj", "", "tracing")
    fleet = Fleet(tmp_path, config_text(fake.base_url, tracing), redis_url,
                  env={"FAKE_UP_KEY": SECRET_UP, **(env or {})})
    try:
        base = await fleet.serve("in1")
        await fleet.worker("w1")
    except BaseException:
        fleet.stop_all()
        raise
    return fleet, base, secret, fake


async def stop(fleet: Fleet, within_s: float = STOP_S) -> dict[str, int]:
    """SIGTERM every process and wait for them to exit, without blocking this test's event
    loop (the fake collector runs on it, and they export to it on their way out); what
    has not exited `within_s` is killed, and its status says so."""
    for process in fleet.processes.values():
        process.terminate()
    with trio.move_on_after(within_s):
        while any(process.poll() is None for process in fleet.processes.values()):
            await trio.sleep(0.05)
    for process in fleet.processes.values():
        if process.poll() is None:
            process.kill()
    return fleet.stop_all()


def client(base: str, secret: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base + "/v1", api_key=secret, max_retries=0, timeout=30)


def parent_of(traceparent: str) -> str:
    return traceparent.split("-")[2]


def of_trace(collector: FakeCollector, trace_id: str, kind: str) -> list[Recorded]:
    return [s for s in collector.spans if s.trace_id == trace_id and s.kind == kind]


async def test_one_trace_from_the_client_through_ingress_and_worker_to_the_upstream(
        nursery: Any, redis_url: str, fake_upstream: Any, tmp_path: Path) -> None:
    collector = FakeCollector()
    origin = await nursery.start(serve_asgi, collector)
    fleet, base, secret, fake = await start(
        nursery, redis_url, fake_upstream, tmp_path,
        f'[tracing]\notlp_endpoint = "{origin}"\nservice_name = "sb-test"\n')
    try:
        fake.then(Behavior(status=500))  # the first call fails, the retry answers
        sdk = client(base, secret)
        raw = await sdk.chat.completions.with_raw_response.create(
            model="gpt-traced", messages=[{"role": "user", "content": PROMPT}],
            extra_headers={"traceparent": f"00-{TRACE_ID}-{CLIENT_SPAN}-01",
                           "tracestate": "vendor=abc"})
        traced_id = raw.headers["x-request-id"]
        sent = [r.headers["traceparent"] for r in fake.requests]
        # No traceparent: the ingress starts the trace from the request id, and records it.
        stream = await sdk.chat.completions.with_raw_response.create(
            model="gpt-traced", messages=[{"role": "user", "content": "hi"}], stream=True)
        async for _ in stream.parse():
            pass
        started_id = stream.headers["x-request-id"]
        started_sent = fake.requests[-1].headers["traceparent"]
        # The client's trace is not sampled (flags 00): nothing of it is recorded.
        await sdk.chat.completions.create(
            model="gpt-traced", messages=[{"role": "user", "content": "hi"}],
            extra_headers={"traceparent": f"00-{'ab' * 16}-{CLIENT_SPAN}-00"})
        with pytest.raises(openai.BadRequestError):  # refused at the edge: an ingress span only
            await sdk.chat.completions.create(model="no-such-model",
                                              messages=[{"role": "user", "content": "hi"}])
    finally:
        statuses = await stop(fleet)  # the spans still queued are exported on the way out
    assert statuses == {"in1": 0, "w1": 0}, fleet.log_text()

    # The client's trace: its span -> the ingress span -> one worker span per upstream call.
    [ingress] = of_trace(collector, TRACE_ID, "server")
    assert ingress.name == "POST /v1/chat/completions" and ingress.parent_id == CLIENT_SPAN
    assert ingress.span_id != CLIENT_SPAN  # a span of its own, the child of the client's
    assert ingress.trace_state == "vendor=abc"
    assert ingress.attributes["switchboard.request_id"] == traced_id
    assert ingress.attributes["switchboard.org"] == "acme"
    assert ingress.attributes["switchboard.model"] == "gpt-traced"
    assert ingress.attributes["switchboard.provider"] == "up"
    assert ingress.attributes["http.response.status_code"] == 200
    assert ingress.attributes["switchboard.status"] == 200 and not ingress.error
    assert ingress.resource["service.name"] == "sb-test"
    assert ingress.resource["switchboard.role"] == "ingress"
    calls = of_trace(collector, TRACE_ID, "client")
    assert len(calls) == 2 and len(sent) == 2
    # Each exported worker span is the very span the upstream was told is its parent.
    assert sorted(call.span_id for call in calls) == sorted(parent_of(h) for h in sent)
    assert all(call.parent_id == ingress.span_id for call in calls)
    assert all(h.startswith(f"00-{TRACE_ID}-") and h.endswith("-01") for h in sent)
    failed, answered = sorted(calls, key=lambda call: sent.index(next(
        h for h in sent if parent_of(h) == call.span_id)))
    for call in calls:
        assert call.name == "chat upstream-model-1"
        assert call.attributes["gen_ai.operation.name"] == "chat"
        assert call.attributes["gen_ai.provider.name"] == "openai"
        assert call.attributes["gen_ai.request.model"] == "upstream-model-1"
        assert call.attributes["switchboard.provider"] == "up"
        assert call.attributes["switchboard.request_id"] == traced_id
        assert call.resource["switchboard.role"] == "worker"
    assert failed.error and failed.attributes["error.type"] == "upstream_error"
    assert failed.attributes["http.response.status_code"] == 500
    assert not answered.error and answered.attributes["switchboard.status"] == 200
    assert answered.attributes["gen_ai.usage.input_tokens"] > 0
    assert answered.attributes["gen_ai.usage.output_tokens"] > 0

    # A trace the ingress started: the request id's hex, a root ingress span, sampled.
    started_trace = started_id.removeprefix("req_")
    [root] = of_trace(collector, started_trace, "server")
    [call] = of_trace(collector, started_trace, "client")
    assert root.parent_id == "" and call.parent_id == root.span_id
    assert started_sent == f"00-{started_trace}-{call.span_id}-01"

    assert of_trace(collector, "ab" * 16, "server") == []  # unsampled: not recorded
    assert of_trace(collector, "ab" * 16, "client") == []
    [refused] = [s for s in collector.spans if s.attributes.get("switchboard.status") == 400]
    assert refused.kind == "server" and refused.attributes["error.type"] == "model_not_found"
    assert refused.attributes["http.response.status_code"] == 400 and not refused.error
    assert len(collector.spans) == 6  # the three calls' spans, two ingress spans, the refusal

    # Ids, names, statuses and counts only: no content, no key, no credential.
    every = repr([(s.name, s.attributes, s.resource) for s in collector.spans])
    assert PROMPT not in every and "recipe" not in every
    assert secret not in every and SECRET_UP not in every


async def test_with_tracing_off_no_exporter_is_created_and_nothing_is_sent(
        nursery: Any, redis_url: str, fake_upstream: Any, tmp_path: Path) -> None:
    collector = FakeCollector()
    origin = await nursery.start(serve_asgi, collector)
    # OpenTelemetry's own variables point at the collector: an exporter created anyway would
    # find it. PYTHONPROFILEIMPORTTIME lists every module the processes import (in their logs).
    fleet, base, secret, fake = await start(
        nursery, redis_url, fake_upstream, tmp_path, tracing="",
        env={"OTEL_EXPORTER_OTLP_ENDPOINT": origin,
             "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": origin + "/v1/traces",
             "PYTHONPROFILEIMPORTTIME": "1"})
    try:
        answer = await client(base, secret).chat.completions.create(
            model="gpt-traced", messages=[{"role": "user", "content": "hi"}],
            extra_headers={"traceparent": f"00-{TRACE_ID}-{CLIENT_SPAN}-01"})
        assert answer.choices[0].message.content
        sent = fake.requests[-1].headers["traceparent"]
        assert sent.startswith(f"00-{TRACE_ID}-")  # propagation works without export
    finally:
        statuses = await stop(fleet)
    assert statuses == {"in1": 0, "w1": 0}
    assert collector.requests == []
    logs = fleet.log_text()
    assert "import time:" in logs and "ingress.server" in logs  # the import list was written
    assert "opentelemetry.sdk" not in logs and "opentelemetry.exporter" not in logs


async def test_a_collector_that_hangs_delays_no_answer_and_no_shutdown(
        nursery: Any, redis_url: str, fake_upstream: Any, tmp_path: Path) -> None:
    collector = FakeCollector(hang=True)
    origin = await nursery.start(serve_asgi, collector)
    # Exports every 50 ms (OpenTelemetry's own knob): they run while requests are answered.
    fleet, base, secret, _ = await start(
        nursery, redis_url, fake_upstream, tmp_path,
        f'[tracing]\notlp_endpoint = "{origin}"\ntimeout_s = 1\n',
        env={"OTEL_BSP_SCHEDULE_DELAY": "50"})
    try:
        sdk = client(base, secret)
        for _ in range(3):
            answer = await sdk.chat.completions.create(
                model="gpt-traced", messages=[{"role": "user", "content": "hi"}])
            assert answer.choices[0].message.content
            await trio.sleep(0.1)  # an export is under way, hanging
        assert collector.requests  # it was called, and did not answer
    finally:
        # The exports still hang: the processes stop after `timeout_s` (1 s) all the same,
        # well before the SDK's own 30 s wait for its export thread.
        statuses = await stop(fleet, within_s=HUNG_STOP_S)
    assert statuses == {"in1": 0, "w1": 0}, fleet.log_text()  # stopped cleanly, not killed


def test_tracing_without_the_sdk_installed_is_a_clear_error_at_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "sb.toml"
    path.write_text(config_text("http://127.0.0.1:9", '[tracing]\notlp_endpoint = "http://127.0.0.1:4318"\n'))
    # As if the `otel` extra were not installed: importing the SDK fails.
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk", None)
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    for verb in ("serve", "worker"):
        assert main([verb, "--config", str(path)]) == 2
        error = capsys.readouterr().err
        assert "[tracing]" in error and "pip install 'switchboard[otel]'" in error, error


@pytest.mark.parametrize(("table", "field"), [
    ({"otlp_endpoint": "collector:4318"}, "$.tracing.otlp_endpoint"),
    ({}, "$.tracing"),
    ({"otlp_endpoint": "http://c:4318", "timeout_s": 0}, "$.tracing.timeout_s"),
    ({"otlp_endpoint": "http://c:4318", "headers": "x"}, "$.tracing"),
])
def test_a_wrong_tracing_table_is_a_config_error_naming_the_field(
        table: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=f"at `{field.replace('$', '[$]')}`"):
        parse_config({"tracing": table}, "sb.toml")
