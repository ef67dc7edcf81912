"""Withdrawing the jobs of requests that ended early, off the request path.

A request whose client left, fell behind, or was failed because Redis stopped answering
must not wait for its withdrawal: with Redis frozen, that wait (a full Redis timeout of
its own) is what made such answers late. One task per ingress process runs withdrawals
instead, each within `timeout_s`; those Redis did not take are tried again until
`keep_s` has passed (the job's deadline and grace: after it no worker starts the job).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import trio

from workers.logs import log_event

T = TypeVar("T")
RETRY_S = 0.5  # between rounds of withdrawals Redis did not take
BATCH = 256  # withdrawals in flight at once (the Redis client's pool is about this size)


class Withdrawals(Generic[T]):
    """A queue of withdrawals and the one task that runs them (`serve`)."""

    def __init__(self, withdraw: Callable[[T], Awaitable[None]], *, timeout_s: float,
                 keep_s: float) -> None:
        self._withdraw = withdraw
        self.timeout_s = timeout_s
        self.keep_s = keep_s
        self._send, self._receive = trio.open_memory_channel[tuple[float, T]](math.inf)
        self._retrying = 0

    def statistics(self) -> dict[str, int]:
        return {"queued": self._receive.statistics().current_buffer_used,
                "retrying": self._retrying}

    def submit(self, item: T) -> None:
        """Withdraw `item` soon; never blocks (the caller is answering its client)."""
        try:
            self._send.send_nowait((trio.current_time() + self.keep_s, item))
        except trio.ClosedResourceError:  # shutting down after the last request ended
            log_event("withdraw_dropped", reason="shutting down")

    def close(self) -> None:
        """No more submissions: `serve` tries what is queued once more, then returns."""
        self._send.close()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run withdrawals until `close` (then return) or cancellation."""
        task_status.started()
        later: list[tuple[float, T]] = []
        closed = False
        while not closed or later:
            batch: list[tuple[float, T]] = []
            with trio.move_on_after(RETRY_S if later else math.inf):
                try:
                    batch.append(await self._receive.receive())
                except trio.EndOfChannel:
                    closed = True
            while len(batch) < BATCH:
                try:
                    batch.append(self._receive.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            room = BATCH - len(batch)
            batch, later = batch + later[:room], later[room:]
            failed = await self._run(batch)
            if closed:  # shutting down: one more try each, no waiting for Redis to return
                if failed:
                    log_event("withdraw_given_up", requests=len(failed), reason="shutting down")
                failed = []
            later += failed
            self._retrying = len(later)

    async def _run(self, batch: list[tuple[float, T]]) -> list[tuple[float, T]]:
        """Try each withdrawal once, all at once; return those Redis did not take in time."""
        now = trio.current_time()
        live = [entry for entry in batch if entry[0] > now]
        if len(live) < len(batch):
            log_event("withdraw_given_up", requests=len(batch) - len(live), reason="expired")
        failed: list[tuple[float, T]] = []
        errors: set[str] = set()

        async def one(entry: tuple[float, T]) -> None:
            with trio.move_on_after(self.timeout_s):
                try:
                    await self._withdraw(entry[1])
                    return
                except Exception as exc:  # Redis trouble: tried again next round
                    errors.add(type(exc).__name__)
            failed.append(entry)

        async with trio.open_nursery() as nursery:
            for entry in live:
                nursery.start_soon(one, entry)
        if failed:
            log_event("withdraw_failed", requests=len(failed),
                      error=",".join(sorted(errors)) or "TooSlowError")
        return failed
