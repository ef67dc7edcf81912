"""Serving the ingress: Hypercorn on trio, the reply hub, one Redis client."""

from __future__ import annotations

import socket
from functools import partial

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from ingress import connections
from ingress.app import create_app, edge
from ingress.gateway import Gateway
from ingress.replies import ReplyHub
from schemas.config import Config
from workers.connection import connect
from workers.signals import watch_signals
from workers.tracing import Spans


async def run_ingress(config: Config, host: str = "127.0.0.1", port: int = 8080, *,
                      stop: trio.Event | None = None, reuse_port: bool = False,
                      task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve HTTP; `started(binds)` once listening (binds name the port).

    Owns the Redis client, the reply hub, the key-change listener, the keys' last-use
    recorder, the routing view's refresher (`RouteHealth`), the withdrawals, the request
    log's writer and Hypercorn in one nursery, and the span export (with `[tracing]`).
    When `stop` is set, Hypercorn stops accepting and gives open requests
    `limits.shutdown_grace_s` seconds; then the withdrawals still queued are tried once
    more, the request log's buffer is flushed, the hub, the listener and the refresher
    stop, and the spans still queued are exported (within `tracing.timeout_s`).
    Cancellation stops everything at once. `reuse_port`: listen with SO_REUSEPORT, beside
    the other processes of `serve --processes N` (ingress/processes.py).
    """
    connections.install()  # connections clients closed are closed at once (see the module)
    spans = Spans(config.tracing, "ingress")
    try:
        await _serve(config, host, port, spans, stop, reuse_port, task_status)
    finally:
        await spans.aclose()


async def _serve(config: Config, host: str, port: int, spans: Spans, stop: trio.Event | None,
                 reuse_port: bool, task_status: trio.TaskStatus[list[str]]) -> None:
    # The reply hub has a client of its own: on the shared one, its subscription and its
    # probe would queue behind every request's commands when the ingress is busy.
    async with connect(config.redis_url) as redis, \
            connect(config.redis_url, max_connections=4) as hub_redis:
        hub = ReplyHub(hub_redis, timeout_s=config.limits.redis_timeout_s)
        gateway = Gateway(config, redis, hub, spans)
        app = create_app(gateway)
        server = HypercornConfig()
        server.bind = [f"fd://{shared_listener(host, port)}" if reuse_port else f"{host}:{port}"]
        server.accesslog = None
        server.backlog = 4096  # bursts of new connections must queue, not be reset
        server.keep_alive_timeout = 75
        server.graceful_timeout = config.limits.shutdown_grace_s
        async with trio.open_nursery() as nursery:
            await nursery.start(edge(app).writes.serve)  # bounds every answer's writes
            await nursery.start(hub.serve)
            await nursery.start(gateway.keys.serve_invalidations)
            await nursery.start(gateway.keys.serve_last_used)
            await nursery.start(gateway.routing.serve)
            with trio.move_on_after(config.limits.redis_timeout_s):
                await hub.wait_ready()  # if Redis is down, serve 503s until it returns
                await gateway.keys.wait_listening()
            trigger = stop.wait if stop is not None else None
            async with trio.open_nursery() as withdrawing:
                await withdrawing.start(gateway.withdrawals.serve)
                await withdrawing.start(gateway.request_log.serve)
                async with trio.open_nursery() as http:
                    binds = await http.start(partial(serve, app, server, shutdown_trigger=trigger))
                    task_status.started(binds)
                gateway.withdrawals.close()  # the last requests ended: flush, then stop
                gateway.request_log.close()
            nursery.cancel_scope.cancel()  # Hypercorn drained its requests: the hub may go


def shared_listener(host: str, port: int) -> int:
    """The file descriptor of a socket bound to host:port with SO_REUSEPORT (Hypercorn
    takes it over and listens): the other processes of `serve --processes N` bind the same
    port, and the kernel spreads new connections over them."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host.strip("[]"), port))
    except OSError:
        sock.close()
        raise
    return sock.detach()


async def run_until_signalled(config: Config, host: str, port: int, reuse_port: bool = False) -> None:
    """The `switchboard serve` process: SIGTERM or SIGINT drains, a second one cuts off."""
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch_signals, stop, nursery.cancel_scope)
        await run_ingress(config, host, port, stop=stop, reuse_port=reuse_port)
        nursery.cancel_scope.cancel()
