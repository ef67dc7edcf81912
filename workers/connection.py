"""The Redis connection both sides use: a client, and a pub/sub subscription.

A leaf module: the ingress and the workers import it without pulling in each other.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import coredis
from coredis.connection import BaseConnection
from coredis.patterns.pubsub import PubSub
from coredis.retry import CompositeRetryPolicy, ConstantRetryPolicy


class Pool(coredis.ConnectionPool[BaseConnection]):
    """coredis's pool, giving back the slot of a caller whose new connection failed.

    The pool holds `max_connections` slots; a caller takes one, and a new connection is
    made in the caller's task. coredis 6.9 gives the slot back when the connection is
    refused but not when the caller is cancelled meanwhile (a client that hung up, a
    request's own timeout): each such cancel lost a slot for good, until no command
    could get a connection at all.
    """

    async def get_connection(self, **_: Any) -> BaseConnection:
        """A pooled connection, or a new one in a free slot (see the class docstring)."""
        with anyio.fail_after(self.timeout):
            connection = await self._available_connections.get()
            if connection is not None and connection.reusable:
                self.statistics.connection_leased(connection)
                return connection
            if connection is not None:
                connection.invalidate()
            try:
                connection = await self._construct_connection()
                # coredis's own runner: it unlists the connection when it ends.
                run = self._ConnectionPool__wrap_connection  # type: ignore[attr-defined]
                error = await self.task_group.start(run, connection)
                if error:
                    raise error
            except BaseException:
                if connection is not None:
                    connection.invalidate()  # a cancel after it started must not orphan it
                self._available_connections.append_nowait(None)
                raise
        self.statistics.connection_created(connection)
        self._online_connections.add(connection)
        self.statistics.connection_leased(connection)
        return connection


def connect(url: str, *, max_connections: int = 256, timeout: float = 5.0) -> coredis.Redis[bytes]:
    """A Redis client (use it as an async context manager)."""
    pool = Pool.from_url(url, max_connections=max_connections, connect_timeout=timeout,
                         stream_timeout=None, timeout=timeout)
    return coredis.Redis(connection_pool=pool, retry_policy=ConstantRetryPolicy(
        (coredis.exceptions.ConnectionError, TimeoutError), retries=2, delay=0.01))


@asynccontextmanager
async def subscription(redis: coredis.Redis[bytes], channel: str,
                       *more: str) -> AsyncIterator[PubSub[bytes]]:
    """A pub/sub subscription to one channel or more (re-subscribed by coredis after drops).

    coredis tries to UNSUBSCRIBE on a connection it already closed when the
    subscriber is cancelled; that error means only "we are shutting down".
    """
    # Re-subscribe at a steady pace after a drop, so service resumes soon after Redis does.
    retry = CompositeRetryPolicy(
        ConstantRetryPolicy((coredis.exceptions.ConnectionError,), retries=None, delay=0.5),
        ConstantRetryPolicy((TimeoutError,), retries=2, delay=0.1))
    try:
        async with redis.pubsub(channels=[channel, *more], retry_policy=retry) as pubsub:
            yield pubsub
    except* anyio.ClosedResourceError:
        pass
