"""How long uploading and creating a large batch takes, and whether the ingress keeps
answering meanwhile.

One ingress (no workers) on a private redis-server, a mock provider; a file of `--lines`
chat lines (default 50,000, OpenAI's maximum) is uploaded with the official openai SDK
(`files.create`: checked line by line) and a batch created from it (`batches.create`:
checked again, a job built per line, stored). While each runs, `GET /healthz` is polled
without pause; the slowest answer is printed as the event loop's longest stall.

    .venv/bin/python bench/batch_create.py --lines 50000 [--pad 3800]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import httpx
import openai
import trio

from ingress.dev import start_private_redis
from ingress.keys import KeyStore
from ingress.server import run_ingress
from schemas.config import parse_config
from workers.connection import connect


def _file(lines: int, pad: int) -> bytes:
    return b"".join(json.dumps({
        "custom_id": f"req-{n}", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": "echo", "max_tokens": 64,
                 "messages": [{"role": "system", "content": "You are terse." + " " * pad},
                              {"role": "user", "content": f"Summarise item {n} in a line."}]},
    }).encode() + b"\n" for n in range(lines))


async def _timed(what: str, base: str, run: object) -> None:
    stalls: list[float] = []
    done = trio.Event()

    async def poll() -> None:
        async with httpx.AsyncClient(base_url=base) as http:
            while not done.is_set():
                started = time.perf_counter()
                await http.get("/healthz")
                stalls.append(time.perf_counter() - started)

    async def call() -> None:
        started = time.perf_counter()
        await run  # type: ignore[misc]
        print(f"{what}: {time.perf_counter() - started:.2f} s; /healthz answered "
              f"{len(stalls)} times meanwhile, slowest {max(stalls, default=0) * 1000:.0f} ms")
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(poll)
        nursery.start_soon(call)


async def main(lines: int, pad: int = 0) -> None:
    with tempfile.TemporaryDirectory() as workdir:
        process, port = start_private_redis(Path(workdir))
        try:
            url = f"redis://127.0.0.1:{port}/0"
            config = parse_config({
                "redis_url": url, "providers": {"local": {"kind": "mock"}},
                "models": [{"slug": "echo", "routes": [{"provider": "local", "model": "echo"}]}],
            }, "<bench>")
            async with connect(url) as redis, trio.open_nursery() as nursery:
                _, secret = await KeyStore(redis).create("bench", "p", "", "bench")
                binds = await nursery.start(run_ingress, config, "127.0.0.1", 0)
                # The client runs in a thread: its own work (building a 200 MB upload) must
                # not count as the ingress's stalls.
                client = openai.OpenAI(base_url=binds[0] + "/v1", api_key=secret,
                                       max_retries=0, timeout=600)
                data = _file(lines, pad)
                print(f"{lines} lines, {len(data) / 1e6:.1f} MB")
                uploaded: list[str] = []

                async def upload() -> None:
                    made = await trio.to_thread.run_sync(
                        lambda: client.files.create(file=("in.jsonl", data), purpose="batch"))
                    uploaded.append(made.id)

                await _timed("files.create", binds[0], upload())

                async def create() -> None:
                    batch = await trio.to_thread.run_sync(lambda: client.batches.create(
                        input_file_id=uploaded[0], endpoint="/v1/chat/completions",
                        completion_window="24h"))
                    assert batch.status == "validating", batch.errors
                    assert batch.request_counts is not None
                    assert batch.request_counts.total == lines

                await _timed("batches.create", binds[0], create())
                nursery.cancel_scope.cancel()
        finally:
            process.terminate()
            process.wait(timeout=10)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=50_000)
    parser.add_argument("--pad", type=int, default=0,
                        help="characters added to each line (3,800: a ~200 MB file)")
    arguments = parser.parse_args()
    trio.run(main, arguments.lines, arguments.pad)
