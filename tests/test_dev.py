"""`make run` (`switchboard dev`): the printed key answers inference and, being an admin of
org `dev`, its org's admin API, as the banner's examples show."""

from __future__ import annotations

import os
import re
import socket
import stat
import subprocess
import time
from pathlib import Path

import httpx

from ingress.dev import free_port
from tests.test_cli import SWITCHBOARD

HI = {"model": "mock-echo", "messages": [{"role": "user", "content": "Hello"}]}


def _start(port: int, redis_url: str, cwd: Path,
           printed: list[str] | None = None) -> tuple[subprocess.Popen[str], str]:
    """`switchboard dev` in `cwd` (its .switchboard/ goes there), and the key it printed
    (the lines before the examples' end go to `printed`). OPENAI_API_KEY is unset."""
    env = {**os.environ, "REDIS_URL": redis_url}
    env.pop("SWITCHBOARD_CONFIG", None)
    env.pop("OPENAI_API_KEY", None)
    process = subprocess.Popen([SWITCHBOARD, "dev", "--port", str(port)], env=env, cwd=cwd,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert process.stdout is not None
    lines: list[str] = [] if printed is None else printed
    deadline = time.monotonic() + 30
    while not any(line.startswith("What it used") for line in lines):
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            raise AssertionError(lines)
        lines.append(process.stdout.readline())
    at = next(i for i, line in enumerate(lines) if line.startswith("Development key"))
    return process, lines[at + 1].strip()


def _stop(process: subprocess.Popen[str]) -> None:
    process.terminate()
    process.wait(timeout=30)


def test_the_dev_key_serves_inference_and_its_orgs_admin_api(redis_url: str,
                                                              tmp_path: Path) -> None:
    port = free_port()
    printed: list[str] = []
    process, key = _start(port, redis_url, tmp_path, printed)
    try:
        assert re.fullmatch(r"sb-[\w-]+", key)
        # No OpenAI key: the banner says so, and what it leaves to the mock.
        assert "Note: provider 'openai' has no credential (set $OPENAI_API_KEY); its routes " \
            "fail and fail over (gpt-4o-mini)\n" in printed
        base = f"http://127.0.0.1:{port}"
        headers = {"authorization": f"Bearer {key}"}
        with httpx.Client(base_url=base, headers=headers, trust_env=False) as http:
            assert http.post("/v1/chat/completions", json=HI).json()[
                "choices"][0]["message"]["content"] == "Hello"
            deadline = time.monotonic() + 10  # usage is metered as the worker finishes
            while not (rows := http.get("/v1/admin/usage", params={"group_by": "model"})
                       .json()["data"]):
                assert time.monotonic() < deadline
                time.sleep(0.05)
            assert rows[0]["model"] == "mock-echo" and rows[0]["requests"] == 1
            keys = http.get("/v1/admin/keys").json()["data"]
            assert [(k["org"], k["role"]) for k in keys] == [("dev", "admin")]
        # The banner's console address takes the same key.
        assert f"The console (sign in with that key): {base}/console\n" in printed
        with httpx.Client(base_url=base, trust_env=False) as browser:
            form = browser.get("/console/sign-in")
            csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
            assert csrf
            signed = browser.post("/console/sign-in", data={"csrf": csrf.group(1), "key": key})
            assert signed.status_code == 303 and signed.headers["location"] == "/console/models"
    finally:
        _stop(process)


def test_the_dev_key_is_reused_across_starts_while_redis_knows_it(redis_url: str,
                                                                   tmp_path: Path) -> None:
    first, key = _start(free_port(), redis_url, tmp_path)
    _stop(first)
    saved = tmp_path / ".switchboard" / "dev-key"
    assert saved.read_text().strip() == key
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600  # a secret: the owner's only
    second, again = _start(free_port(), redis_url, tmp_path)
    try:
        assert again == key
        with httpx.Client(base_url=f"http://127.0.0.1:{second.args[3]}", trust_env=False,
                          headers={"authorization": f"Bearer {key}"}) as http:
            keys = http.get("/v1/admin/keys").json()["data"]
            assert len([k for k in keys if k["name"] == "make run"]) == 1  # no second key
            # Revoked meanwhile (or a Redis that forgot it): the next start mints a new one.
            assert http.delete(f"/v1/admin/keys/{keys[0]['id']}").status_code == 200
    finally:
        _stop(second)
    third, fresh = _start(free_port(), redis_url, tmp_path)
    _stop(third)
    assert fresh != key and saved.read_text().strip() == fresh


def test_a_port_in_use_is_one_line_saying_how_to_choose_another(redis_url: str,
                                                                 tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([SWITCHBOARD, "dev", "--port", str(port)], cwd=tmp_path,
                                env={**os.environ, "REDIS_URL": redis_url},
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert f"port {port}" in result.stderr and "taken" in result.stderr
    assert "make run PORT=" in result.stderr and "--port" in result.stderr
    assert not (tmp_path / ".switchboard" / "dev-key").exists()  # nothing was started
