"""The load generator: keep-alive connections under trio sending checked chat completions.

`Load` runs one scenario against one `Target` (a path: "direct", "switchboard",
"litellm" or "portkey") as a closed loop of callers, each on its own keep-alive
connection, and validates every answer: the plain body's content, or the streamed
events (content chunks + a finish chunk + a usage chunk + `[DONE]`, nothing after it). It stops
issuing requests after the duration cap and gives in-flight ones GRACE_S more.
`smoke` sends one checked request of each kind before any load; `percentile` and
`ms` turn the latencies into the numbers of a `Result`.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import h11
import msgspec
import trio

from wire import Connection

PROMPT = "Say hello to the benchmark"
WORDS = "The quick brown fox jumps over the lazy dog while the gateway relays every token".split()
GRACE_S = 5.0  # after the duration cap, in-flight requests get this long before they are cut
REQUEST_TIMEOUT_S = 30.0
FAILURES = (OSError, h11.ProtocolError, trio.TooSlowError)  # (ConnectionResetError is an OSError)


@dataclass
class Result:
    """One (scenario, path) measurement."""

    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    cut_off: int = 0  # in flight when the duration cap + grace ran out
    wall_s: float = 0.0
    rps: float = 0.0
    p50_ms: float = 0.0
    p90_ms: float = 0.0
    p99_ms: float = 0.0
    ttfc_p50_ms: float | None = None
    ttfc_p99_ms: float | None = None
    cpu_ms_per_request: dict[str, float] = field(default_factory=dict)
    redis_calls_per_request: dict[str, float] = field(default_factory=dict)
    upstream_connections: int = 0  # new upstream connections that carried measured requests
    upstream_requests: int = 0


@dataclass(frozen=True)
class Target:
    name: str  # "direct" | "switchboard" | "litellm" | "portkey"
    url: str
    headers: dict[str, str]
    model: str


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (q in 0..100)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


class Load:
    """Runs one scenario against one target: a closed loop of callers.

    Caller i uses `connections[i]`, one keep-alive connection of its own (bench/wire.py).
    """

    def __init__(self, connections: list[Connection], target: Target, stream: bool,
                 chunks: int) -> None:
        self.connections = connections
        self.target = target
        self.stream = stream
        self.chunks = chunks
        body: dict[str, Any] = {"model": target.model,
                                "messages": [{"role": "user", "content": PROMPT}]}
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        self.body = msgspec.json.encode(body)
        self.expected_text = "".join(WORDS[i % len(WORDS)] if i == 0 else " " + WORDS[i % len(WORDS)]
                                     for i in range(chunks))

    async def run(self, requests: int, concurrency: int, cap_s: float) -> tuple[
            list[float], list[float], Counter[str], int, float]:
        latencies: list[float] = []
        firsts: list[float] = []
        errors: Counter[str] = Counter()
        issued = 0
        in_flight = 0
        started = time.perf_counter()
        stop_issuing = started + cap_s

        async def caller(connection: Connection) -> None:
            nonlocal issued, in_flight
            while issued < requests and time.perf_counter() < stop_issuing:
                issued += 1
                in_flight += 1
                t0 = time.perf_counter()
                try:
                    with trio.fail_after(REQUEST_TIMEOUT_S):
                        problem, first = await (self._stream_once(connection, t0) if self.stream
                                                else self._plain_once(connection))
                except FAILURES as exc:
                    problem, first = type(exc).__name__, None
                finally:
                    in_flight -= 1
                if problem:
                    errors[problem] += 1
                else:
                    latencies.append(time.perf_counter() - t0)
                    if first is not None:
                        firsts.append(first - t0)

        with trio.move_on_after(cap_s + GRACE_S):
            async with trio.open_nursery() as nursery:
                for connection in self.connections[:concurrency]:
                    nursery.start_soon(caller, connection)
        wall = time.perf_counter() - started
        return latencies, firsts, errors, in_flight, wall

    async def _plain_once(self, connection: Connection) -> tuple[str | None, None]:
        status = await connection.post(self.body)
        content = await connection.body()
        if status != 200:
            return f"HTTP {status}", None
        try:
            answer = msgspec.json.decode(content)
            text = answer["choices"][0]["message"]["content"]
        except (msgspec.DecodeError, KeyError, IndexError, TypeError):
            return "malformed body", None
        if text != self.expected_text:
            return "wrong content", None
        return None, None

    async def _stream_once(self, connection: Connection,
                           t0: float) -> tuple[str | None, float | None]:
        first: float | None = None
        events = 0
        done = False
        parts: list[str] = []
        status = await connection.post(self.body)
        if status != 200:
            await connection.body()
            return f"HTTP {status}", None
        pending = b""
        async for received in connection.body_parts():
            pending += received
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if first is None:
                    first = time.perf_counter()
                if done:
                    return "data after [DONE]", None
                if data == b"[DONE]":
                    done = True
                    continue
                try:
                    chunk = msgspec.json.decode(data)
                except msgspec.DecodeError:
                    return "malformed chunk", None
                if "error" in chunk:
                    return "error event in stream", None
                events += 1
                for choice in chunk.get("choices") or ():
                    parts.append((choice.get("delta") or {}).get("content") or "")
        if not done:
            return "stream ended without [DONE]", None
        if events != self.chunks + 2:  # content chunks + finish chunk + usage chunk
            return f"stream had {events} chunks, not {self.chunks + 2}", None
        if "".join(parts) != self.expected_text:
            return "wrong stream content", None
        return None, first


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2) if not math.isnan(seconds) else math.nan


def smoke(target: Target, chunks: int) -> None:
    """One plain and one streamed request, checked, before any load."""

    async def check() -> None:
        connection = Connection(target.url, target.headers)
        try:
            for stream in (False, True):
                load = Load([connection], target, stream, chunks)
                _, _, errors, _, _ = await load.run(1, 1, 10)
                if errors:
                    raise RuntimeError(f"{target.name}: the first {'streamed' if stream else 'plain'} "
                                       f"request failed: {dict(errors)}")
        finally:
            await connection.aclose()

    trio.run(check)
