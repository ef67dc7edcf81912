"""Outcomes that were published while this ingress was not subscribed, read back.

A worker's finish script keeps an outcome frame whose SPUBLISH reached nobody under
`{sb}:outcome:{request_id}` for a few seconds (workers/queue.py). After (re-)subscribing,
the reply hub reads back those of the requests it still waits for, so an answer that
was published during the gap is delivered instead of lost.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from schemas import names
from workers.connection import RedisClient

# Take each kept outcome once: the first reader delivers it, nobody gets it twice.
_READ_BACK = """
local out = {}
for i, key in ipairs(KEYS) do
  local frame = redis.call('GETDEL', key)
  if frame then table.insert(out, frame) end
end
return out
"""
BATCH = 500  # keys per script call, so one call never holds Redis long


class KeptOutcomes:
    """Reads back outcomes kept for this ingress's waiting requests."""

    def __init__(self, redis: RedisClient) -> None:
        self._redis = redis
        self._script: Any = None  # registered on first use

    async def take(self, request_ids: Sequence[str]) -> list[bytes]:
        """The kept outcome frames (encoded) of these requests, removed from Redis."""
        if self._script is None:
            self._script = self._redis.register_script(_READ_BACK)
        frames: list[bytes] = []
        ids = list(request_ids)
        for start in range(0, len(ids), BATCH):
            keys = [names.outcome(rid) for rid in ids[start:start + BATCH]]
            found: Any = await self._script(keys=keys, args=[])
            frames.extend(bytes(frame) for frame in found)
        return frames
