"""Many slow streams held at once through one worker: every one ends whole.

The worker keeps one upstream connection per running stream. With httpx 0.28's pool
(httpcore 1.0.9) every response that ended scanned the pool once per idle connection
(`len([c.is_idle() for c in connections])` inside the loop over connections), so when
hundreds of held streams ended together the worker's event loop stalled for seconds:
its Redis calls timed out and most streams ended with `service_unavailable` or
`worker_lost` (bench/held.py: 630 and 303 of 1,000). The worker now calls upstream
with httpx2, whose pool does one pass per change.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import trio

from ingress.keys import KeyStore
from tests.fakes.openai_upstream import Behavior, FakeOpenAI
from tests.fleet import Fleet
from tests.test_reply_path import raw_exchange
from workers.connection import connect

STREAMS = 500
CHUNKS = ["one", " two", " three", " four"]


async def held_stream(address: tuple[str, int], request: bytes) -> str:
    """One streamed completion on a raw socket (HTTP/1.0: the server closes when done):
    "done" when it ended with every chunk and `[DONE]`, else what it ended with."""
    code, body = await raw_exchange(address, request)
    status = str(code)
    events = [line[6:] for line in body.decode().split("\n") if line.startswith("data: ")]
    if status != "200":
        return f"HTTP {status} {json.loads(body)['error']['code']}"
    if not events or events[-1] != "[DONE]":
        return "error event " + (json.loads(events[-1]).get("error", {}).get("code", "?")
                                 if events else "none")
    text = "".join(choice["delta"].get("content") or ""
                   for event in events[:-1] for choice in json.loads(event)["choices"])
    return "done" if text == "".join(CHUNKS) else f"garbled: {text!r}"


async def test_hundreds_of_slow_streams_held_at_once_by_one_worker_all_end_whole(
        redis_url: str, fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    """500 streams, each 4 chunks 1.5 s apart, opened over 2.5 s through an ingress and a
    worker process (as `switchboard serve` and `worker` run), so one worker holds them all
    at once and they end close together: every one ends with all its chunks and `[DONE]`
    (on httpx 0.28 most ended with an error: the worker's loop stalled)."""
    fake_openai.when("hold", *[Behavior(chunks=CHUNKS, chunk_delay_s=1.5)] * STREAMS)
    async with connect(redis_url) as redis:
        _, secret = await KeyStore(redis).create("acme", "proj", "", "held")
    fleet = Fleet(tmp_path, f"""
[providers.up]
kind = "openai"
base_url = "{fake_openai.base_url}"
api_key_env = "HELD_UP_KEY"
max_concurrency = {STREAMS}
max_queue = {4 * STREAMS}

[[models]]
slug = "held"
routes = [{{ provider = "up", model = "gpt-4o-mini" }}]

[limits]
request_timeout_s = 60
""", redis_url, env={"HELD_UP_KEY": "sk-upstream"})
    body = json.dumps({"model": "held", "stream": True,
                       "messages": [{"role": "user", "content": "hold"}]}).encode()
    request = (b"POST /v1/chat/completions HTTP/1.0\r\nhost: gateway\r\n"
               b"authorization: Bearer " + secret.encode() + b"\r\n"
               b"content-type: application/json\r\ncontent-length: "
               + str(len(body)).encode() + b"\r\n\r\n" + body)
    outcomes: Counter[str] = Counter()
    try:
        base = await fleet.serve("in")
        await fleet.worker("w")
        host, port = base.removeprefix("http://").split(":")

        async def one() -> None:
            outcomes[await held_stream((host, int(port)), request)] += 1

        with trio.fail_after(120):
            async with trio.open_nursery() as streams:
                for _ in range(STREAMS):
                    streams.start_soon(one)
                    await trio.sleep(2.5 / STREAMS)
    finally:
        fleet.stop_all()
    assert outcomes == {"done": STREAMS}, (outcomes, fleet.log_text()[-3000:])
    assert len(fake_openai.requests) == STREAMS  # one upstream call each, none re-run
