"""A worker process: consumers for the chosen providers, plus the cancel listener."""

from __future__ import annotations

import ssl
import uuid
from collections.abc import Sequence
from contextlib import AsyncExitStack

import coredis
import httpx
import trio

from schemas import names
from schemas.config import Config
from workers.connection import connect, subscription
from workers.consumer import Consumer
from workers.logs import log_event
from workers.providers._base import Adapter
from workers.queue import Queue
from workers.registry import build_adapter
from workers.runner import Runner
from workers.signals import watch_signals


async def run_workers(config: Config, providers: Sequence[str] = (), *,
                      stop: trio.Event | None = None, consumer_id: str | None = None,
                      task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the named providers (all configured ones if none are named).

    Owns one Redis client, one httpx client per provider, a consumer per provider and
    the cancel listener, all in one nursery; `started()` once every consumer group
    exists. Runs until cancelled, or until `stop` is set: then intake stops, running
    jobs get `limits.shutdown_grace_s` seconds to finish, and it returns.
    """
    chosen = list(providers) or list(config.providers)
    unknown = [p for p in chosen if p not in config.providers]
    if unknown:
        raise ValueError(f"unknown provider(s): {', '.join(unknown)}")
    consumer_id = consumer_id or f"worker-{uuid.uuid4().hex[:12]}"
    async with AsyncExitStack() as stack:
        redis = await stack.enter_async_context(connect(config.redis_url))
        queue = Queue(redis)
        adapters: dict[str, Adapter] = {}
        tls = ssl.create_default_context()  # one CA bundle load per process, not per provider
        for name in chosen:
            provider = config.providers[name]
            http = await stack.enter_async_context(httpx.AsyncClient(
                timeout=httpx.Timeout(provider.timeout_s, connect=10.0), verify=tls,
                limits=httpx.Limits(max_connections=provider.max_concurrency,
                                    max_keepalive_connections=provider.max_concurrency),
            ))
            adapters[name] = build_adapter(name, provider, http)
        runner = Runner(config, queue, adapters)
        async with trio.open_nursery() as nursery:
            await nursery.start(_listen_for_cancels, redis, runner)
            consumers = [Consumer(name, consumer_id, config, queue, runner) for name in chosen]
            async with trio.open_nursery() as consuming:
                for consumer in consumers:
                    await consuming.start(consumer.serve)
                log_event("worker_ready", consumer=consumer_id, providers=chosen)
                task_status.started()
                if stop is not None:
                    await stop.wait()
                    log_event("worker_draining", consumer=consumer_id,
                              running=sum(len(c.running) for c in consumers))
                    # Streams still running at the deadline end with an error frame; the
                    # consumers' own deadline leaves the time to publish it.
                    runner.drain(config.limits.shutdown_grace_s)
                    for consumer in consumers:
                        consumer.drain(config.limits.shutdown_grace_s
                                       + config.limits.redis_timeout_s)
            nursery.cancel_scope.cancel()  # the cancel listener


async def run_until_signalled(config: Config, providers: Sequence[str] = ()) -> None:
    """The `switchboard worker` process: SIGTERM or SIGINT drains, a second one cuts off."""
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch_signals, stop, nursery.cancel_scope)
        await run_workers(config, providers, stop=stop)
        nursery.cancel_scope.cancel()


async def _listen_for_cancels(redis: coredis.Redis[bytes], runner: Runner, *,
                              task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Cancel running jobs whose client went away (invariant 5)."""
    async with subscription(redis, names.CANCEL_CHANNEL) as pubsub:
        task_status.started()
        async for message in pubsub:
            if message["type"] == "message" and isinstance(message["data"], bytes):
                runner.cancel(message["data"].decode())
