"""The HTTP call every adapter makes, through one shared httpx client per provider.

    Upstream.post(url, body)          -> the 200 body
    Upstream.events(url, body)        -> the 200 response's Server-Sent Events
    Upstream.chunks(url, body)        -> the 200 response's raw bytes (binary event streams)

`auth` is applied to every request just before it is sent, so a kind may sign each
request (AWS SigV4) instead of sending fixed headers. A non-200 answer becomes
`failure(status, body)` (the kind knows its error shape) carrying the wait the upstream
asked for (`retry_after`, from `retry-after-ms` or `Retry-After`); transport errors become
`transport_failure`; a streamed response is always closed.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Mapping
from contextlib import aclosing, asynccontextmanager, contextmanager
from contextvars import ContextVar
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import cast

import httpx2

from workers.providers._base import UpstreamFailure, transport_failure
from workers.providers._sse import Event, iter_events

Auth = Callable[[httpx2.Request], None]
# The trace headers of the upstream call in progress (`traceparent`, `tracestate`), set by
# the runner around each attempt: every kind's requests carry them without each adapter
# threading them through.
_trace_headers: ContextVar[dict[str, str] | None] = ContextVar("trace_headers", default=None)


@contextmanager
def traced(headers: dict[str, str]) -> Iterator[None]:
    """Send `headers` (a trace context's child) with every upstream request made inside."""
    token = _trace_headers.set(headers)
    try:
        yield
    finally:
        _trace_headers.reset(token)


def retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """The seconds an answer asks the client to wait: `retry-after-ms` (OpenAI's, in
    milliseconds), else `Retry-After` as seconds or an HTTP date (RFC 9110 10.2.3);
    None when neither is there or readable. A date in the past is 0."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if not value:
            continue
        try:
            seconds = float(value) * scale
        except ValueError:
            if scale != 1.0:
                continue
            try:
                when = parsedate_to_datetime(value)
            except (TypeError, ValueError, IndexError):
                continue
            if when.tzinfo is None:  # "-0000": GMT all the same
                when = when.replace(tzinfo=UTC)
            seconds = when.timestamp() - (time.time() if now is None else now)
        if math.isfinite(seconds):
            return max(seconds, 0.0)
    return None


def _failed(failure: UpstreamFailure, response: httpx2.Response) -> UpstreamFailure:
    failure.retry_after = retry_after(response.headers)
    return failure


def header_auth(headers: dict[str, str]) -> Auth:
    """An `auth` hook that sets fixed headers (a bearer token, an API key)."""

    def apply(request: httpx2.Request) -> None:
        request.headers.update(headers)

    return apply


def _no_auth(request: httpx2.Request) -> None:
    pass


class Upstream:
    """POST to one provider: a JSON body back, or a stream of events or bytes."""

    def __init__(self, provider: str, http: httpx2.AsyncClient,
                 failure: Callable[[int, bytes], UpstreamFailure], *, auth: Auth | None = None,
                 headers: dict[str, str] | None = None) -> None:
        self.provider = provider
        self.http = http
        self.failure = failure
        self.auth = auth or _no_auth
        self.headers = {"content-type": "application/json", **(headers or {})}

    def _request(self, url: str, body: bytes, extra_headers: dict[str, str] | None,
                 params: dict[str, str] | None) -> httpx2.Request:
        headers = {**self.headers, **extra_headers} if extra_headers else self.headers
        if trace := _trace_headers.get():
            headers = {**headers, **trace}
        request = self.http.build_request("POST", url, content=body, params=params, headers=headers)
        self.auth(request)
        return request

    async def post(self, url: str, body: bytes, extra_headers: dict[str, str] | None = None,
                   params: dict[str, str] | None = None) -> bytes:
        """POST and return the 200 body."""
        try:
            response = await self.http.send(self._request(url, body, extra_headers, params))
        except httpx2.HTTPError as exc:
            raise transport_failure(self.provider, exc) from exc
        if response.status_code != 200:
            raise _failed(self.failure(response.status_code, response.content), response)
        return response.content

    @asynccontextmanager
    async def chunks(self, url: str, body: bytes, extra_headers: dict[str, str] | None = None,
                     params: dict[str, str] | None = None) -> AsyncIterator[AsyncIterator[bytes]]:
        """POST and yield the 200 response's body as it arrives; transport errors while
        reading become UpstreamFailure, and the response is closed on the way out."""
        try:
            response = await self.http.send(self._request(url, body, extra_headers, params),
                                            stream=True)
        except httpx2.HTTPError as exc:
            raise transport_failure(self.provider, exc) from exc
        try:
            if response.status_code != 200:
                raise _failed(self.failure(response.status_code, await response.aread()),
                              response)
            yield response.aiter_bytes()
        except httpx2.HTTPError as exc:
            raise transport_failure(self.provider, exc) from exc
        finally:
            await response.aclose()

    @asynccontextmanager
    async def events(self, url: str, body: bytes, extra_headers: dict[str, str] | None = None,
                     params: dict[str, str] | None = None) -> AsyncIterator[AsyncIterator[Event]]:
        """POST and yield the 200 response's SSE events (see `chunks`)."""
        async with self.chunks(url, body, extra_headers, params) as chunks:
            # iter_events is an async generator: closed here, not left to the garbage collector.
            events = cast(AsyncGenerator[Event, None], iter_events(chunks))
            async with aclosing(events):
                yield events
