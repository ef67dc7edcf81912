"""A worker process: consumers for the chosen providers, plus the cancel listener."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from contextlib import AsyncExitStack

import coredis
import httpx
import trio

from schemas import names
from schemas.config import Config
from workers.base import Adapter
from workers.consumer import Consumer
from workers.logs import log_event
from workers.queue import Queue, connect, subscription
from workers.registry import build_adapter
from workers.runner import Runner


async def run_workers(config: Config, providers: Sequence[str] = (), *,
                      task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the named providers (all configured ones if none are named) until cancelled.

    Owns one Redis client, one httpx client per provider, a consumer per provider and
    the cancel listener, all in one nursery; `started()` once every consumer group exists.
    """
    chosen = list(providers) or list(config.providers)
    unknown = [p for p in chosen if p not in config.providers]
    if unknown:
        raise ValueError(f"unknown provider(s): {', '.join(unknown)}")
    consumer_id = f"worker-{uuid.uuid4().hex[:12]}"
    async with AsyncExitStack() as stack:
        redis = await stack.enter_async_context(connect(config.redis_url))
        queue = Queue(redis)
        adapters: dict[str, Adapter] = {}
        for name in chosen:
            provider = config.providers[name]
            http = await stack.enter_async_context(httpx.AsyncClient(
                timeout=httpx.Timeout(provider.timeout_s, connect=10.0),
                limits=httpx.Limits(max_connections=provider.max_concurrency,
                                    max_keepalive_connections=provider.max_concurrency),
            ))
            adapters[name] = build_adapter(name, provider, http)
        runner = Runner(config, queue, adapters, config.limits.redis_timeout_s)
        async with trio.open_nursery() as nursery:
            await nursery.start(_listen_for_cancels, redis, runner)
            for name in chosen:
                await nursery.start(Consumer(name, consumer_id, config, queue, runner).serve)
            log_event("worker_ready", consumer=consumer_id, providers=chosen)
            task_status.started()


async def _listen_for_cancels(redis: coredis.Redis[bytes], runner: Runner, *,
                              task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Cancel running jobs whose client went away (invariant 5)."""
    async with subscription(redis, names.CANCEL_CHANNEL) as pubsub:
        task_status.started()
        async for message in pubsub:
            if message["type"] == "message" and isinstance(message["data"], bytes):
                runner.cancel(message["data"].decode())
