"""The peer gateways that bench/overhead.py measures beside Switchboard: install and run.

    .venv/bin/python bench/peers.py install   # both, into bench/.peers/ (git ignores it)
    .venv/bin/python bench/peers.py paths     # where they are, and their versions

Installing is idempotent: a peer whose pinned versions are already in place is left as
it is. The peers never go into the project's venv or lock file:

- LiteLLM proxy: the PyPI package `litellm[proxy]` (LITELLM_VERSION) in its own venv,
  bench/.peers/litellm-venv. It is started by procs.start_litellm.
- Portkey's gateway: the npm package `@portkey-ai/gateway` (PORTKEY_VERSION) in
  bench/.peers/portkey/, from a package.json written here whose npm `overrides` pin
  `hono` and `@hono/node-server` to the versions of the gateway's own lock file (with
  newer ones its streaming fails with `TypeError: immutable`). Install scripts are not
  run.

Running Portkey (`start_portkey`): the machine's `node` runs the package's `bin`,
build/start-server.js, with `--port=N` (its only listening option) and `--headless`
(no web console, no log stream to it). That script listens with no host, which Node
binds to every interface, so bench/node_loopback.cjs is preloaded to bind 127.0.0.1.
The gateway is a proxy configured per request: the target's headers name the provider
(`x-portkey-provider: openai`), the upstream's base URL (`x-portkey-custom-host`) and
the upstream key (`Authorization`). It has no telemetry of its own; the environment is
stripped of proxy and Redis variables all the same.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from ingress.dev import free_port

from load import Target
from procs import HOST, PROXY_VARS, ROOT, UPSTREAM_KEY, UPSTREAM_MODEL, Processes, http_ok, wait_until

PEERS_DIR = ROOT / "bench" / ".peers"
LITELLM_VERSION = "1.106.12"
LITELLM_REQUIREMENT = f"litellm[proxy]=={LITELLM_VERSION}"
LITELLM_VENV = PEERS_DIR / "litellm-venv"
LITELLM_EXECUTABLE = LITELLM_VENV / "bin" / "litellm"
PORTKEY_VERSION = "1.15.2"
PORTKEY_PINS = {"hono": "4.9.7", "@hono/node-server": "1.13.5"}
PORTKEY_DIR = PEERS_DIR / "portkey"
PORTKEY_PACKAGE = PORTKEY_DIR / "node_modules" / "@portkey-ai" / "gateway"
PORTKEY_SCRIPT = PORTKEY_PACKAGE / "build" / "start-server.js"
LOOPBACK_PRELOAD = Path(__file__).resolve().with_name("node_loopback.cjs")
PORTKEY_STARTUP_S = 60.0
INSTALL_TIMEOUT_S = 1800


# ---------------------------------------------------------------------------------------
# Installing


def installed_version(package_json: Path) -> str | None:
    """The "version" of an installed npm package, or None if it is not there."""
    try:
        return str(json.loads(package_json.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return None


def litellm_installed() -> bool:
    """True if the venv holds the pinned litellm with its proxy extra (the stamp says so)."""
    stamp = LITELLM_VENV / ".installed"
    return (LITELLM_EXECUTABLE.exists() and stamp.exists()
            and stamp.read_text().strip() == LITELLM_REQUIREMENT)


def install_litellm() -> None:
    """Create bench/.peers/litellm-venv and pip-install the pinned `litellm[proxy]`."""
    if litellm_installed():
        print(f"litellm {LITELLM_VERSION}: already installed in {LITELLM_VENV}")
        return
    print(f"Installing {LITELLM_REQUIREMENT} into {LITELLM_VENV} (a few minutes)", flush=True)
    if not (LITELLM_VENV / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
    pip = [str(LITELLM_VENV / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
    subprocess.run([*pip, "install", "--quiet", LITELLM_REQUIREMENT], check=True,
                   timeout=INSTALL_TIMEOUT_S, env=install_env())
    (LITELLM_VENV / ".installed").write_text(LITELLM_REQUIREMENT + "\n")


def portkey_package_json() -> str:
    """The package.json of bench/.peers/portkey: the pinned gateway and its pinned hono."""
    return json.dumps({
        "name": "switchboard-bench-portkey", "private": True,
        "description": "Written by bench/peers.py: Portkey's gateway for bench/overhead.py",
        "dependencies": {"@portkey-ai/gateway": PORTKEY_VERSION},
        "overrides": PORTKEY_PINS,
    }, indent=2) + "\n"


def portkey_installed() -> bool:
    """True if the pinned gateway and the pinned hono packages are in node_modules."""
    modules = PORTKEY_DIR / "node_modules"
    return (PORTKEY_SCRIPT.exists()
            and installed_version(PORTKEY_PACKAGE / "package.json") == PORTKEY_VERSION
            and all(installed_version(modules / name / "package.json") == version
                    for name, version in PORTKEY_PINS.items()))


def install_portkey() -> None:
    """Write bench/.peers/portkey/package.json and npm-install it (no install scripts)."""
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is not on PATH: install Node.js (20 or newer) first")
    manifest = PORTKEY_DIR / "package.json"
    if portkey_installed() and manifest.exists() and manifest.read_text() == portkey_package_json():
        print(f"@portkey-ai/gateway {PORTKEY_VERSION}: already installed in {PORTKEY_DIR}")
        return
    print(f"Installing @portkey-ai/gateway@{PORTKEY_VERSION} into {PORTKEY_DIR}", flush=True)
    PORTKEY_DIR.mkdir(parents=True, exist_ok=True)
    manifest.write_text(portkey_package_json())
    subprocess.run([npm, "install", "--no-audit", "--no-fund", "--ignore-scripts", "--omit=dev",
                    "--no-update-notifier"], check=True, cwd=PORTKEY_DIR,
                   timeout=INSTALL_TIMEOUT_S, env=install_env())
    if not portkey_installed():
        raise RuntimeError(f"npm install in {PORTKEY_DIR} did not give the pinned versions")


def install_env() -> dict[str, str]:
    """The installers' environment: ours, without npm's update check."""
    return {**os.environ, "npm_config_update_notifier": "false", "PIP_NO_INPUT": "1"}


# ---------------------------------------------------------------------------------------
# Running Portkey's gateway


def portkey_script(path: Path) -> Path:
    """The gateway's start script from `--portkey PATH`: the script itself, the package
    folder, or a folder with the package in node_modules (such as bench/.peers/portkey)."""
    for candidate in (path, path / "build" / "start-server.js",
                      path / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"):
        if candidate.is_file():
            return candidate.resolve()
    raise RuntimeError(f"--portkey {path}: no build/start-server.js of @portkey-ai/gateway there")


def portkey_version(script: Path) -> str:
    """The version in the package.json next to the gateway's build/ folder."""
    return installed_version(script.parent.parent / "package.json") or "?"


def portkey_env() -> dict[str, str]:
    """Node's environment for the gateway: no proxies, no Redis, production mode."""
    env = {k: v for k, v in os.environ.items()
           if k not in PROXY_VARS and not k.startswith(("REDIS_", "NODE_OPTIONS"))}
    env.update({"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
                "NODE_ENV": "production"})
    return env


def start_portkey(path: Path, processes: Processes) -> int:
    """Start the gateway under the machine's `node` (own process group); return its port."""
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("--portkey needs `node` on PATH")
    script = portkey_script(path)
    port = free_port()
    print(f"Starting Portkey's gateway ({script})", flush=True)
    processes.start("portkey", [node, "--require", str(LOOPBACK_PRELOAD), str(script),
                                f"--port={port}", "--headless"], portkey_env(), group=True)
    wait_until("Portkey's gateway", lambda: http_ok(f"http://{HOST}:{port}/"), processes,
               timeout=PORTKEY_STARTUP_S)
    return port


def portkey_target(port: int, upstream_base: str) -> Target:
    """The "portkey" path: the provider, the upstream and its key travel in headers."""
    return Target("portkey", f"http://{HOST}:{port}/v1/chat/completions",
                  {"authorization": f"Bearer {UPSTREAM_KEY}", "content-type": "application/json",
                   "x-portkey-provider": "openai", "x-portkey-custom-host": upstream_base},
                  UPSTREAM_MODEL)


def node_version() -> str:
    node = shutil.which("node")
    if node is None:
        return "?"
    done = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=10)
    return done.stdout.strip() or "?"


def log_findings(path: Path) -> list[str]:
    """Error lines in the gateway's (plain text) log."""
    if not path.exists():
        return []
    return [line.strip()[:160] for line in path.read_text(errors="replace").splitlines()
            if "error" in line.lower() or "unhandled" in line.lower()][:10]


# ---------------------------------------------------------------------------------------
# Command line


def installed_paths() -> tuple[Path, Path]:
    """(litellm executable, Portkey start script) of what `install` put in bench/.peers."""
    missing = [name for name, ok in (("LiteLLM", litellm_installed()), ("Portkey", portkey_installed()))
               if not ok]
    if missing:
        raise RuntimeError(f"{' and '.join(missing)} not installed in {PEERS_DIR}: "
                           "run `make bench-peers` (bench/peers.py install)")
    return LITELLM_EXECUTABLE, PORTKEY_SCRIPT


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["install", "paths"])
    args = parser.parse_args(argv)
    if args.command == "install":
        try:
            install_litellm()
            install_portkey()
        except (RuntimeError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            print(f"peers: {exc}", file=sys.stderr)
            return 1
        return 0
    print(f"litellm {LITELLM_VERSION}: {LITELLM_EXECUTABLE}"
          + ("" if litellm_installed() else "  (not installed)"))
    print(f"portkey {PORTKEY_VERSION}: {PORTKEY_SCRIPT}"
          + ("" if portkey_installed() else "  (not installed)")
          + f"  (hono {PORTKEY_PINS['hono']}, @hono/node-server {PORTKEY_PINS['@hono/node-server']},"
          f" node {node_version()})")
    return 0 if litellm_installed() and portkey_installed() else 1


if __name__ == "__main__":
    sys.exit(main())
