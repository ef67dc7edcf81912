"""Serving the ingress: Hypercorn on trio, the reply hub, one Redis client."""

from __future__ import annotations

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from ingress.app import create_app
from ingress.gateway import Gateway
from ingress.replies import ReplyHub
from schemas.config import Config
from workers.queue import connect


async def run_ingress(config: Config, host: str = "127.0.0.1", port: int = 8080, *,
                      task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve HTTP until cancelled; `started(binds)` once listening (binds name the port).

    Owns the Redis client, the reply hub and Hypercorn in one nursery. Cancellation
    stops everything; Hypercorn closes open connections on its way out.
    """
    async with connect(config.redis_url) as redis:
        hub = ReplyHub(redis)
        gateway = Gateway(config, redis, hub)
        app = create_app(gateway)
        server = HypercornConfig()
        server.bind = [f"{host}:{port}"]
        server.accesslog = None
        server.backlog = 4096  # bursts of new connections must queue, not be reset
        server.keep_alive_timeout = 75
        server.graceful_timeout = 5
        async with trio.open_nursery() as nursery:
            await nursery.start(hub.serve)
            with trio.move_on_after(config.limits.redis_timeout_s):
                await hub.wait_ready()  # if Redis is down, serve 503s until it returns
            binds = await nursery.start(serve, app, server)
            task_status.started(binds)
