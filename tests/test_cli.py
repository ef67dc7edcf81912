"""The real `switchboard` command as subprocesses: keys, serve, worker, models."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest
import trio

from ingress.dev import free_port
from tests.conftest import TLS, RedisServer
from tests.fakes.openai_upstream import FakeOpenAI

SWITCHBOARD = str(Path(sys.executable).with_name("switchboard"))
UPSTREAM_SECRET = "sk-cli-upstream-credential-77"
CONTENT = "purple elephant whispers"


def write_config(path: Path, redis_url: str, upstream: str) -> Path:
    path.write_text(f"""
redis_url = "redis://127.0.0.1:1/0"   # overridden by REDIS_URL
[limits]
key_cache_s = 0
[providers.up]
kind = "openai"
base_url = "{upstream}"
api_key_env = "CLI_UPSTREAM_KEY"
[providers.local]
kind = "mock"
[[models]]
slug = "gpt-cli"
name = "GPT via CLI"
routes = [{{ provider = "up", model = "real-model" }}]
[[models]]
slug = "echo"
routes = [{{ provider = "local", model = "echo" }}]
[plans.free]
monthly_tokens = 1000
""")
    return path


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SWITCHBOARD, *args], env=env, capture_output=True, text=True, timeout=60)


async def test_cli_keys_serve_worker_models(nursery: trio.Nursery, redis_url: str,
                                            fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    config = str(write_config(tmp_path / "sb.toml", redis_url, fake_openai.base_url))
    env = {**os.environ, "REDIS_URL": redis_url, "CLI_UPSTREAM_KEY": UPSTREAM_SECRET}

    created = run("keys", "create", "--config", config, "--org", "acme", "--plan", "free",
                   "--name", "ci", env=env)
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip().splitlines()[-1]
    assert secret.startswith("sb-")
    listed = run("keys", "list", "--config", config, "--org", "acme", env=env)
    assert "acme" in listed.stdout and "free" in listed.stdout and secret not in listed.stdout
    key_id = listed.stdout.splitlines()[1].split()[0]

    models = run("models", "--config", config, env=env)
    assert "gpt-cli" in models.stdout and "up:real-model" in models.stdout

    port = free_port()
    logs = tmp_path / "logs.txt"
    with logs.open("w") as sink:
        # Popen only starts the processes (no waiting), so the event loop keeps running.
        serve = subprocess.Popen(  # noqa: ASYNC220
            [SWITCHBOARD, "serve", "--config", config, "--port", str(port), "--processes", "1"],
            env=env, stderr=sink, stdout=sink)
        worker = subprocess.Popen(  # noqa: ASYNC220
            [SWITCHBOARD, "worker", "--config", config, "--processes", "1"],
            env=env, stderr=sink, stdout=sink)
        try:
            base = f"http://127.0.0.1:{port}"
            async with httpx.AsyncClient(verify=TLS, base_url=base) as http:
                with trio.fail_after(20):
                    while True:
                        try:
                            if (await http.get("/readyz")).status_code == 200:
                                break
                        except httpx.HTTPError:
                            pass
                        await trio.sleep(0.1)
            client = openai.AsyncOpenAI(base_url=base + "/v1", api_key=secret, max_retries=0)
            answer = await client.chat.completions.create(
                model="gpt-cli", messages=[{"role": "user", "content": CONTENT}])
            assert answer.choices[0].message.content == CONTENT
            assert fake_openai.requests[0].headers["authorization"] == f"Bearer {UPSTREAM_SECRET}"
            stream = await client.chat.completions.create(
                model="echo", stream=True, messages=[{"role": "user", "content": "a b c"}])
            assert "".join([c.choices[0].delta.content or "" async for c in stream
                            if c.choices]) == "a b c"

            usage = run("usage", "--config", config, "--org", "acme", env=env)
            row = usage.stdout.splitlines()[1].split()
            assert row[:3] == ["acme", "free", "2"]  # org, plan, requests
            # tokens metered, the cost (unpriced routes: 0, marked), the plan's limit
            assert int(row[5]) > 0 and row[6] == "0.000000*" and row[7] == "1000"
            bad_month = run("usage", "--config", config, "--month", "11/2026", env=env)
            assert bad_month.returncode == 2 and "--month" in bad_month.stderr

            revoked = run("keys", "revoke", "--config", config, key_id, env=env)
            assert revoked.returncode == 0, revoked.stderr
            with pytest.raises(openai.AuthenticationError):
                await client.chat.completions.create(
                    model="echo", messages=[{"role": "user", "content": "hi"}])
            await client.close()  # idle keep-alive connections would hold the graceful stop
        finally:
            for process in (serve, worker):
                process.terminate()
            for process in (serve, worker):
                assert process.wait(timeout=10) == 0  # SIGTERM is a clean, drained stop
    text = logs.read_text()
    assert '"event":"request"' in text and '"event":"job"' in text
    for secret_text in (secret, UPSTREAM_SECRET, CONTENT):
        assert secret_text not in text  # no key, no credential, no message content in logs


def test_bad_config_names_file_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[providers.x]\nkind = "openai"\nmax_concurrency = "lots"\n')
    (tmp_path / "ok.toml").write_text('[providers.x]\nkind = "mock"\n')
    result = run("serve", "--config", str(bad), env=dict(os.environ))
    assert result.returncode == 2
    assert str(bad) in result.stderr and "max_concurrency" in result.stderr
    missing = run("worker", "--config", str(tmp_path / "nope.toml"), env=dict(os.environ))
    assert missing.returncode == 2 and "nope.toml" in missing.stderr
    clustered = run("serve", "--config", str(bad.with_name("ok.toml")),
                    env={**os.environ, "REDIS_URL": "redis://127.0.0.1:9/0?cluster=maybe"})
    assert clustered.returncode == 2 and "cluster='maybe'" in clustered.stderr
    assert "Traceback" not in clustered.stderr
    unknown = tmp_path / "unknown.toml"
    unknown.write_text('[providers.x]\nkind = "carrier-pigeon"\n')
    result = run("models", "--config", str(unknown), env=dict(os.environ))
    assert result.returncode == 2 and "kind" in result.stderr


def test_keys_create_rejects_unknown_plan(tmp_path: Path, redis_server: RedisServer) -> None:
    config = write_config(tmp_path / "sb.toml", redis_server.url, "http://127.0.0.1:9/v1")
    env = {**os.environ, "REDIS_URL": redis_server.url}
    result = run("keys", "create", "--config", str(config), "--org", "o", "--plan", "gold", env=env)
    assert result.returncode == 2 and "gold" in result.stderr


EXAMPLE = Path(__file__).parents[1] / "examples" / "switchboard.toml"


def test_the_example_config_parses_with_every_provider_kind() -> None:
    from schemas.config import load_config

    config = load_config(EXAMPLE, {})
    assert {p.kind for p in config.providers.values()} >= {"openai", "anthropic", "gemini", "azure"}
    assert config.models and config.plans and config.agents
    assert {m.slug for m in config.models} >= {a.model for a in config.agents.values()}
    assert all(p.api_key_env or p.api_key_file for p in config.providers.values())


def test_every_verb_reads_switchboard_config_else_the_default_file(tmp_path: Path) -> None:
    env = {**os.environ, "SWITCHBOARD_CONFIG": str(EXAMPLE)}
    env.pop("REDIS_URL", None)
    models = subprocess.run([SWITCHBOARD, "models"], env=env, capture_output=True, text=True,
                            timeout=60, cwd=tmp_path)
    assert models.returncode == 0, models.stderr
    assert "claude-sonnet" in models.stdout and "azure:gpt-4o-mini-deployment" in models.stdout
    # No variable and no ./switchboard.toml: one line saying what to do, for every verb.
    env.pop("SWITCHBOARD_CONFIG")
    for verb in (["models"], ["serve"], ["worker"], ["keys", "list"], ["usage"]):
        result = subprocess.run([SWITCHBOARD, *verb], env=env, capture_output=True, text=True,
                                timeout=60, cwd=tmp_path)
        assert result.returncode == 2, verb
        assert "switchboard.toml" in result.stderr and "SWITCHBOARD_CONFIG" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    # ./switchboard.toml is the default (what the Procfile runs with no variable set).
    (tmp_path / "switchboard.toml").write_text(EXAMPLE.read_text())
    found = subprocess.run([SWITCHBOARD, "models"], env=env, capture_output=True, text=True,
                           timeout=60, cwd=tmp_path)
    assert found.returncode == 0 and "gemini-flash" in found.stdout
    # --config still wins over the variable.
    other = write_config(tmp_path / "other.toml", "", "http://127.0.0.1:9/v1")
    env["SWITCHBOARD_CONFIG"] = str(EXAMPLE)
    chosen = subprocess.run([SWITCHBOARD, "models", "--config", str(other)], env=env,
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert "gpt-cli" in chosen.stdout and "claude-sonnet" not in chosen.stdout


def test_the_procfile_names_no_config_flag() -> None:
    procfile = (Path(__file__).parents[1] / "Procfile").read_text()
    assert "switchboard serve" in procfile and "switchboard worker" in procfile
    assert "--config" not in procfile  # SWITCHBOARD_CONFIG or ./switchboard.toml
