"""How late this process's event loop runs: the ingress's own overload, measured.

A Redis answer that arrives late may be Redis's fault, or this process's: a saturated
event loop reads its sockets late, and every timer fires late. The ingress must tell
the two apart, or overload looks like a Redis outage and becomes 503s. `LoopMonitor`
sleeps briefly, over and over, and counts how much longer each sleep took: the sum is
time the loop could not run anything (`stalled`), the recent maximum is its `lag`.
"""

from __future__ import annotations

import trio

PERIOD_S = 0.05  # how often the loop is sampled
DECAY = 0.9  # per sample: a lag of 1 s is forgotten within about 2 s


class LoopMonitor:
    """Samples the event loop's lateness while `serve` runs."""

    def __init__(self) -> None:
        self.stalled = 0.0  # seconds the loop ran late, in total (only grows)
        self.lag = 0.0  # how late it runs now (the recent maximum, decaying)

    def stalled_since(self, mark: float, deadline: float | None = None) -> float:
        """Seconds the loop ran late since `stalled` was `mark`; with `deadline`, also how
        late the caller woke after it (a stall the sampler has not counted yet)."""
        late = max(0.0, trio.current_time() - deadline) if deadline is not None else 0.0
        return max(self.stalled - mark, late)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Sample until cancelled."""
        task_status.started()
        while True:
            asleep = trio.current_time()
            await trio.sleep(PERIOD_S)
            late = max(0.0, trio.current_time() - asleep - PERIOD_S)
            self.stalled += late
            self.lag = max(late, self.lag * DECAY)
