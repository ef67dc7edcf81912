"""A fast fake OpenAI-compatible upstream for benchmarks: raw HTTP/1.1 on trio.

It answers `POST .../chat/completions` plain and streamed, in OpenAI's wire format:
a `chat.completion` JSON body, or `data: {chat.completion.chunk}` events ending in
`data: [DONE]`, with a usage-only chunk when `stream_options.include_usage` is true.
The answer has `--chunks` content pieces; there are no delays unless asked for.

It is deliberately cheap (no framework, no h11: a hand-written HTTP/1.1 loop with
keep-alive, Content-Length or chunked request bodies, chunked streamed responses)
so that it is not the bottleneck of a benchmark. It is not a general HTTP server.
`GET /stats` counts the completions served and the connections that carried them
(a client that reuses connections opens few).

With `--rpm N` it enforces a provider's rate limit as OpenAI does: a request beyond N
in the rolling `--window-s` (60 s; a true rolling window on its own clock, no buckets)
is answered 429 with OpenAI's error body, `Retry-After` and `retry-after-ms` (until the
oldest counted request leaves the window). `/stats` then also counts the 429s
(`throttled`) and the most requests served in any one window (`max_in_window`).

    .venv/bin/python bench/fast_upstream.py --port 9999 --chunks 16
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import math
import sys
import time
from dataclasses import dataclass
from typing import Any

import trio

MAX_HEAD = 64 * 1024
MAX_BODY = 32 * 1024 * 1024
WORDS = "The quick brown fox jumps over the lazy dog while the gateway relays every token".split()


@dataclass(frozen=True)
class Settings:
    chunks: int = 8
    latency_s: float = 0.0  # before the response starts
    chunk_delay_s: float = 0.0  # between streamed chunks
    api_key: str | None = None  # when set, `Authorization: Bearer <api_key>` is required
    rpm: int | None = None  # requests per rolling `window_s`; beyond it, 429
    window_s: float = 60.0


class BadRequest(Exception):
    """The bytes on the connection are not an HTTP/1.1 request this server reads."""


class Answer:
    """The pre-serialized pieces of one answer of `chunks` content pieces."""

    def __init__(self, chunks: int) -> None:
        pieces = [WORDS[i % len(WORDS)] if i == 0 else " " + WORDS[i % len(WORDS)]
                  for i in range(chunks)]
        self.text_json = json.dumps("".join(pieces))
        self.completion_tokens = chunks
        self.deltas = [json.dumps({"role": "assistant", "content": p} if i == 0 else {"content": p},
                                  separators=(",", ":"))
                       for i, p in enumerate(pieces)]


_ids = itertools.count(1)
# Served chat completions, and connections that carried at least one (GET /stats);
# with --rpm also the 429s and the most served in one rolling window.
STATS = {"requests": 0, "connections": 0, "throttled": 0, "max_in_window": 0}
SERVED: collections.deque[float] = collections.deque()  # arrival times within the window


def _throttle(settings: Settings) -> float | None:
    """With --rpm: None if this request may be served (and count it), else the seconds
    until the window has room."""
    if settings.rpm is None:
        return None
    now = time.monotonic()
    while SERVED and SERVED[0] <= now - settings.window_s:
        SERVED.popleft()
    if len(SERVED) >= settings.rpm:
        STATS["throttled"] += 1
        return SERVED[0] + settings.window_s - now
    SERVED.append(now)
    STATS["max_in_window"] = max(STATS["max_in_window"], len(SERVED))
    return None


def _usage(prompt: int, completion: int) -> str:
    return (f'{{"prompt_tokens":{prompt},"completion_tokens":{completion},'
            f'"total_tokens":{prompt + completion}}}')


def _prompt_tokens(request: dict[str, Any]) -> int:
    count = 0
    for message in request.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            count += len(content.split())
    return count


def _error(status: int, message: str, kind: str, code: str | None) -> tuple[int, bytes]:
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return status, json.dumps(body).encode()


REASONS = {200: b"OK", 400: b"Bad Request", 401: b"Unauthorized", 404: b"Not Found",
           405: b"Method Not Allowed", 413: b"Payload Too Large", 429: b"Too Many Requests"}


def _head(status: int, headers: list[tuple[bytes, bytes]]) -> bytes:
    lines = [b"HTTP/1.1 %d %s" % (status, REASONS.get(status, b"Unknown"))]
    lines += [name + b": " + value for name, value in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _json_response(status: int, body: bytes, keep_alive: bool,
                   extra: list[tuple[bytes, bytes]] | None = None) -> bytes:
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)),
               *(extra or [])]
    if not keep_alive:
        headers.append((b"connection", b"close"))
    return _head(status, headers) + body


class Connection:
    """One client connection: read requests in a loop, answer each in order."""

    def __init__(self, stream: trio.SocketStream, settings: Settings, answer: Answer) -> None:
        self.stream = stream
        self.settings = settings
        self.answer = answer
        self.buffer = bytearray()
        self.counted = False

    async def _fill(self) -> bool:
        data = await self.stream.receive_some(65536)
        if not data:
            return False
        self.buffer += data
        return True

    async def _read_until(self, marker: bytes, limit: int) -> bytes | None:
        """Bytes up to and including `marker`; None on a clean EOF before any byte."""
        start = 0
        while True:
            end = self.buffer.find(marker, start)
            if end != -1:
                end += len(marker)
                out = bytes(self.buffer[:end])
                del self.buffer[:end]
                return out
            if len(self.buffer) > limit:
                raise BadRequest("header section too large")
            start = max(0, len(self.buffer) - len(marker) + 1)
            if not await self._fill():
                if self.buffer:
                    raise BadRequest("connection closed mid-request")
                return None

    async def _read_exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            if not await self._fill():
                raise BadRequest("connection closed mid-body")
        out = bytes(self.buffer[:size])
        del self.buffer[:size]
        return out

    async def _read_chunked(self) -> bytes:
        body = bytearray()
        while True:
            line = await self._read_until(b"\r\n", MAX_HEAD)
            if line is None:
                raise BadRequest("connection closed mid-body")
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError as exc:
                raise BadRequest("bad chunk size") from exc
            if size == 0:
                while (await self._read_until(b"\r\n", MAX_HEAD)) not in (b"\r\n", None):
                    pass  # trailers
                return bytes(body)
            body += await self._read_exactly(size)
            await self._read_exactly(2)
            if len(body) > MAX_BODY:
                raise BadRequest("body too large")

    async def serve(self) -> None:
        try:
            while True:
                head = await self._read_until(b"\r\n\r\n", MAX_HEAD)
                if head is None:
                    return
                lines = head[:-4].split(b"\r\n")
                try:
                    method, target, version = lines[0].split(b" ", 2)
                except ValueError as exc:
                    raise BadRequest("bad request line") from exc
                headers: dict[bytes, bytes] = {}
                for line in lines[1:]:
                    name, sep, value = line.partition(b":")
                    if not sep:
                        raise BadRequest("bad header line")
                    headers[name.strip().lower()] = value.strip()
                if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
                    body = await self._read_chunked()
                else:
                    try:
                        length = int(headers.get(b"content-length", b"0") or b"0")
                    except ValueError as exc:
                        raise BadRequest("bad content-length") from exc
                    if length > MAX_BODY:
                        raise BadRequest("body too large")
                    body = await self._read_exactly(length)
                connection = headers.get(b"connection", b"").lower()
                keep_alive = connection != b"close" and not (version == b"HTTP/1.0"
                                                             and connection != b"keep-alive")
                await self._respond(method, target.split(b"?", 1)[0], headers, body, keep_alive)
                if not keep_alive:
                    return
        except BadRequest as exc:
            status, body = _error(400, f"bad request: {exc}", "invalid_request_error", None)
            try:
                await self.stream.send_all(_json_response(status, body, False))
            except trio.BrokenResourceError:
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away
        finally:
            await trio.aclose_forcefully(self.stream)

    async def _respond(self, method: bytes, path: bytes, headers: dict[bytes, bytes], body: bytes,
                       keep_alive: bool) -> None:
        if path in (b"/health", b"/healthz"):
            await self.stream.send_all(_json_response(200, b'{"status":"ok"}', keep_alive))
            return
        if path == b"/stats":
            await self.stream.send_all(_json_response(200, json.dumps(STATS).encode(), keep_alive))
            return
        if not path.endswith(b"/chat/completions"):
            status, payload = _error(404, "unknown path", "invalid_request_error", "not_found")
            await self.stream.send_all(_json_response(status, payload, keep_alive))
            return
        if method != b"POST":
            status, payload = _error(405, "use POST", "invalid_request_error", "method_not_allowed")
            await self.stream.send_all(_json_response(status, payload, keep_alive))
            return
        key = self.settings.api_key
        if key is not None and headers.get(b"authorization", b"") != b"Bearer " + key.encode():
            status, payload = _error(401, "Incorrect API key provided.", "invalid_request_error",
                                     "invalid_api_key")
            await self.stream.send_all(_json_response(status, payload, keep_alive))
            return
        try:
            request = json.loads(body)
            if not isinstance(request, dict):
                raise ValueError("not an object")
        except ValueError:
            status, payload = _error(400, "We could not parse the JSON body of your request.",
                                     "invalid_request_error", None)
            await self.stream.send_all(_json_response(status, payload, keep_alive))
            return
        wait = _throttle(self.settings)
        if wait is not None:
            status, payload = _error(429, "Rate limit reached for requests", "requests",
                                     "rate_limit_exceeded")
            await self.stream.send_all(_json_response(status, payload, keep_alive, [
                (b"retry-after", b"%d" % math.ceil(wait)),
                (b"retry-after-ms", b"%d" % math.ceil(wait * 1000))]))
            return
        STATS["requests"] += 1
        if not self.counted:
            self.counted = True
            STATS["connections"] += 1
        if self.settings.latency_s:
            await trio.sleep(self.settings.latency_s)
        model = json.dumps(request.get("model") or "fast-upstream")
        ident = f"chatcmpl-bench{next(_ids):x}"
        created = int(time.time())
        prompt = _prompt_tokens(request)
        answer = self.answer
        if not request.get("stream"):
            payload = (
                f'{{"id":"{ident}","object":"chat.completion","created":{created},"model":{model},'
                f'"system_fingerprint":"fp_bench","choices":[{{"index":0,"message":{{"role":"assistant",'
                f'"content":{answer.text_json},"refusal":null}},"logprobs":null,"finish_reason":"stop"}}],'
                f'"usage":{_usage(prompt, answer.completion_tokens)}}}').encode()
            await self.stream.send_all(_json_response(200, payload, keep_alive))
            return
        options = request.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        await self._stream(ident, created, model, prompt, include_usage, keep_alive)

    async def _stream(self, ident: str, created: int, model: str, prompt: int, include_usage: bool,
                      keep_alive: bool) -> None:
        headers = [(b"content-type", b"text/event-stream; charset=utf-8"),
                   (b"cache-control", b"no-cache"), (b"transfer-encoding", b"chunked")]
        if not keep_alive:
            headers.append((b"connection", b"close"))
        base = (f'data: {{"id":"{ident}","object":"chat.completion.chunk","created":{created},'
                f'"model":{model},"system_fingerprint":"fp_bench",')
        tail = ',"usage":null}\n\n' if include_usage else "}\n\n"

        def chunk(choices: str, end: str = tail) -> bytes:
            event = (base + '"choices":' + choices + end).encode()
            return b"%x\r\n%s\r\n" % (len(event), event)

        await self.stream.send_all(_head(200, headers))
        delay = self.settings.chunk_delay_s
        for i, delta in enumerate(self.answer.deltas):
            if i and delay:
                await trio.sleep(delay)
            await self.stream.send_all(chunk(
                f'[{{"index":0,"delta":{delta},"logprobs":null,"finish_reason":null}}]'))
        last = chunk('[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}]')
        if include_usage:
            last += chunk("[]", f',"usage":{_usage(prompt, self.answer.completion_tokens)}}}\n\n')
        done = b"data: [DONE]\n\n"
        await self.stream.send_all(last + b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done))


async def serve(settings: Settings, host: str = "127.0.0.1", port: int = 0, *,
                task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve until cancelled; `started(port)` once listening."""
    answer = Answer(settings.chunks)

    async def handler(stream: trio.SocketStream) -> None:
        await Connection(stream, settings, answer).serve()

    listeners = await trio.open_tcp_listeners(port, host=host, backlog=1024)
    bound = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handler, listeners)
        task_status.started(bound)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    parser.add_argument("--chunks", type=int, default=8, help="content chunks per answer")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay before answering")
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0, help="delay between chunks")
    parser.add_argument("--api-key", default=None, help="require this bearer token")
    parser.add_argument("--rpm", type=int, default=None,
                        help="answer 429 beyond this many requests per rolling window")
    parser.add_argument("--window-s", type=float, default=60.0, help="the --rpm window")
    args = parser.parse_args(argv)
    if args.chunks < 1:
        parser.error("--chunks must be at least 1")
    if (args.rpm is not None and args.rpm < 1) or args.window_s <= 0:
        parser.error("--rpm and --window-s must be positive")
    settings = Settings(args.chunks, args.latency_ms / 1000, args.chunk_delay_ms / 1000, args.api_key,
                        args.rpm, args.window_s)

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve, settings, args.host, args.port)
            print(f"fast_upstream listening on http://{args.host}:{port}/v1", flush=True)

    try:
        trio.run(run)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
