"""Several connection pools behind one provider's client, so each pool stays small.

httpx2's pool walks all its connections on every request start and response end, and
asks each idle one whether its socket is readable (the server closed it): one `poll()`
system call per idle connection per walk. A worker holding thousands of streams to one
provider spent half its time in those walks (py-spy, bench/held.py at 2,500 streams per
worker); at 64 plain requests in flight, with a pool of 128, it made 39 `poll()` calls per
request (strace -c), 3.4 with pools of 8. Splitting the provider's `max_concurrency`
connections over pools of at most `POOL_SIZE`, each request on the least busy one, keeps
every walk short.
"""

from __future__ import annotations

import math
import ssl
from collections.abc import AsyncIterator

import httpx2

POOL_SIZE = 8  # connections per pool (see the module docstring)


class _Released(httpx2.AsyncByteStream):
    """A response body that gives its pool's slot back once, when it is closed."""

    def __init__(self, stream: httpx2.AsyncByteStream, pools: PooledTransport, index: int) -> None:
        self._stream = stream
        self._pools = pools
        self._index = index
        self._open = True

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._stream.__aiter__()  # the pool's own iterator: no layer per chunk

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            if self._open:
                self._open = False
                self._pools.in_flight[self._index] -= 1


class PooledTransport(httpx2.AsyncBaseTransport):
    """`connections` upstream connections in ceil(connections / pool_size) pools; each
    request goes to the pool with the fewest requests in flight."""

    def __init__(self, connections: int, *, verify: ssl.SSLContext,
                 pool_size: int = POOL_SIZE) -> None:
        count = max(1, math.ceil(connections / pool_size))
        size = math.ceil(connections / count)
        limits = httpx2.Limits(max_connections=size, max_keepalive_connections=size)
        self.pools = [httpx2.AsyncHTTPTransport(verify=verify, limits=limits)
                      for _ in range(count)]
        self.in_flight = [0] * count

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        """Send on the least busy pool; its slot is held until the response is closed."""
        index = min(range(len(self.pools)), key=self.in_flight.__getitem__)
        self.in_flight[index] += 1
        try:
            response = await self.pools[index].handle_async_request(request)
        except BaseException:
            self.in_flight[index] -= 1
            raise
        assert isinstance(response.stream, httpx2.AsyncByteStream)
        response.stream = _Released(response.stream, self, index)
        return response

    async def aclose(self) -> None:
        """Close every pool."""
        for pool in self.pools:
            await pool.aclose()
