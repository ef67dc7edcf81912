"""One provider's consumer: read only as many jobs as there are free slots, run them.

Waiting happens in Redis, not in worker memory (invariant 4): a job is read only when
a slot is free for it. A heartbeat re-claims the running jobs' entries so their idle
time never grows while they are healthy; entries idle past `reclaim_after_s` belong to
a dead worker and are taken over (invariant 3).
"""

from __future__ import annotations

import contextlib

import trio

from schemas.config import Config
from workers.logs import log_event
from workers.queue import Delivery, Queue
from workers.runner import Runner

READ_BLOCK_MS = 1000
MAX_BATCH = 64


class Consumer:
    """Consumes `sb:q:{provider}` for one worker process."""

    def __init__(self, provider: str, consumer_id: str, config: Config, queue: Queue,
                 runner: Runner) -> None:
        self.provider = provider
        self.consumer_id = consumer_id
        self.limits = config.limits
        self.queue = queue
        self.runner = runner
        self.slots = trio.Semaphore(config.providers[provider].max_concurrency)
        self.running: set[bytes] = set()
        self._intake_scope = trio.CancelScope()
        self._jobs = trio.CancelScope()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Consume until drained or cancelled. Runs the heartbeat, the intake and every job.

        `started()` once the consumer group exists. `drain()` stops the intake and gives
        running jobs a deadline; serve returns when they are done. Jobs cut off (by the
        deadline or by cancellation) stay pending and another worker reclaims them.
        """
        await self.queue.ensure_group(self.provider)
        async with trio.open_nursery() as outer:
            outer.start_soon(self._heartbeat)  # keeps running while jobs drain
            async with trio.open_nursery() as jobs:
                self._jobs = jobs.cancel_scope
                task_status.started()
                with self._intake_scope:
                    await self._intake(jobs)
            outer.cancel_scope.cancel()

    def drain(self, grace_s: float) -> None:
        """Stop taking jobs; let running ones finish within `grace_s` seconds."""
        self._intake_scope.cancel()
        self._jobs.deadline = min(self._jobs.deadline, trio.current_time() + grace_s)

    async def _intake(self, jobs: trio.Nursery) -> None:
        reclaim_every = max(self.limits.heartbeat_s, 0.05)
        next_reclaim = 0.0
        while True:
            await self.slots.acquire()
            taken = 1
            while taken < MAX_BATCH and self.slots.value > 0:
                self.slots.acquire_nowait()
                taken += 1
            deliveries: list[Delivery] = []
            due = trio.current_time() >= next_reclaim
            if due:
                next_reclaim = trio.current_time() + reclaim_every
            try:
                # Bounded even if Redis stops answering on a half-dead connection. What was
                # taken before a failure is still run; a reply lost in flight leaves its
                # entries pending, and they are reclaimed (by us too, after a while).
                with trio.fail_after(READ_BLOCK_MS / 1000 + self.limits.redis_timeout_s):
                    await self._take(deliveries, taken, reclaim=due)
            except Exception as exc:  # Redis trouble: back off, then make sure the group exists
                log_event("intake_error", provider=self.provider, error=type(exc).__name__)
                await trio.sleep(0.5)
                with contextlib.suppress(Exception):  # a restarted Redis may have lost it
                    await self.queue.ensure_group(self.provider)
            for _ in range(taken - len(deliveries)):
                self.slots.release()
            for delivery in deliveries:
                self.running.add(delivery.entry_id)
                jobs.start_soon(self._run, delivery)

    async def _take(self, deliveries: list[Delivery], count: int, *, reclaim: bool) -> None:
        """Add up to `count` jobs: first those of dead workers (when due), then new ones."""
        if reclaim:
            reclaimed = await self.queue.reclaim(
                self.provider, self.consumer_id, int(self.limits.reclaim_after_s * 1000), count)
            # One of ours whose heartbeats failed for long is still running here: not twice.
            deliveries.extend(d for d in reclaimed if d.entry_id not in self.running)
        if len(deliveries) < count:
            block = 1 if deliveries else READ_BLOCK_MS
            deliveries.extend(await self.queue.read(
                self.provider, self.consumer_id, count - len(deliveries), block))

    async def _run(self, delivery: Delivery) -> None:
        try:
            await self.runner.run(delivery)
        finally:
            self.running.discard(delivery.entry_id)
            self.slots.release()

    async def _heartbeat(self) -> None:
        while True:
            await trio.sleep(self.limits.heartbeat_s)
            try:
                with trio.fail_after(self.limits.reclaim_after_s):
                    await self.queue.heartbeat(self.provider, self.consumer_id, list(self.running))
            except Exception as exc:
                log_event("heartbeat_error", provider=self.provider, error=type(exc).__name__)
