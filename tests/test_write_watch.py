"""The edge's one write watch for the whole process (ingress/edge.py `WriteWatch`): a write
that outlasts the timeout ends its answer, and only its own, whatever else is writing."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

from ingress.edge import WriteWatch, _Watched


class Socket:
    """A fake Hypercorn `send`: a write takes `write_s`; `None` ends the answer."""

    def __init__(self, write_s: float) -> None:
        self.write_s = write_s
        self.ended_at: float | None = None
        self.ended = trio.Event()

    async def send(self, message: Any) -> None:
        if message is None:
            self.ended_at = trio.current_time()
            self.ended.set()
            return
        with trio.move_on_after(self.write_s):
            await self.ended.wait()  # a stuck write returns once the answer is ended


async def test_only_the_write_that_outlasts_the_timeout_is_ended(
        autojump_clock: trio.testing.MockClock) -> None:
    watch = WriteWatch(timeout_s=10.0)
    stuck = Socket(write_s=1e9)
    quick = [Socket(write_s=0.5) for _ in range(5)]
    async with trio.open_nursery() as nursery:
        await nursery.start(watch.serve)
        start = trio.current_time()

        async def writes(socket: Socket, count: int) -> None:
            send = _Watched(watch, socket.send).send
            for _ in range(count):
                await send({"type": "http.response.body", "body": b"x", "more_body": True})

        async with trio.open_nursery() as writers:
            for i, socket in enumerate(quick):  # writing before, during and after the stuck one
                writers.start_soon(writes, socket, 20 + 10 * i)
            await trio.sleep(3.0)
            writers.start_soon(writes, stuck, 1)
        nursery.cancel_scope.cancel()
    assert stuck.ended_at is not None and 12.9 <= stuck.ended_at - start <= 13.1
    assert all(socket.ended_at is None for socket in quick)


async def test_a_write_begun_while_none_was_under_way_is_watched(
        autojump_clock: trio.testing.MockClock) -> None:
    watch = WriteWatch(timeout_s=5.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(watch.serve)
        await trio.sleep(60)  # the watch idles with nothing to watch
        stuck = Socket(write_s=1e9)
        begun = trio.current_time()
        await _Watched(watch, stuck.send).send({"type": "http.response.body", "body": b"x"})
        nursery.cancel_scope.cancel()
    assert stuck.ended_at is not None and abs(stuck.ended_at - begun - 5.0) < 0.1
