"""The folders tell the architecture, and a test keeps them from drifting back.

- ingress/ imports nothing from workers/ but the shared leaves (Redis connection, logs,
  signals, span export); only the CLI and the dev runner start both sides.
- workers/ never imports ingress/.
- The `switchboard serve` process loads no module that imports httpx(2) or runs the worker
  side of the job streams, whatever the modules are called.
- No source module is longer than one sitting's read.
"""

from __future__ import annotations

import ast
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from ingress.dev import free_port
from tests.conftest import RedisServer

ROOT = Path(__file__).resolve().parent.parent
LEAVES = {"workers", "workers.connection", "workers.logs", "workers.signals", "workers.tracing"}
STARTS_BOTH = {"ingress/cli.py", "ingress/dev.py"}
# Redis commands only the worker side of the streams sends (reading, claiming, acking jobs).
WORKER_SIDE = re.compile(r"XREADGROUP|XCLAIM|XAUTOCLAIM|XACK|xreadgroup|xclaim|xautoclaim|xack")
MAX_LINES = 400


def imported(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside functions."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def sources(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def test_ingress_imports_only_the_shared_leaves_of_workers() -> None:
    wrong = {}
    for path in sources("ingress"):
        if str(path.relative_to(ROOT)) in STARTS_BOTH:
            continue
        outside = {name for name in imported(path)
                   if name.split(".")[0] == "workers" and name not in LEAVES}
        if outside:
            wrong[str(path.relative_to(ROOT))] = sorted(outside)
    assert wrong == {}


def test_workers_and_schemas_never_import_ingress() -> None:
    wrong = {str(path.relative_to(ROOT)): sorted(n for n in imported(path) if n.startswith("ingress"))
             for path in [*sources("workers"), *sources("schemas")]}
    assert {path: names for path, names in wrong.items() if names} == {}


def test_the_shared_leaves_import_nothing_of_either_side() -> None:
    for leaf in LEAVES - {"workers"}:
        path = ROOT / (leaf.replace(".", "/") + ".py")
        assert {n for n in imported(path) if n.split(".")[0] in ("ingress", "workers")} == set()
        assert not WORKER_SIDE.search(path.read_text()), leaf


def test_no_source_module_is_longer_than_a_sitting() -> None:
    long = {str(p.relative_to(ROOT)): n for folder in ("schemas", "ingress", "workers")
            for p in sources(folder) if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_the_serve_process_loads_no_worker_machinery(redis_server: RedisServer, tmp_path: Path) -> None:
    config = tmp_path / "serve.toml"
    config.write_text('[providers.local]\nkind = "mock"\n'
                      '[[models]]\nslug = "echo"\nroutes = [{ provider = "local", model = "e" }]\n')
    port = free_port()
    env = {**os.environ, "REDIS_URL": redis_server.url}
    # -X importtime prints every module the process imports, as it imports it.
    log = (tmp_path / "imports.log").open("w")  # a file: a full pipe would stall the process
    process = subprocess.Popen(
        [sys.executable, "-X", "importtime", "-m", "ingress.cli", "serve", "--config", str(config),
         "--port", str(port), "--processes", "1"], env=env, stderr=log, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, "serve did not start"
            time.sleep(0.1)
        # A served request exercises the request path's imports too.
        assert httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json={}).status_code == 401
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        log.close()
    stderr = (tmp_path / "imports.log").read_text()
    loaded = {line.rsplit("|", 1)[1].strip() for line in stderr.splitlines()
              if line.startswith("import time:") and "|" in line}
    assert "ingress.server" in loaded and "ingress.app" in loaded  # the output was read
    assert not {m for m in loaded if m.split(".")[0] in ("httpx", "httpx2")}
    ours = {m for m in loaded if m.split(".")[0] in ("ingress", "workers", "schemas")}
    for module in ours:
        path = ROOT / module.replace(".", "/")
        source = (path / "__init__.py") if path.is_dir() else path.with_suffix(".py")
        text = source.read_text()
        assert "import httpx" not in text, module
        assert not WORKER_SIDE.search(text), f"{module} runs the worker side of the streams"
