"""The Redis connection both sides use: a client, and a pub/sub subscription.

A leaf module: the ingress and the workers import it without pulling in each other.

`connect(url)` gives a cluster client (`coredis.RedisCluster`) when `url` names a node of
a Redis Cluster, else the plain client; the rest of the code does not care which. Every
name carries one hash tag (`schemas/names.py`), so on a cluster all of them live on the
shard that owns its slot. Pub/sub is sharded pub/sub (SPUBLISH, SSUBSCRIBE, PUBSUB
SHARDNUMSUB, Redis 7.0 and later) on both: one way to publish, in Python and in the Lua
scripts, with one listener count, which on a cluster is the count of the shard that owns
the channel (the one the script runs on).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeAlias
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio
import coredis
from coredis.commands.constants import CommandName
from coredis.connection import BaseConnection, ClusterConnection, TCPLocation
from coredis.patterns.pubsub import BasePubSub, PubSub
from coredis.pool import ClusterConnectionPool
from coredis.retry import CompositeRetryPolicy, ConstantRetryPolicy
from coredis.typing import RedisValueT

# Either client: annotate with this, never with one of the two.
RedisClient: TypeAlias = "coredis.Redis[bytes] | coredis.RedisCluster[bytes]"
Subscription: TypeAlias = "BasePubSub[bytes, Any]"
SUBSCRIBED = "ssubscribe"  # the type of the message that confirms a subscription
MIN_VERSION = (7, 0)  # sharded pub/sub


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


class ClusterPool(ClusterConnectionPool):
    """coredis's cluster pool, giving back the slot of a caller whose new connection failed.

    The same leak as `Pool`'s, per node: coredis 6.9 gives the node's slot back when
    making the connection raises an Exception, not when the caller is cancelled meanwhile
    (trio's Cancelled is a BaseException), and its pool timeout does not bound the making.
    """

    async def _get_connection_by_node(self, node: Any) -> ClusterConnection:
        location = TCPLocation(node.host, node.port)
        slots = self._node_pool(location)
        with anyio.fail_after(self.timeout):
            connection = await slots.get()
            if connection is not None and connection.reusable:
                return connection
            if connection is not None:
                connection.invalidate()
            connection = None
            try:
                connection = self.connection_class(
                    location=location,
                    read_from_replicas=self.read_from_replicas and node.server_type == "replica",
                    **self.connection_kwargs)
                error = await self.task_group.start(self._wrap_connection, connection)
                if error:
                    raise error
            except BaseException:
                if connection is not None:
                    connection.invalidate()  # a cancel after it started must not orphan it
                slots.append_nowait(None)
                raise
        self.statistics.connection_created(connection)
        self._online_connections.add(connection)
        return connection


@asynccontextmanager
async def connect(url: str, *, max_connections: int = 256,
                  timeout_s: float = 5.0) -> AsyncIterator[RedisClient]:
    """A Redis client for `url`, a standalone server or any node of a cluster (use it as an
    async context manager).

    Which one is asked once (`INFO`), unless the URL says `?cluster=yes` or `?cluster=no`.
    A server that does not answer the question is taken as standalone: as before, the
    process starts and answers 503 until Redis is back (a cluster deployment should say
    `cluster=yes`, so that a cluster down at start fails the start instead). On a cluster,
    `max_connections` holds per node: all of the gateway's names are on one shard.
    """
    url, cluster = cluster_choice(url)
    if cluster is None:
        cluster = await _is_cluster(url, timeout_s)
    make = _cluster_client if cluster else _standalone_client
    async with make(url, max_connections, timeout_s) as client:
        yield client


def _standalone_client(url: str, max_connections: int, timeout_s: float) -> coredis.Redis[bytes]:
    pool = Pool.from_url(url, max_connections=max_connections, connect_timeout=timeout_s,
                         stream_timeout=None, timeout=timeout_s)
    return coredis.Redis(connection_pool=pool, retry_policy=ConstantRetryPolicy(
        (coredis.exceptions.ConnectionError, TimeoutError), retries=2, delay=0.01))


def _cluster_client(url: str, max_connections: int,
                    timeout_s: float) -> coredis.RedisCluster[bytes]:
    node = urlsplit(url)
    pool = ClusterPool.from_url(
        url, startup_nodes=[TCPLocation(node.hostname or "localhost", node.port or 6379)],
        max_connections=max_connections, max_connections_per_node=True,
        connect_timeout=timeout_s, stream_timeout=None, timeout=timeout_s)
    # Also retried: a cluster electing a primary or not yet covering every slot (CLUSTERDOWN).
    return coredis.RedisCluster(connection_pool=pool, retry_policy=CompositeRetryPolicy(
        ConstantRetryPolicy((coredis.exceptions.ClusterDownError,), retries=2, delay=0.1),
        ConstantRetryPolicy((coredis.exceptions.ConnectionError, TimeoutError),
                            retries=2, delay=0.01)))


def cluster_choice(url: str) -> tuple[str, bool | None]:
    """`url` without its `cluster` query parameter, and what that said (None: ask)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    said = [value.lower() for key, value in query if key == "cluster"]
    if not said:
        return url, None
    if said[-1] not in ("yes", "no", "auto"):
        raise ValueError(f"redis_url: cluster={said[-1]!r}: say yes, no or auto")
    rest = urlencode([(key, value) for key, value in query if key != "cluster"])
    return urlunsplit(parts._replace(query=rest)), {"yes": True, "no": False}.get(said[-1])


async def _is_cluster(url: str, timeout_s: float) -> bool:
    """Whether the server at `url` is a cluster node; raises if its Redis is too old."""
    info: dict[str, Any] = {}
    answered = True
    try:
        with anyio.fail_after(timeout_s):
            async with coredis.Redis.from_url(url, connect_timeout=timeout_s,
                                              stream_timeout=timeout_s) as probe:
                info = await probe.info("server", "cluster")
    except* (coredis.exceptions.RedisError, OSError, TimeoutError):
        # (Grouped: the client's pool runs connections in a task group of its own.)
        answered = False
    if not answered:
        # Not logged: the commands that follow fail (or succeed) on their own, and the CLI
        # answers a Redis that is away in one line (tests/test_batch_cli.py).
        return False
    found = str(info.get("redis_version", "0.0"))
    if tuple(int(part) for part in found.split(".")[:2]) < MIN_VERSION:
        raise RuntimeError(f"Switchboard needs Redis {'.'.join(map(str, MIN_VERSION))} or later "
                           f"(sharded pub/sub); the server runs {found}")
    return str(info.get("cluster_enabled", "0")) == "1"


class ShardChannels(PubSub[bytes]):
    """coredis's standalone pub/sub, on shard channels: coredis offers SSUBSCRIBE only on its
    cluster client, and a standalone Redis 7 serves it as well (as a one-shard cluster)."""

    def _execute_command(self, command: bytes, *args: RedisValueT) -> None:
        if command == CommandName.PUNSUBSCRIBE:
            return  # shard channels have no patterns (coredis sends it on cleanup)
        super()._execute_command(_SHARDED.get(command, command), *args)


_SHARDED: dict[bytes, bytes] = {CommandName.SUBSCRIBE: CommandName.SSUBSCRIBE,
            CommandName.UNSUBSCRIBE: CommandName.SUNSUBSCRIBE}


@asynccontextmanager
async def subscription(redis: RedisClient, channel: str,
                       *more: str) -> AsyncIterator[Subscription]:
    """A subscription to one shard channel or more (re-subscribed by coredis after drops);
    its confirmations have the type `SUBSCRIBED`.

    coredis tries to UNSUBSCRIBE on a connection it already closed when the
    subscriber is cancelled; that error means only "we are shutting down".
    """
    # Re-subscribe at a steady pace after a drop, so service resumes soon after Redis does.
    retry = CompositeRetryPolicy(
        ConstantRetryPolicy((coredis.exceptions.ConnectionError,), retries=None, delay=0.5),
        ConstantRetryPolicy((TimeoutError,), retries=2, delay=0.1))
    channels = [channel, *more]
    pubsub: Subscription
    if isinstance(redis, coredis.RedisCluster):
        pubsub = redis.sharded_pubsub(channels=channels, retry_policy=retry)
    else:
        pubsub = ShardChannels(redis.connection_pool, channels=channels, retry_policy=retry)
    try:
        async with pubsub:
            yield pubsub
    except* anyio.ClosedResourceError:
        pass


async def publish(redis: RedisClient, channel: str, message: bytes) -> int:
    """Publish on a shard channel; returns how many subscribers heard it (on a cluster,
    those of the shard that owns the channel: the only ones it reaches)."""
    return await redis.spublish(channel, message)


# PUBSUB SHARDNUMSUB in a script whose one key is the channel: a cluster client sends it to
# the shard that owns the channel, whose count is the only one there is. The command itself
# is sent by coredis to every master, and one that errs or hangs fails the whole question.
_LISTENERS = "return redis.call('PUBSUB', 'SHARDNUMSUB', KEYS[1])[2]"


async def listeners(redis: RedisClient, channel: str) -> int:
    """How many subscribers `channel` (a shard channel) has."""
    count = await redis.register_script(_LISTENERS).execute(keys=[channel])
    return int(count)  # type: ignore[arg-type]
