"""The reply demultiplexer: one pub/sub channel per ingress process, frames routed to
the request that waits for them, checked for order (invariant 1).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import coredis
import msgspec
import trio

from ingress.outcomes import KeptOutcomes
from ingress.stalls import LoopMonitor
from schemas import names
from schemas.envelopes import Chunk, Done, Error, Frame, Head, frame_decoder
from schemas.errors import GatewayError
from workers.connection import SUBSCRIBED, RedisClient, listeners, subscription
from workers.logs import log_event

BUFFER = 1024  # frames a slow client may fall behind before its stream is failed
WATCH_S = 0.25  # how often the hub asks Redis about its subscription
ZERO_CHECKS = 3  # answers in a row showing no subscriber: the subscription is gone
# Of redis_timeout_s: silence that long means Redis stopped answering. Half, so the hub
# has judged before a request's own Redis call times out (see Gateway.redis_call).
SILENT_SHARE = 0.5
BUSY_LAG_S = 1.0  # the event loop this late: refuse new requests (429) until it catches up
PROBE_LIMIT_S = 30.0  # a probe unanswered this long is abandoned and sent again
READ_BACK_S = 2.0  # bound on reading back kept outcomes after a (re-)subscription
# A request waiting when its subscription ended keeps waiting this long for its next frame
# (see `serve`); longer, and its frame may have been lost with the old subscription.
GAP_WAIT_S = 5.0


class RepliesLost(Exception):
    """The reply channel was interrupted: frames for this request may be lost."""


class ReplyHub:
    """Receives frames on `{sb}:reply:{ingress_id}` and hands each to its waiter.

    Waiters are failed only on evidence: a frame did not come within GAP_WAIT_S after the
    subscription ended (it may have been lost with it), Redis answered ZERO_CHECKS times
    in a row that the channel has no subscriber, or Redis said nothing at all (no answer
    to the probe, no frame) for SILENT_SHARE of `timeout_s`, not counting the time this
    process's own event loop was stalled (`loop`). A slow answer is no evidence: a busy
    ingress reads its sockets late. While the loop lags, `register` pushes back with 429
    `ingress_busy`, so the requests already admitted keep flowing. Give the hub a Redis
    client of its own: on the shared one, the probe and the frames queue behind every
    request's commands.
    """

    def __init__(self, redis: RedisClient, ingress_id: str | None = None, *,
                 timeout_s: float = 2.0) -> None:
        self.redis = redis
        self.ingress_id = ingress_id or uuid.uuid4().hex[:16]
        self.channel = names.reply(self.ingress_id)
        self.timeout_s = timeout_s
        self.ready = False
        self.loop = LoopMonitor()
        self._heard = 0.0  # when Redis last said anything to this hub (trio clock)
        self._asked: float | None = None  # when the unanswered probe was sent
        self._subscribers = -1  # the last probe's answer (-1: none yet)
        self._subscribed = trio.Event()
        self._subscription = trio.CancelScope()
        self._waiters: dict[str, trio.MemorySendChannel[Frame]] = {}
        self._overflowed: set[str] = set()  # requests whose client fell BUFFER frames behind
        self._kept = KeptOutcomes(redis)
        self._behind: dict[str, Callable[[], None]] = {}  # called when the client falls behind
        # Requests that waited through an ended subscription: trio time by which their next
        # frame must come (the watchdog fails them after it).
        self._gapped: dict[str, float] = {}

    def statistics(self) -> dict[str, int | bool | float]:
        return {"waiting": len(self._waiters), "ready": self.ready,
                "lag": round(self.loop.lag, 3)}

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Subscribe and dispatch until cancelled; a watchdog fails waiters when Redis goes.

        `started()` at once: requests see `ready` and answer 503 until subscribed.
        """
        async with trio.open_nursery() as nursery:
            await nursery.start(self.loop.serve)
            self._heard = trio.current_time()
            nursery.start_soon(self._probe)
            nursery.start_soon(self._watch)
            task_status.started()
            while True:
                with trio.CancelScope() as self._subscription:
                    try:
                        await self._subscribe()
                    except Exception as exc:
                        log_event("reply_channel_error", error=type(exc).__name__)
                if self._subscribed.is_set():  # the subscription ended: frames may be lost
                    self.ready = False
                    self._through_gap()
                await trio.sleep(WATCH_S)

    async def _subscribe(self) -> None:
        async with subscription(self.redis, self.channel) as pubsub:
            async for message in pubsub:
                self._heard = trio.current_time()
                if message["type"] == SUBSCRIBED:
                    # (Re-)subscribed: outcomes published meanwhile reached nobody and were
                    # kept by the worker; read them back instead of failing their requests.
                    await self._read_back()
                    self.ready = True
                    self._subscribed.set()
                elif message["type"] == "message" and isinstance(message["data"], bytes):
                    self._dispatch(message["data"])

    async def _read_back(self) -> None:
        """Deliver the kept outcomes of the requests waiting here (bounded: a Redis that
        does not answer leaves them to the watchdog)."""
        if not self._waiters:
            return
        with trio.move_on_after(READ_BACK_S):
            try:
                frames = await self._kept.take(list(self._waiters))
            except Exception as exc:
                log_event("read_back_failed", error=type(exc).__name__)
                return
            for data in frames:
                self._dispatch(data)
            if frames:
                log_event("replies_read_back", ingress=self.ingress_id, frames=len(frames))


    def heard_since(self, when: float) -> bool:
        """Whether Redis said anything to the hub (an answer, a frame) after `when`."""
        return self._heard > when

    async def wait_ready(self) -> None:
        """Wait until the reply channel is subscribed for the first time."""
        await self._subscribed.wait()

    async def _probe(self) -> None:
        """Ask Redis every WATCH_S how many subscribers our channel has. No short timeout:
        how long an answer takes is judged by `_watch`, which can tell who was slow."""
        while True:
            self._asked = trio.current_time()
            with trio.move_on_after(PROBE_LIMIT_S):
                try:
                    subscribers = await listeners(self.redis, self.channel)
                except (coredis.exceptions.RedisError, OSError):
                    pass  # an error is no answer: ask again
                else:
                    self._heard = trio.current_time()
                    self._subscribers = subscribers
                    self._asked = None
            await trio.sleep(WATCH_S)

    async def _watch(self) -> None:
        """Judge the subscription every WATCH_S (see the class docstring).

        A subscription that is really gone, or a Redis that stopped answering, fails the
        requests that wait (503: their frames may never come) and refuses new ones until
        it is back; a subscriber shown missing is replaced.
        """
        zeros = 0
        answered = self._heard
        stalled = self.loop.stalled  # the loop's stall counter when Redis was last heard
        while True:
            # After a stall this task and the loop's sampler wake in one batch, in an
            # order trio picks: count our own late wake-up too, or the stall is Redis's.
            due = trio.current_time() + WATCH_S
            await trio.sleep_until(due)
            self._fail_gapped()
            if self._heard != answered:
                answered, stalled = self._heard, self.loop.stalled
            now = trio.current_time()
            if self._asked is not None:
                silence = now - self._heard - self.loop.stalled_since(stalled, due)
                if silence >= SILENT_SHARE * self.timeout_s:
                    if self.ready:
                        log_event("reply_channel_lost", ingress=self.ingress_id,
                                  reason="redis_silent", silent_s=round(silence, 2))
                    self.ready = False
                    self._fail_all("Redis stopped answering")
                    continue
            if self._subscribers == 0 and self._subscribed.is_set() and self._asked is None:
                zeros += 1
                if zeros >= ZERO_CHECKS:  # the subscriber is gone or stuck: start a fresh one
                    if self.ready:
                        log_event("reply_channel_lost", ingress=self.ingress_id,
                                  reason="no_subscriber")
                    self.ready = False
                    self._fail_all("the reply channel is not subscribed")
                    self._subscription.cancel()
                    zeros = 0
                continue
            zeros = 0
            if self._asked is None:
                self.ready = self._subscribed.is_set() and self._subscribers > 0

    def _through_gap(self) -> None:
        """The subscription ended (Redis ends shard channels' subscriptions on a master
        that loses their slot: a failover, a reshard). Its waiters keep waiting: what was
        published while nobody listened is kept by the worker and read back when the next
        subscription begins (`_read_back`). A frame taken by the old subscription but not
        handed on is lost with it, so each waiter's next frame must come within
        GAP_WAIT_S, or the watchdog fails it."""
        due = trio.current_time() + GAP_WAIT_S
        for request_id in self._waiters:
            self._gapped.setdefault(request_id, due)
        if self._waiters:
            log_event("reply_channel_gap", ingress=self.ingress_id, requests=len(self._waiters))

    def _fail_gapped(self) -> None:
        """Fail the waiters whose next frame did not come in time after a gap."""
        now = trio.current_time()
        late = [request_id for request_id, due in self._gapped.items() if due <= now]
        self._fail(late, "no frame after the subscription ended")

    def _dispatch(self, data: bytes) -> None:
        try:
            frame = frame_decoder.decode(data)
        except msgspec.DecodeError:
            log_event("frame_undecodable", size=len(data))
            return
        waiter = self._waiters.get(frame.request_id)
        if waiter is None:
            return  # the request already ended
        if self._gapped:  # (almost always empty: no work per frame then)
            self._gapped.pop(frame.request_id, None)  # its frames come: the gap is behind it
        try:
            waiter.send_nowait(frame)
        except trio.WouldBlock:  # the client reads too slowly: end its stream explicitly
            self._waiters.pop(frame.request_id, None)
            self._overflowed.add(frame.request_id)
            waiter.close()
            behind = self._behind.pop(frame.request_id, None)
            if behind is not None:
                behind()  # withdraw its job now, not when its blocked write returns

    def _fail_all(self, reason: str) -> None:
        self._fail(list(self._waiters), reason)

    def _fail(self, request_ids: list[str], reason: str) -> None:
        """End these requests' frames: each waiter raises RepliesLost (frames may be lost)."""
        failed = 0
        for request_id in request_ids:
            self._gapped.pop(request_id, None)
            waiter = self._waiters.pop(request_id, None)
            if waiter is not None:
                waiter.close()
                failed += 1
        if failed:
            log_event("replies_lost", reason=reason, requests=failed)

    def register(self, request_id: str) -> Replies:
        """Start receiving a request's frames (before its job is enqueued); close when done."""
        if not self.ready:
            raise GatewayError(503, "service_unavailable", "the gateway cannot reach Redis")
        if self.loop.lag > BUSY_LAG_S:
            raise GatewayError(429, "ingress_busy", "this gateway process is overloaded; "
                               "try again shortly", retry_after=1)
        send, receive = trio.open_memory_channel[Frame](BUFFER)
        self._waiters[request_id] = send
        return Replies(self, request_id, receive)

    def _unregister(self, request_id: str) -> None:
        self._waiters.pop(request_id, None)
        self._gapped.pop(request_id, None)
        self._overflowed.discard(request_id)
        self._behind.pop(request_id, None)


class Replies:
    """One request's frames, checked: one attempt only once output began, no gaps.

    Once a Head (or a whole answer) committed the request to an attempt, frames of older
    attempts are dropped, error frames included (a worker presumed dead may still publish),
    and the attempt's frames must come in `seq` order; its error may come after a gap
    (the publish of the frame before it timed out), never before what was received.
    """

    def __init__(self, hub: ReplyHub, request_id: str,
                 receive: trio.MemoryReceiveChannel[Frame]) -> None:
        self._hub = hub
        self._request_id = request_id
        self._receive = receive
        self.attempt: int | None = None  # the attempt whose output the client gets
        self._next_seq = 0

    def when_behind(self, callback: Callable[[], None]) -> None:
        """Call `callback` (at once, from the hub) if the client falls BUFFER frames behind."""
        if self._request_id in self._hub._waiters:
            self._hub._behind[self._request_id] = callback

    def close(self) -> None:
        """Stop receiving; frames that still arrive are dropped."""
        self._hub._unregister(self._request_id)
        self._receive.close()

    async def next(self) -> Frame:
        """The next frame in order. Raises RepliesLost or GatewayError (order broken)."""
        while True:
            try:
                frame = await self._receive.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                if self._request_id in self._hub._overflowed:
                    raise GatewayError(502, "client_too_slow",
                                       f"the client fell {BUFFER} frames behind the answer") from None
                raise RepliesLost from None
            if self.attempt is None:
                if isinstance(frame, Error):
                    return frame  # no output yet: the worker gave up on the job
                if isinstance(frame, Head | Done) and frame.seq == 0:
                    self.attempt, self._next_seq = frame.attempt, 1
                    return frame
                continue  # the tail of an attempt that never began for this client
            if frame.attempt < self.attempt:
                continue  # a stale attempt (a worker presumed dead), its errors included
            if frame.attempt > self.attempt:
                if isinstance(frame, Error):
                    return frame  # a later run of the job ended it: the answer is incomplete
                raise GatewayError(502, "stream_restarted",
                                   "the job was restarted after output began; the answer is incomplete")
            if isinstance(frame, Error) and frame.seq > self._next_seq:
                # The attempt ends in an error either way; frames lost just before it (a
                # publish that timed out) change nothing the client is told.
                return frame
            if frame.seq != self._next_seq:
                raise GatewayError(502, "stream_gap",
                                   f"frame {self._next_seq} of the answer was lost")
            self._next_seq += 1
            match frame:
                case Chunk() | Done() | Error():
                    return frame
                case Head():
                    raise GatewayError(502, "stream_restarted",
                                       "the job was restarted after output began")
