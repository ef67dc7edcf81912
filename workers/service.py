"""A worker process: consumers for the chosen providers, plus the cancel listener."""

from __future__ import annotations

import ssl
import uuid
from collections.abc import Sequence
from contextlib import AsyncExitStack

import httpx2
import trio

from schemas import names
from schemas.config import Config
from workers.batches import Feeder
from workers.connection import SUBSCRIBED, RedisClient, connect, listeners, subscription
from workers.consumer import LANES, Consumer, Lane
from workers.logs import log_event
from workers.metrics import serve_metrics
from workers.providers._base import Adapter, read_credential
from workers.providers._pools import PooledTransport
from workers.queue import Queue
from workers.registry import build_adapter
from workers.runner import Runner
from workers.signals import watch_signals
from workers.tracing import Spans


async def run_workers(config: Config, providers: Sequence[str] = (), *,
                      stop: trio.Event | None = None, consumer_id: str | None = None,
                      metrics_bind: tuple[str, int] | None = None,
                      lanes: frozenset[Lane] = LANES,
                      task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the named providers (all configured ones if none are named).

    Owns one Redis client, one httpx client per provider, a consumer per provider, the
    batch feeder and the cancel listener (and, with `metrics_bind` = (host, port), the metrics server) in
    one nursery, and the span export (with `[tracing]`); `started()` once every consumer
    group exists. `lanes`: the traffic its consumers take (interactive jobs, batch lines,
    or both, the default). Runs until cancelled, or until `stop` is set: then intake stops, running
    jobs get `limits.shutdown_grace_s` seconds to finish, and it returns, last exporting
    the spans still queued (within `tracing.timeout_s`).
    """
    chosen = list(providers) or list(config.providers)
    unknown = [p for p in chosen if p not in config.providers]
    if unknown:
        raise ValueError(f"unknown provider(s): {', '.join(unknown)}")
    consumer_id = consumer_id or f"worker-{uuid.uuid4().hex[:12]}"
    warn_missing_credentials(config, chosen)
    async with AsyncExitStack() as stack:
        spans = Spans(config.tracing, "worker")
        stack.push_async_callback(spans.aclose)  # the last thing to go: after every job
        redis = await stack.enter_async_context(connect(config.redis_url))
        queue = Queue(redis)
        adapters: dict[str, Adapter] = {}
        tls = ssl.create_default_context()  # one CA bundle load per process, not per provider
        for name in chosen:
            provider = config.providers[name]
            http = await stack.enter_async_context(httpx2.AsyncClient(
                timeout=httpx2.Timeout(provider.timeout_s, connect=10.0),
                transport=PooledTransport(provider.max_concurrency, verify=tls),
            ))
            adapters[name] = build_adapter(name, provider, http)
        runner = Runner(config, queue, adapters, spans=spans)
        async with trio.open_nursery() as nursery:
            await nursery.start(CancelListener(redis, runner, consumer_id).serve)
            # Feeds the batch streams of our providers and ends batches (workers/batches).
            await nursery.start(Feeder(redis, config, chosen, consumer_id).serve)
            if metrics_bind is not None:
                await nursery.start(serve_metrics, runner.metrics.registry, redis, chosen,
                                    config.limits.redis_timeout_s, metrics_bind)
            consumers = [Consumer(name, consumer_id, config, queue, runner, lanes)
                         for name in chosen]
            async with trio.open_nursery() as consuming:
                for consumer in consumers:
                    await consuming.start(consumer.serve)
                log_event("worker_ready", consumer=consumer_id, providers=chosen)
                task_status.started()
                if stop is not None:
                    await stop.wait()
                    log_event("worker_draining", consumer=consumer_id,
                              running=sum(len(c.running) + len(c.batch_running)
                                          for c in consumers))
                    # Streams still running at the deadline end with an error frame; the
                    # consumers' own deadline leaves the time to publish it.
                    runner.drain(config.limits.shutdown_grace_s)
                    for consumer in consumers:
                        consumer.drain(config.limits.shutdown_grace_s
                                       + config.limits.redis_timeout_s)
            await _retire(queue, consumer_id, config.limits.redis_timeout_s)
            nursery.cancel_scope.cancel()  # the cancel listener


def missing_credentials(config: Config, providers: Sequence[str]) -> dict[str, str]:
    """{provider: where its credential should come from} for each of `providers` whose
    `api_key_env` / `api_key_file` yields nothing. A provider that names no credential at
    all (mock, a local vLLM) is not listed."""
    missing = {}
    for name in providers:
        provider = config.providers[name]
        if (provider.api_key_env or provider.api_key_file) and not read_credential(provider):
            missing[name] = " or ".join(
                ([f"${provider.api_key_env}"] if provider.api_key_env else [])
                + ([f"file {provider.api_key_file}"] if provider.api_key_file else []))
    return missing


def warn_missing_credentials(config: Config, providers: Sequence[str]) -> list[str]:
    """Log one `provider_without_credential` line per provider `missing_credentials`
    finds, and return their names.

    Such a provider is still served (a local server may take any key), but a real upstream
    refuses its calls: each job on it fails, or fails over to the model's next route, so a
    catalog that silently answers from a fallback says why at start-up.
    """
    missing = missing_credentials(config, providers)
    for name, source in missing.items():
        provider = config.providers[name]
        log_event("provider_without_credential", provider=name, kind=provider.kind,
                  api_key_env=provider.api_key_env, api_key_file=provider.api_key_file,
                  message=f"provider {name!r} has no credential ({source} is empty or "
                  "missing): its calls will fail, and its routes fail over to the next one")
    return list(missing)


async def run_until_signalled(config: Config, providers: Sequence[str] = (),
                              metrics_bind: tuple[str, int] | None = None,
                              lanes: frozenset[Lane] = LANES) -> None:
    """The `switchboard worker` process: SIGTERM or SIGINT drains, a second one cuts off."""
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch_signals, stop, nursery.cancel_scope)
        await run_workers(config, providers, stop=stop, metrics_bind=metrics_bind, lanes=lanes)
        nursery.cancel_scope.cancel()


async def _retire(queue: Queue, consumer_id: str, timeout_s: float) -> None:
    """Drained: drop our liveness key, so what we leave pending (jobs cut off by the
    grace deadline) is re-run at once instead of after `reclaim_after_s`. A killed
    worker's key simply expires."""
    with trio.move_on_after(timeout_s):
        try:
            await queue.retire(consumer_id)
        except Exception as exc:  # Redis gone: the key expires by itself
            log_event("retire_failed", consumer=consumer_id, error=type(exc).__name__)


class CancelListener:
    """Cancels running jobs whose client went away (invariant 5), whatever Redis does.

    Subscribes to the cancel channel and to this worker's own channel; a watchdog asks
    Redis every `WATCH_S` whether the own channel still has its subscriber, and replaces
    a subscription that is gone or stuck. Errors are logged and retried with back-off;
    they never end the worker. A cancel published while no subscription listened is not
    lost: every (re-)subscription checks the running jobs' withdrawn marks.
    """

    WATCH_S = 1.0
    MIN_BACKOFF_S = 0.25
    # Short: while the listener waits, a client that leaves keeps its upstream call running.
    MAX_BACKOFF_S = 1.0

    def __init__(self, redis: RedisClient, runner: Runner, consumer_id: str) -> None:
        self.redis = redis
        self.runner = runner
        self.own_channel = names.worker(consumer_id)
        self._subscription = trio.CancelScope()
        self._subscribed = trio.Event()
        self._backoff = self.MIN_BACKOFF_S

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen until cancelled; `started()` once first subscribed."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch)
            nursery.start_soon(self._supervise)
            await self._subscribed.wait()
            task_status.started()

    async def _supervise(self) -> None:
        while True:
            with trio.CancelScope() as self._subscription:
                try:
                    await self._listen()
                except Exception as exc:
                    log_event("cancel_listener_error", error=type(exc).__name__)
            await trio.sleep(self._backoff)
            self._backoff = min(self._backoff * 2, self.MAX_BACKOFF_S)

    async def _listen(self) -> None:
        async with subscription(self.redis, names.CANCEL_CHANNEL, self.own_channel) as pubsub:
            async for message in pubsub:
                if message["type"] == SUBSCRIBED:
                    self._backoff = self.MIN_BACKOFF_S  # healthy again
                    self._subscribed.set()
                    if message["channel"] == names.CANCEL_CHANNEL.encode():
                        await self._recheck()
                elif message["type"] == "message" and isinstance(message["data"], bytes):
                    if message["channel"] == names.CANCEL_CHANNEL.encode():
                        self.runner.cancel(message["data"].decode())

    async def _recheck(self) -> None:
        """Cancel the running jobs withdrawn while nobody listened (their marks say so)."""
        running = list(self.runner.running)
        if not running:
            return
        with trio.move_on_after(self.WATCH_S * 2):
            async with self.redis.pipeline(transaction=False) as pipe:
                marks = [pipe.exists([names.withdrawn(request_id)]) for request_id in running]
            for request_id, mark in zip(running, marks, strict=True):
                if await mark:
                    log_event("cancel_recovered", request_id=request_id)
                    self.runner.cancel(request_id)

    async def _watch(self) -> None:
        misses = 0
        while True:
            await trio.sleep(self.WATCH_S)
            try:
                with trio.fail_after(self.WATCH_S * 2):
                    listening = await listeners(self.redis, self.own_channel) > 0
            except Exception:
                listening = False
            misses = 0 if listening else misses + 1
            if misses == 2:  # gone or stuck for two checks in a row: subscribe afresh
                log_event("cancel_listener_lost")
                self._subscription.cancel()
            if misses >= 2 and misses % 5 == 0:
                self._subscription.cancel()  # still not back: try once more
