"""Publishing a streamed attempt's frames, in order, batching what piles up.

The adapter hands chunks to `emit` without waiting; one pump task publishes them.
Chunks that become ready while a publish is in flight travel together in the next
frame, so a slow Redis round trip never slows the upstream read.
"""

from __future__ import annotations

import trio

from schemas.envelopes import Chunk, Head
from workers.queue import Queue


class ClientGone(Exception):
    """Nobody listens on the reply channel any more: the ingress or its client left."""


class StreamPublisher:
    """Owns the sequence numbers of one attempt's frames."""

    def __init__(self, queue: Queue, channel: str, request_id: str, attempt: int,
                 provider: str) -> None:
        self.queue = queue
        self.channel = channel
        self.request_id = request_id
        self.attempt = attempt
        self.provider = provider
        self.seq = 0
        self.started = False  # output may have reached the client: no retry from now on
        self._pending: list[bytes] = []
        self._events: list[str] = []
        self._wake = trio.Event()
        self._closed = False

    def emit(self, payload: bytes, event: str = "") -> None:
        """Queue one client-ready chunk (and its SSE event name, if any) for publishing."""
        self._pending.append(payload)
        self._events.append(event)
        self._wake.set()

    def close(self) -> None:
        """No more chunks: the pump returns once everything queued is published."""
        self._closed = True
        self._wake.set()

    async def pump(self) -> None:
        """Publish queued chunks until closed and drained. Raises ClientGone."""
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            if self._pending:
                if self.seq == 0:
                    self.started = True  # set before the await: the publish may land
                    await self._publish(Head(request_id=self.request_id, attempt=self.attempt,
                                             seq=0, provider=self.provider))
                batch, self._pending = self._pending, []
                events, self._events = self._events, []
                await self._publish(Chunk(request_id=self.request_id, attempt=self.attempt,
                                          seq=self.seq, payloads=batch,
                                          events=events if any(events) else []))
            if self._closed and not self._pending:
                return

    async def _publish(self, frame: Head | Chunk) -> None:
        listeners = await self.queue.publish(self.channel, frame)
        self.seq += 1
        if listeners == 0:
            raise ClientGone
