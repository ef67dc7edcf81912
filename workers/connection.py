"""The Redis connection both sides use: a client, and a pub/sub subscription.

A leaf module: the ingress and the workers import it without pulling in each other.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import coredis
from coredis.patterns.pubsub import PubSub
from coredis.retry import CompositeRetryPolicy, ConstantRetryPolicy


def connect(url: str, *, max_connections: int = 256, timeout: float = 5.0) -> coredis.Redis[bytes]:
    """A Redis client (use it as an async context manager)."""
    return coredis.Redis.from_url(
        url,
        max_connections=max_connections,
        connect_timeout=timeout,
        stream_timeout=None,
        pool_timeout=timeout,
    )


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
