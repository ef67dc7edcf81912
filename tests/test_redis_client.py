"""The Redis client both sides use keeps its connection slots whatever its callers do.

Found in CI: a client hanging up while its request's command was making a new Redis
connection cancelled the making; coredis's pool lost that slot for good. An ingress that
lost all of its slots could not run a single command again.
"""

from __future__ import annotations

import trio

from workers.connection import RedisClient, connect


async def _ping(redis: RedisClient) -> None:
    assert await redis.ping() == b"PONG"


async def test_commands_cancelled_while_their_connection_is_made_give_back_the_slot(
        redis_url: str) -> None:
    await assert_slots_come_back(redis_url)


async def assert_slots_come_back(url: str) -> None:
    """Many commands cancelled while their connection is made, then as many as there are
    slots (on a cluster: per node) must still run (tests/test_cluster.py runs it there)."""
    slots = 3
    async with connect(url, max_connections=slots, timeout_s=2.0) as redis:
        cancelled = 0
        for attempt in range(60):
            # Cancelled at once or within the connection's handshake (a few hundred µs).
            with trio.move_on_after(0.0002 * (attempt % 10)) as scope:
                async with trio.open_nursery() as nursery:
                    for _ in range(slots):
                        nursery.start_soon(_ping, redis)
            cancelled += scope.cancelled_caught
        assert cancelled > slots, "the commands must have been cancelled, or nothing is tested"
        with trio.fail_after(5):  # the old pool had no slot left: this timed out
            async with trio.open_nursery() as nursery:
                for _ in range(slots):
                    nursery.start_soon(_ping, redis)
