"""One provider's consumer: read only as many jobs as there are free slots, run them.

Waiting happens in Redis, not in worker memory (invariant 4): a job is read only when
a slot is free for it. Every `heartbeat_s` the worker refreshes its liveness key
(`{sb}:alive:{consumer}`, expiring after `reclaim_after_s`) and the idle time of the
entries it still owns; the entries of a worker whose key expired are taken over and
re-run (invariant 3). Entries another worker took over from us (we were presumed dead:
frozen, or cut off from Redis) are stopped here, never taken back.

Batch lines (`{sb}:bq:{provider}`, fed by `workers.batches`) share the slots but always
yield: they are read only when the interactive stream has nothing waiting, and at most
`batch_cap` of them run at once ((1 - `batch.interactive_share`) of the slots, at least
one), so interactive jobs always find a slot. Both streams are heartbeated, reclaimed
and pruned alike. A worker may also serve one lane only (`lanes`: `switchboard worker
--lane batch`), so batch lines can run in processes of their own at a lower CPU priority.
"""

from __future__ import annotations

import contextlib
import math
from typing import Literal

import trio

from schemas.config import Config
from schemas.envelopes import Job
from workers.logs import log_event
from workers.queue import Delivery, Queue
from workers.runner import Runner

Lane = Literal["interactive", "batch"]
LANES: frozenset[Lane] = frozenset({"interactive", "batch"})
READ_BLOCK_MS = 1000
MAX_BATCH = 64
# While batch lines run or were seen lately, the blocking read of the interactive stream is
# short, so a batch slot that frees up is filled soon (the read cannot be woken by it); with
# no batch work about, the read blocks for READ_BLOCK_MS.
BATCH_POLL_MS = 20
BATCH_RECENT_S = 2.0
BATCH_PROBE_S = 0.5  # with no batch work about, how often the batch stream is looked at


class Consumer:
    """Consumes `{sb}:q:{provider}` for one worker process."""

    def __init__(self, provider: str, consumer_id: str, config: Config, queue: Queue,
                 runner: Runner, lanes: frozenset[Lane] = LANES) -> None:
        self.provider = provider
        self.consumer_id = consumer_id
        self.limits = config.limits
        self.queue = queue
        self.runner = runner
        slots = config.providers[provider].max_concurrency
        self.slots = trio.Semaphore(slots)
        self.interactive = "interactive" in lanes
        self.batch_cap = 0 if "batch" not in lanes else slots if not self.interactive else \
            max(1, int((1 - config.batch.interactive_share) * slots))
        self.running: dict[bytes, str] = {}  # entry id -> request id of the jobs run here
        self.batch_running: dict[bytes, str] = {}  # the same for batch lines (their stream)
        self._batch_seen = -math.inf  # trio time a read of the batch stream last found lines
        self._next_probe = -math.inf  # trio time the batch stream is next looked at (idle)
        self._read_lost = False  # a read failed: its reply (and jobs) may be lost in flight
        self._batch_reclaim_owed = False  # a reclaim round found no batch slot free
        self._intake_scope = trio.CancelScope()
        self._jobs = trio.CancelScope()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Consume until drained or cancelled. Runs the heartbeat, the intake and every job.

        `started()` once the consumer group exists. `drain()` stops the intake and gives
        running jobs a deadline; serve returns when they are done. Jobs cut off (by the
        deadline or by cancellation) stay pending and another worker reclaims them.
        """
        await self.queue.ensure_group(self.provider)
        await self.queue.ensure_group(self.provider, batch=True)
        await self._beat()  # alive before the first read: our entries are never taken as dead
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
        # Dead consumers are removed now and then: a name per worker start would pile up.
        prune_every = max(self.limits.reclaim_after_s, 5 * self.limits.heartbeat_s)
        next_reclaim = next_prune = 0.0
        while True:
            await self.slots.acquire()
            taken = 1
            while taken < MAX_BATCH and self.slots.value > 0:
                self.slots.acquire_nowait()
                taken += 1
            deliveries: list[Delivery] = []
            due = trio.current_time() >= next_reclaim or self._read_lost
            prune = due and trio.current_time() >= next_prune
            if due:
                next_reclaim = trio.current_time() + reclaim_every
            if prune:
                next_prune = trio.current_time() + prune_every
            try:
                # Bounded even if Redis stops answering on a half-dead connection. What was
                # taken before a failure is still run; a reply lost in flight leaves its
                # entries pending under our name, and the next round takes them back.
                with trio.fail_after(READ_BLOCK_MS / 1000 + self.limits.redis_timeout_s):
                    await self._take(deliveries, taken, reclaim=due, prune=prune)
            except Exception as exc:  # Redis trouble (or we were frozen): back off a little
                log_event("intake_error", provider=self.provider, error=type(exc).__name__)
                self._read_lost = True
                await trio.sleep(0.5)
                with contextlib.suppress(Exception):  # a restarted Redis may have lost it
                    await self.queue.ensure_group(self.provider)
                    await self.queue.ensure_group(self.provider, batch=True)
            for _ in range(taken - len(deliveries)):
                self.slots.release()
            for delivery in deliveries:
                self._running(delivery.job)[delivery.entry_id] = delivery.job.request_id
                jobs.start_soon(self._run, delivery)

    async def _take(self, deliveries: list[Delivery], count: int, *, reclaim: bool,
                    prune: bool) -> None:
        """Add up to `count` jobs: first those of dead workers and our own that were read
        but never run (when due), then new ones."""
        beat_ms = int(self.limits.heartbeat_s * 1000)
        # Our running entries are heartbeated; one idle for three heartbeats was read but
        # never run. After a failed read, take back every one at once.
        own_idle_ms = 0 if self._read_lost else 3 * beat_ms
        if reclaim:
            self._batch_reclaim_owed = True
        if reclaim and self.interactive:
            reclaimed = await self.queue.reclaim(
                self.provider, self.consumer_id, floor_ms=beat_ms, own_idle_ms=own_idle_ms,
                count=count)
            # Our own entries come back too: never run one twice here.
            deliveries.extend(d for d in reclaimed if d.entry_id not in self.running)
        # Batch lines of dead workers go before new ones: a round due while every batch
        # slot is busy leaves the reclaim owed to the next round with room.
        room = self._batch_room(deliveries, count)
        if room and self._batch_reclaim_owed:
            reclaimed = await self.queue.reclaim(
                self.provider, self.consumer_id, floor_ms=beat_ms, own_idle_ms=own_idle_ms,
                count=room, batch=True)
            deliveries.extend(d for d in reclaimed if d.entry_id not in self.batch_running)
            self._batch_reclaim_owed = False
        if reclaim:
            self._read_lost = False
            if prune:
                for batch in (False, True):
                    await self.queue.prune(self.provider, int(self.limits.reclaim_after_s * 1000),
                                           batch=batch)
        if len(deliveries) >= count:
            return
        # Interactive jobs first; batch lines only when none is waiting. While batch lines
        # run (or ran lately) both streams are read without waiting, then the interactive
        # one briefly. With no batch work about, the consumer waits on its interactive
        # stream in one call, as with no batches at all, and looks at the batch stream when
        # that wait ends empty or, under interactive load, every BATCH_PROBE_S.
        now = trio.current_time()
        busy = bool(self.batch_running) or now - self._batch_seen < BATCH_RECENT_S
        if not self.interactive:  # a batch-only lane waits for lines
            room = self._batch_room(deliveries, count)
            await self._read_batch(deliveries, room, READ_BLOCK_MS)
            return
        if busy:
            deliveries.extend(await self.queue.read(
                self.provider, self.consumer_id, count - len(deliveries), None))
            if not deliveries:
                await self._read_batch(deliveries, self._batch_room(deliveries, count), None)
            if not deliveries:
                deliveries.extend(await self.queue.read(
                    self.provider, self.consumer_id, count, BATCH_POLL_MS))
            return
        deliveries.extend(await self.queue.read(
            self.provider, self.consumer_id, count - len(deliveries), READ_BLOCK_MS))
        if not deliveries or now >= self._next_probe:
            self._next_probe = now + BATCH_PROBE_S
            await self._read_batch(deliveries, self._batch_room(deliveries, count), None)

    async def _read_batch(self, deliveries: list[Delivery], room: int,
                          block_ms: int | None) -> None:
        """Add up to `room` batch lines (waiting at most `block_ms`; None: not at all)."""
        if room:
            found = await self.queue.read(self.provider, self.consumer_id, room, block_ms,
                                          batch=True)
            if found:
                self._batch_seen = trio.current_time()
            deliveries.extend(found)

    def _batch_room(self, deliveries: list[Delivery], count: int) -> int:
        """How many more batch lines this round may take."""
        taking = sum(1 for d in deliveries if d.job.batch)
        free = min(self.batch_cap - len(self.batch_running) - taking,
                   count - len(deliveries))
        return max(free, 0)

    def _running(self, job: Job) -> dict[bytes, str]:
        return self.batch_running if job.batch else self.running

    async def _run(self, delivery: Delivery) -> None:
        try:
            await self.runner.run(delivery)
        finally:
            self._running(delivery.job).pop(delivery.entry_id, None)
            self.slots.release()

    async def _heartbeat(self) -> None:
        while True:
            await trio.sleep(self.limits.heartbeat_s)
            try:
                with trio.fail_after(self.limits.reclaim_after_s):
                    await self._beat()
            except Exception as exc:
                log_event("heartbeat_error", provider=self.provider, error=type(exc).__name__)

    async def _beat(self) -> None:
        """Refresh our liveness and our running entries; stop the jobs we lost."""
        alive_ms = int(self.limits.reclaim_after_s * 1000)
        lost = [(entry_id, self.running) for entry_id in await self.queue.heartbeat(
            self.provider, self.consumer_id, list(self.running), alive_ms=alive_ms)]
        if self.batch_running:
            lost += [(entry_id, self.batch_running) for entry_id in await self.queue.heartbeat(
                self.provider, self.consumer_id, list(self.batch_running), alive_ms=alive_ms,
                batch=True)]
        for entry_id, running in lost:
            request_id = running.get(entry_id)
            if request_id is not None:  # another worker re-runs it: its answer counts
                log_event("job_lost", provider=self.provider, request_id=request_id)
                self.runner.cancel(request_id)
