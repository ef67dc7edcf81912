"""Publishing a streamed attempt's frames, in order, batching what piles up.

The adapter hands chunks to `emit` without waiting; one pump task publishes them.
Chunks that become ready while a publish is in flight travel together in the next
frame, so a slow Redis round trip never slows the upstream read. Both sides are
bounded: a frame holds at most `limits.max_frame_bytes` of chunks (one bigger chunk
travels alone), at most `limits.stream_buffer_bytes` may wait, and each publish has
`limits.redis_timeout_s`; a publisher that cannot keep up ends the job with an error.
"""

from __future__ import annotations

import time

import coredis
import trio

from schemas.config import Limits
from schemas.envelopes import Chunk, Head, Job
from schemas.errors import GatewayError
from workers.queue import Queue


class ClientGone(Exception):
    """Nobody listens on the reply channel any more: the ingress or its client left."""


class StreamPublisher:
    """Owns the sequence numbers of one attempt's frames."""

    def __init__(self, queue: Queue, job: Job, attempt: int, limits: Limits) -> None:
        self.queue = queue
        self.job = job
        self.attempt = attempt
        self.limits = limits
        self.seq = 0
        self.started = False  # output may have reached the client: no retry from now on
        self._pending: list[tuple[bytes, str]] = []  # (payload, SSE event name)
        self._pending_bytes = 0
        self._wake = trio.Event()
        self._closed = False

    def emit(self, payload: bytes, event: str = "") -> None:
        """Queue one client-ready chunk (and its SSE event name, if any) for publishing.

        Raises GatewayError when more than `stream_buffer_bytes` wait: Redis does not take
        the frames as fast as upstream sends them, and memory must stay bounded.
        """
        if self._pending_bytes + len(payload) > self.limits.stream_buffer_bytes and self._pending:
            raise GatewayError(502, "stream_stalled",
                               "the gateway could not relay the answer as fast as it came")
        self._pending.append((payload, event))
        self._pending_bytes += len(payload)
        self._wake.set()

    def close(self) -> None:
        """No more chunks: the pump returns once everything queued is published."""
        self._closed = True
        self._wake.set()

    async def pump(self) -> None:
        """Publish queued chunks until closed and drained. Raises ClientGone or GatewayError.

        The Head goes out with the first chunk, or at close when there was none: a stream
        with no content is still a stream (the ingress ends it as its dialect does).
        """
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            if self.seq == 0 and (self._pending or self._closed):
                self.started = True  # set before the await: the publish may land
                await self._publish(Head(request_id=self.job.request_id, attempt=self.attempt,
                                         seq=0, provider=self.job.route.provider))
            while self._pending:
                batch = self._take_batch()
                events = [event for _, event in batch]
                await self._publish(Chunk(request_id=self.job.request_id, attempt=self.attempt,
                                          seq=self.seq, payloads=[p for p, _ in batch],
                                          events=events if any(events) else []))
            if self._closed:
                return

    def _take_batch(self) -> list[tuple[bytes, str]]:
        """The queued chunks that fit in one frame (at least one)."""
        size, count = 0, 0
        for payload, _ in self._pending:
            if count and size + len(payload) > self.limits.max_frame_bytes:
                break
            size += len(payload)
            count += 1
        batch, self._pending = self._pending[:count], self._pending[count:]
        self._pending_bytes -= size
        return batch

    async def _publish(self, frame: Head | Chunk) -> None:
        try:
            # Shielded (and bounded): a publish cut off mid-flight may or may not have landed,
            # and the error frame that may follow must know the number of the next frame.
            with trio.CancelScope(shield=True), trio.fail_after(self.limits.redis_timeout_s):
                if isinstance(frame, Head):
                    # Marked in the same step: a worker that reclaims this job must not
                    # call upstream again once the client has seen output (see Runner).
                    ttl = max(int(self.job.deadline - time.time()), 0) + 60
                    listeners = await self.queue.publish_head(self.job.reply_to, frame, ttl)
                else:
                    listeners = await self.queue.publish(self.job.reply_to, frame,
                                                         self.limits.redis_timeout_s)
        except trio.TooSlowError:
            self.seq += 1  # it may still land (Redis queued it): the error frame comes after
            raise GatewayError(503, "service_unavailable",
                               "the gateway could not publish the answer in time") from None
        except (coredis.exceptions.RedisError, OSError) as exc:
            self.seq += 1
            raise GatewayError(503, "service_unavailable",
                               "the gateway lost Redis while publishing the answer") from exc
        self.seq += 1
        if listeners == 0:
            raise ClientGone
