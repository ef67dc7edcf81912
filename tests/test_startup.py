"""Start-up and routing say what really happens: a provider whose credential yields nothing
is named at start-up, and a route that failed over is logged with its failure (not as a 200).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.conftest import make_config, start_gateway
from tests.fakes.openai_upstream import Behavior, FakeOpenAI
from workers.service import warn_missing_credentials

UNAUTHORIZED = {"error": {"message": "You didn't provide an API key.", "type": "invalid_request_error",
                          "code": None, "param": None}}


def _lines(logs: pytest.LogCaptureFixture, event: str) -> list[dict[str, Any]]:
    parsed = [json.loads(r.getMessage()) for r in logs.records if r.name == "switchboard"]
    return [line for line in parsed if line.get("event") == event]


def test_each_provider_without_a_credential_gets_one_start_up_line(
        redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        switchboard_logs: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv("STARTUP_NO_KEY", raising=False)
    monkeypatch.setenv("STARTUP_EMPTY_KEY", "")
    monkeypatch.setenv("STARTUP_GOOD_KEY", "sk-good")
    (tmp_path / "key").write_text("sk-from-file\n")
    config = make_config(redis_url, {
        "unset": {"kind": "openai", "api_key_env": "STARTUP_NO_KEY"},
        "empty": {"kind": "anthropic", "api_key_env": "STARTUP_EMPTY_KEY"},
        "nofile": {"kind": "gemini", "api_key_file": str(tmp_path / "missing")},
        "good": {"kind": "openai", "api_key_env": "STARTUP_GOOD_KEY"},
        "filed": {"kind": "openai", "api_key_file": str(tmp_path / "key")},
        "local": {"kind": "mock"},
        "vllm": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1"},  # names no credential
    }, [])
    assert warn_missing_credentials(config, list(config.providers)) == ["unset", "empty", "nofile"]
    lines = _lines(switchboard_logs, "provider_without_credential")
    assert [line["provider"] for line in lines] == ["unset", "empty", "nofile"]
    assert lines[0]["api_key_env"] == "STARTUP_NO_KEY" and lines[0]["kind"] == "openai"
    assert "$STARTUP_NO_KEY" in lines[0]["message"] and "fail" in lines[0]["message"]
    assert lines[2]["api_key_file"] == str(tmp_path / "missing")
    assert "sk-good" not in json.dumps(lines)


async def test_the_worker_names_them_when_it_starts_and_a_failover_logs_the_failure(
        nursery: trio.Nursery, redis_url: str, fake_openai: FakeOpenAI,
        monkeypatch: pytest.MonkeyPatch, switchboard_logs: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv("STARTUP_OPENAI_KEY", raising=False)
    config = make_config(
        redis_url,
        {"openai": {"kind": "openai", "base_url": fake_openai.base_url,
                    "api_key_env": "STARTUP_OPENAI_KEY", "max_retries": 0},
         "mock": {"kind": "mock"}},
        [{"slug": "gpt-4o-mini", "routes": [{"provider": "openai", "model": "gpt-4o-mini"},
                                            {"provider": "mock", "model": "echo"}]}])
    gateway = await start_gateway(nursery, config)
    assert [line["provider"] for line in _lines(switchboard_logs, "provider_without_credential")
            ] == ["openai"]
    fake_openai.then(Behavior(status=401, error=UNAUTHORIZED))  # what OpenAI says with no key
    client = gateway.client()
    answer = await client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hello fallback"}])
    assert answer.choices[0].message.content == "hello fallback"  # the mock answered
    await client.close()
    with trio.fail_after(5):  # the log line follows the outcome
        while len(jobs := _lines(switchboard_logs, "job")) < 2:
            await trio.sleep(0.02)
    first, second = jobs
    assert (first["provider"], first["outcome"], first["status"]) == ("openai", "forwarded", 502)
    assert (first["code"], first["upstream_status"]) == ("upstream_error", 401)
    assert (second["provider"], second["outcome"], second["status"]) == ("mock", "done", 200)
    assert "code" not in second
