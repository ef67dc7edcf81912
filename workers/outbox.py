"""The frames of every stream a worker runs, published together.

A stream's publisher (`workers.publisher`) hands each frame to `Outbox.publish` and waits
for its listener count. While one round trip is out, the frames handed in meanwhile wait;
when it comes back, one of their publishers sends them all as one pipeline of SPUBLISH
commands. A frame alone goes at once, as one command; under load a round trip carries
many frames, and coredis spends a small fraction of a lone command's CPU on each command
of a pipeline of many (`bench/publish.py`), so the worker's cost per frame falls as its
load grows.

No task of its own: the publisher that finds no round trip out sends the next one, so the
outbox needs no owner and stops with its callers. Each stream waits for its frame before
it hands in the next, so its frames keep their order. A round trip is shielded (a caller
cancelled because its own client left must not fail the frames of others) and bounded
by the sender's `timeout_s`: one that does not come back fails every frame it carried,
as a timed-out publish always failed its own.
"""

from __future__ import annotations

import trio

from workers.connection import RedisClient

MAX_FRAMES = 256  # frames per round trip: bounds one pipeline's size and its time in Redis


class _Handed:
    """One frame waiting for its round trip: where it goes, and then what came back."""

    __slots__ = ("channel", "done", "error", "listeners", "payload", "sent")

    def __init__(self, channel: str, payload: bytes) -> None:
        self.channel = channel
        self.payload = payload
        self.sent = False  # taken into a round trip: from then on it may land
        self.done = False
        self.listeners = 0
        self.error: BaseException | None = None


class Outbox:
    """Publishes frames in shared round trips (see the module docstring)."""

    def __init__(self, redis: RedisClient) -> None:
        self.redis = redis
        self.rounds = 0  # round trips sent (tests and bench/publish.py read it)
        self._handed: list[_Handed] = []
        self._out: trio.Event | None = None  # set when the round trip that is out is back

    async def publish(self, channel: str, payload: bytes, timeout_s: float) -> int:
        """Publish `payload` on the shard channel `channel`; how many subscribers heard it.

        Raises what its round trip raised: a Redis error, or `trio.TooSlowError` when it
        took longer than `timeout_s` (the frame may still have landed).
        """
        handed = _Handed(channel, payload)
        self._handed.append(handed)
        try:
            while not handed.done:
                if self._out is None:
                    await self._send(timeout_s)
                else:
                    await self._out.wait()
        except BaseException:  # gave up: a frame not yet taken must not go later
            if not handed.sent:
                self._handed.remove(handed)
            raise  # one in another publisher's round trip may land: the caller's to say
        if handed.error is not None:
            raise handed.error
        return handed.listeners

    async def _send(self, timeout_s: float) -> None:
        """Send the frames handed in so far (up to MAX_FRAMES) as one round trip."""
        batch = self._handed[:MAX_FRAMES]
        del self._handed[:MAX_FRAMES]
        for handed in batch:
            handed.sent = True
        self._out = out = trio.Event()
        self.rounds += 1
        try:
            with trio.CancelScope(shield=True), trio.fail_after(timeout_s):
                if len(batch) == 1:  # a pipeline of one costs more CPU than the command
                    batch[0].listeners = await self.redis.spublish(batch[0].channel,
                                                                   batch[0].payload)
                    return
                async with self.redis.pipeline(transaction=False) as pipe:
                    replies = [pipe.spublish(handed.channel, handed.payload) for handed in batch]
                for handed, reply in zip(batch, replies, strict=True):
                    handed.listeners = int(await reply)
        except Exception as exc:  # the round trip failed, and with it each of its frames
            for handed in batch:
                handed.error = exc
        finally:
            for handed in batch:
                handed.done = True
            self._out = None
            out.set()
