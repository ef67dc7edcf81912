"""Running one delivered job: retries, failover, and publishing its outcome.

Retries and failover happen only while nothing was published for the attempt
(invariant 2). A job is acknowledged only in the same MULTI that publishes its
outcome or moves it to the next route's stream (invariant 3).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import msgspec
import trio

from schemas.chat import Usage
from schemas.config import Config
from schemas.envelopes import Done, Error, Job
from schemas.errors import GatewayError
from workers.health import ProviderHealth
from workers.logs import log_event
from workers.providers._base import Adapter, Answer, Call, UpstreamFailure
from workers.publisher import ClientGone, StreamPublisher
from workers.queue import Delivery, Queue

BACKOFF_S = 0.25


class Withdrawn(Exception):
    """The client of a reclaimed or forwarded copy left before it started."""


@dataclass
class Runner:
    """Runs jobs for the providers of one worker process."""

    config: Config
    queue: Queue
    adapters: dict[str, Adapter]
    running: dict[str, trio.CancelScope] = field(default_factory=dict)
    health: ProviderHealth = field(init=False)  # cool-downs: each attempt's outcome counts

    def __post_init__(self) -> None:
        self.health = ProviderHealth(self.queue.redis, self.config)

    def cancel(self, request_id: str) -> None:
        """The client left: stop its job if it runs here."""
        scope = self.running.get(request_id)
        if scope is not None:
            scope.cancel()

    async def run(self, delivery: Delivery) -> None:
        """Run one job to an outcome, then acknowledge it. Never raises for job failures."""
        job = delivery.job
        attempt = job.attempt + delivery.earlier_deliveries
        started = time.monotonic()
        outcome: Done | Error | None = None
        usage: Usage | None = None
        forward: Job | None = None
        with trio.CancelScope() as scope:
            self.running[job.request_id] = scope
            try:
                async with self.health.watch(job.route.provider):
                    outcome, usage = await self._attempt(delivery, attempt)
            except UpstreamFailure as failure:
                next_index = job.route_index + 1
                if failure.failover and next_index < len(job.routes):
                    forward = msgspec.structs.replace(job, route_index=next_index,
                                                      attempt=attempt + 1)
                    log_event("job_failover", request_id=job.request_id,
                              provider=job.route.provider, code=failure.code,
                              to=job.routes[next_index].provider)
                else:
                    outcome = self._error(delivery, attempt, failure)
            except GatewayError as failure:
                outcome = self._error(delivery, attempt, failure)
            except Withdrawn:
                outcome = None
            except ClientGone:  # a frame reached no ingress: the channel is re-subscribing
                outcome = self._error(delivery, attempt, GatewayError(
                    503, "reply_channel_lost", "the answer was interrupted on its way back"))
            except Exception as exc:  # a bug must fail one job, never the worker process
                log_event("job_crashed", request_id=job.request_id, provider=job.route.provider,
                          error=type(exc).__name__)
                outcome = self._error(delivery, attempt, GatewayError(
                    500, "internal_error", "the gateway failed while running this request"))
            finally:
                self.running.pop(job.request_id, None)
        if scope.cancelled_caught:
            outcome, forward = None, None  # the client left; nothing to tell anyone
        await self._finish(delivery, outcome, usage, forward)
        log_event("job", request_id=job.request_id, org=job.org, model=job.model,
                  provider=job.route.provider, attempt=attempt,
                  outcome="forwarded" if forward else type(outcome).__name__.lower()
                  if outcome else "cancelled",
                  status=outcome.status if isinstance(outcome, Error) else 200,
                  ms=round((time.monotonic() - started) * 1000, 1),
                  prompt_tokens=usage.prompt_tokens if usage else 0,
                  completion_tokens=usage.completion_tokens if usage else 0)

    async def _attempt(self, delivery: Delivery, attempt: int) -> tuple[Done | Error, Usage]:
        job = delivery.job
        route = job.route
        provider = self.config.providers.get(route.provider)
        adapter = self.adapters.get(route.provider)
        if provider is None or adapter is None:
            raise UpstreamFailure(502, "no_provider", f"provider {route.provider!r} is not served",
                                  provider=route.provider)
        if delivery.earlier_deliveries >= self.config.limits.max_deliveries:
            raise GatewayError(502, "worker_lost",
                               "the job was interrupted too many times by failing workers")
        if (job.route_index or delivery.earlier_deliveries) and await self._withdrawn(job):
            raise Withdrawn  # a failover or reclaimed copy of a job whose client left
        call = Call(job, route.model)
        tries = provider.max_retries + 1
        for try_index in range(tries):
            remaining = job.deadline - time.time()
            if remaining <= 0:
                raise GatewayError(504, "upstream_timeout",
                                   "the request's deadline passed before it could run")
            publisher = StreamPublisher(self.queue, job.reply_to, job.request_id, attempt,
                                        route.provider)
            try:
                with trio.fail_after(min(provider.timeout_s, remaining)):
                    if job.stream:
                        usage = await self._stream(adapter, call, publisher)
                        return Done(request_id=job.request_id, attempt=attempt,
                                    seq=publisher.seq, provider=route.provider,
                                    prompt_tokens=usage.prompt_tokens,
                                    completion_tokens=usage.completion_tokens), usage
                    answer = await _plain_call(adapter, call)
            except trio.TooSlowError:
                failure = UpstreamFailure(504, "upstream_timeout",
                                          f"provider {route.provider!r} timed out",
                                          provider=route.provider, retryable=True)
                if publisher.started or try_index + 1 == tries:
                    raise failure from None
                continue
            except UpstreamFailure as failure:
                if publisher.started or not failure.retryable or try_index + 1 == tries:
                    if publisher.started:
                        failure.failover = False  # output began: no other route may answer
                    raise
                await trio.sleep(BACKOFF_S * 2**try_index)
                continue
            return Done(request_id=job.request_id, attempt=attempt, seq=0,
                        provider=route.provider, body=answer.body,
                        prompt_tokens=answer.usage.prompt_tokens,
                        completion_tokens=answer.usage.completion_tokens), answer.usage
        raise AssertionError("unreachable")

    async def _stream(self, adapter: Adapter, call: Call, publisher: StreamPublisher) -> Usage:
        """The adapter reads upstream while the publisher's pump publishes frames."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(publisher.pump)
                if call.job.endpoint == "chat":
                    usage = await adapter.stream(call, publisher.emit)
                else:
                    usage = await adapter.native_stream(call, publisher.emit)
                publisher.close()
        except BaseExceptionGroup as group:
            # One side failed and the other was cancelled: surface the one real failure.
            failures = [e for e in _leaves(group) if not isinstance(e, trio.Cancelled)]
            if len(failures) == 1:
                raise failures[0] from None
            raise
        return usage

    async def _withdrawn(self, job: Job) -> bool:
        """Whether the client left; bounded, so a hung Redis cannot hold the slot."""
        try:
            with trio.fail_after(self.config.limits.redis_timeout_s):
                return await self.queue.was_withdrawn(job.request_id)
        except trio.TooSlowError:
            raise GatewayError(503, "service_unavailable",
                               "the gateway cannot reach Redis") from None

    def _error(self, delivery: Delivery, attempt: int, failure: GatewayError) -> Error:
        job = delivery.job
        # Numbered after whatever this attempt already published (the ingress checks order).
        return Error(request_id=job.request_id, attempt=attempt, seq=0, status=failure.status,
                     body=failure.encode(), provider=job.route.provider)

    async def _finish(self, delivery: Delivery, outcome: Done | Error | None,
                      usage: Usage | None, forward: Job | None) -> None:
        metered = None
        if usage is not None and isinstance(outcome, Done | type(None)):
            metered = {"tokens": usage.prompt_tokens + usage.completion_tokens,
                       "prompt_tokens": usage.prompt_tokens,
                       "completion_tokens": usage.completion_tokens, "requests": 1}
        with trio.CancelScope(shield=True), trio.move_on_after(self.config.limits.redis_timeout_s) as scope:
            try:
                if not await self.queue.finish(delivery, outcome, usage=metered, forward=forward):
                    # Another worker took the job over (we were presumed dead): its run counts.
                    log_event("job_not_owned", request_id=delivery.job.request_id)
            except Exception as exc:  # Redis trouble: the job stays pending and is reclaimed
                log_event("job_finish_failed", request_id=delivery.job.request_id,
                          error=type(exc).__name__)
        if scope.cancelled_caught:
            log_event("job_finish_timeout", request_id=delivery.job.request_id)


async def _plain_call(adapter: Adapter, call: Call) -> Answer:
    """The adapter method that serves a non-streamed job of this endpoint."""
    match call.job.endpoint:
        case "chat":
            return await adapter.complete(call)
        case "embeddings":
            return await adapter.embed(call)
        case _:  # a native API: the provider's own request, relayed
            return await adapter.native(call)


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out
