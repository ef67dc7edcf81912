"""The Redis client both sides use keeps its connection slots whatever its callers do, and
is the right kind (one Redis or a cluster) for the URL it is given.

Found in CI: a client hanging up while its request's command was making a new Redis
connection cancelled the making; coredis's pool lost that slot for good. An ingress that
lost all of its slots could not run a single command again.
"""

from __future__ import annotations

import coredis
import pytest
import trio

from ingress.dev import free_port
from workers.connection import RedisClient, cluster_choice, connect


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


async def test_a_server_that_does_not_answer_is_taken_for_one_redis_unless_url_says_cluster(
        ) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    async with connect(url, timeout_s=2.0) as redis:  # starts, to answer 503 until Redis is up
        assert isinstance(redis, coredis.Redis)
    with pytest.raises(coredis.exceptions.RedisClusterError):  # a cluster down at start
        async with connect(url + "?cluster=yes", timeout_s=2.0):
            pass


def test_the_url_may_say_which_kind_of_redis_it_names() -> None:
    assert cluster_choice("redis://h:1/0") == ("redis://h:1/0", None)
    assert cluster_choice("redis://h:1/0?cluster=yes") == ("redis://h:1/0", True)
    assert cluster_choice("rediss://:pw@h:1/0?cluster=NO&x=1") == ("rediss://:pw@h:1/0?x=1", False)
    assert cluster_choice("redis://h:1/0?cluster=auto") == ("redis://h:1/0", None)
    with pytest.raises(ValueError, match="cluster"):
        cluster_choice("redis://h:1/0?cluster=maybe")
