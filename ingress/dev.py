"""`make run`: a whole gateway in one process, with a Redis it finds or starts.

Redis: REDIS_URL if set, else 127.0.0.1:6379 if it answers, else a private
redis-server for this session (under .switchboard/), stopped on exit.
The development key is kept in .switchboard/dev-key (mode 0600) and reused by the next
start while Redis still knows it (a private redis-server forgets it: a new one is made).
A port in use is one line naming it and how to choose another, before anything starts.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from schemas.config import Config, ConfigError, load_config
from workers.connection import RedisClient
from workers.tracing import check as check_tracing

if TYPE_CHECKING:
    pass

BUILT_IN = Path(__file__).with_name("dev.toml")


def redis_answers(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if a Redis server answers PING at host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_private_redis(workdir: Path, port: int | None = None) -> tuple[subprocess.Popen[bytes], int]:
    """Start redis-server on a free localhost port, keeping nothing on disk."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError(
            "redis-server is not installed. Install it (Debian/Ubuntu: "
            "`sudo apt-get install -y redis-server`; macOS: `brew install redis`) "
            "or set REDIS_URL to a Redis you have.")
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir), "--daemonize", "no", "--loglevel", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not redis_answers("127.0.0.1", port):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"redis-server did not start on port {port}")
        time.sleep(0.05)
    return process, port


def _credentials_note(config: Config) -> str:
    """Banner lines naming the providers with no credential, and the slugs they leave."""
    from workers.service import missing_credentials

    lines = []
    for name, source in missing_credentials(config, list(config.providers)).items():
        slugs = [m.slug for m in config.models if any(r.provider == name for r in m.routes)]
        lines.append(f"Note: provider {name!r} has no credential (set {source}); its routes "
                     f"fail and fail over ({', '.join(slugs) or 'no model'})")
    return "".join(line + "\n" for line in lines)


def _banner(port: int, secret: str, note: str = "") -> str:
    base = f"http://127.0.0.1:{port}"
    return note + f"""
Switchboard is running on {base}  (Ctrl-C stops it)
Development key (an admin of org "dev": inference, and its org's /v1/admin API):
{secret}

The console (sign in with that key): {base}/console

Try it:
  curl {base}/v1/chat/completions \\
    -H "Authorization: Bearer {secret}" -H "Content-Type: application/json" \\
    -d '{{"model": "mock-echo", "messages": [{{"role": "user", "content": "Hello, Switchboard"}}]}}'

Or with the OpenAI SDK:
  from openai import OpenAI
  client = OpenAI(base_url="{base}/v1", api_key="{secret}")
  print(client.chat.completions.create(model="mock-echo",
        messages=[{{"role": "user", "content": "Hello"}}]).choices[0].message.content)

What it used, and the request log:
  curl "{base}/v1/admin/usage?group_by=model" -H "Authorization: Bearer {secret}"
  curl "{base}/v1/admin/requests?limit=5" -H "Authorization: Bearer {secret}"
"""


DEV_ORG = "dev"
KEY_FILE = "dev-key"


def port_taken(host: str, port: int) -> bool:
    """Whether something already listens on host:port (0: any free port, never taken)."""
    if port == 0:
        return False
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        # As the server binds: a port left in TIME_WAIT by our last run is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def _port_message(host: str, port: int) -> str:
    other = port + 1
    return (f"switchboard: port {port} on {host} is taken (another `make run`?); choose "
            f"another: `make run PORT={other}` or `switchboard dev --port {other}`")


async def dev_key(redis: RedisClient, state: Path) -> str:
    """The development key: the one saved in `state`/dev-key if Redis still takes it as an
    admin of org `dev`, else a new one, saved there (mode 0600) for the next start."""
    from ingress.keys import KeyStore
    from schemas.errors import GatewayError

    keys = KeyStore(redis, cache_s=0)
    path = state / KEY_FILE
    try:
        saved = path.read_text().strip()
    except OSError:
        saved = ""
    if saved:
        try:
            who = await keys.authenticate(saved)
            if who.org == DEV_ORG and who.role == "admin":
                return saved
        except GatewayError:
            pass  # revoked, or a Redis that never saw it: mint a new one
    _, secret = await keys.create(DEV_ORG, "default", name="make run", role="admin")
    # Written through a 0600 descriptor: the secret is never readable by others, not even
    # for a moment; the old file (if any) is replaced whole.
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secret + "\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return secret


async def _serve_all(config: Config, host: str, port: int) -> None:
    from ingress.server import run_ingress
    from workers.connection import connect
    from workers.service import run_workers

    async with connect(config.redis_url) as redis:
        secret = await dev_key(redis, _state_dir())
    async with trio.open_nursery() as nursery:
        await nursery.start(run_workers, config)
        binds = await nursery.start(run_ingress, config, host, port)
        bound_port = int(binds[0].rsplit(":", 1)[1])
        print(_banner(bound_port, secret, _credentials_note(config)), flush=True)


def run_dev(config_path: str | None, host: str, port: int) -> int:
    """Find or start Redis, then run ingress and workers until Ctrl-C. 1 when the port
    is taken (one line says so), 2 for a config or Redis that cannot be used."""
    if port_taken(host, port):
        print(_port_message(host, port), file=sys.stderr)
        return 1
    env = dict(os.environ)
    redis_process = None
    if not env.get("REDIS_URL"):
        if redis_answers("127.0.0.1", 6379):
            env["REDIS_URL"] = "redis://127.0.0.1:6379/0"
            print("Using the Redis on 127.0.0.1:6379", file=sys.stderr)
        else:
            workdir = Path(tempfile.mkdtemp(prefix="redis-", dir=_state_dir()))
            try:
                redis_process, redis_port = start_private_redis(workdir)
            except RuntimeError as exc:
                print(f"switchboard: {exc}", file=sys.stderr)
                return 2
            env["REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
            print(f"Started a private redis-server on port {redis_port}", file=sys.stderr)
    try:
        config = load_config(config_path or BUILT_IN, env)
        check_tracing(config.tracing)
        trio.run(_serve_all, config, host, port)
    except ConfigError as exc:
        print(f"switchboard: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    except BaseExceptionGroup as group:
        # Taken between the check above and the bind: the same one line, not the group.
        if group.subgroup(lambda e: isinstance(e, OSError) and e.errno == errno.EADDRINUSE):
            print(_port_message(host, port), file=sys.stderr)
            return 1
        raise
    finally:
        if redis_process is not None:
            redis_process.terminate()
            redis_process.wait(timeout=10)
    return 0


def _state_dir() -> Path:
    path = Path(".switchboard")
    path.mkdir(exist_ok=True)
    return path
