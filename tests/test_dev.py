"""`make run` (`switchboard dev`): the printed key answers inference and, being an admin of
org `dev`, its org's admin API, as the banner's examples show."""

from __future__ import annotations

import os
import re
import subprocess
import time

import httpx

from ingress.dev import free_port
from tests.test_cli import SWITCHBOARD

HI = {"model": "mock-echo", "messages": [{"role": "user", "content": "Hello"}]}


def test_the_dev_key_serves_inference_and_its_orgs_admin_api(redis_url: str) -> None:
    port = free_port()
    process = subprocess.Popen([SWITCHBOARD, "dev", "--port", str(port)],
                               env={**os.environ, "REDIS_URL": redis_url},
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert process.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 30
        while not any(line.startswith("What it used") for line in lines):
            assert time.monotonic() < deadline and process.poll() is None, lines
            lines.append(process.stdout.readline())
        at = next(i for i, line in enumerate(lines) if line.startswith("Development key"))
        key = lines[at + 1].strip()
        assert re.fullmatch(r"sb-[\w-]+", key)
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
    finally:
        process.terminate()
        process.wait(timeout=30)
