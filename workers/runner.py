"""Running one delivered job: retries, failover, and publishing its outcome.

Retries and failover happen only while nothing was published for the attempt
(invariant 2). A job is acknowledged only in the same MULTI that publishes its
outcome or moves it to the next route's stream (invariant 3).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from functools import partial

import coredis
import msgspec
import trio

from schemas.chat import Usage
from schemas.config import Config
from schemas.envelopes import Done, Error, Job
from schemas.errors import GatewayError
from schemas.pricing import MICRO_USD, Prices
from schemas.tracking import log_ids
from workers.batches.gate import batch_open, still_open
from workers.batches.lines import LineOutcome, batch_cost, batch_line
from workers.health import ProviderHealth
from workers.logs import log_event
from workers.metrics import WorkerMetrics
from workers.pace import NotWanted, Pace, throttled
from workers.providers._base import Adapter, Answer, Call, UpstreamFailure
from workers.providers._http import traced
from workers.publisher import ClientGone, StreamPublisher
from workers.queue import Delivery, Queue
from workers.responses import Responses
from workers.tracing import Spans

BACKOFF_S = 0.25
BODY_TTL_S = 60  # how long a stored big answer waits for its ingress to read it


@dataclass(slots=True)
class _Progress:
    """The current try of a job: what it published and used, read however the job ends."""

    publisher: StreamPublisher | None = None
    call: Call | None = None
    tries: int = 0  # upstream calls made in this run (for the metrics)

    @property
    def began(self) -> bool:
        """Output may have reached the client."""
        return self.publisher is not None and self.publisher.started

    @property
    def seq(self) -> int:
        """The number of the attempt's next frame: an error follows what was published."""
        return self.publisher.seq if self.publisher is not None else 0

    def cut_usage(self) -> Usage | None:
        """What a stream that ended early used (None when no output began: nothing to meter)."""
        return self.call.meter.usage() if self.began and self.call is not None else None


class Withdrawn(Exception):
    """The client of a reclaimed or forwarded copy left before it started."""


@dataclass
class Runner:
    """Runs jobs for the providers of one worker process."""

    config: Config
    queue: Queue
    adapters: dict[str, Adapter]
    running: dict[str, trio.CancelScope] = field(default_factory=dict)
    gone: set[str] = field(default_factory=set)  # running jobs whose client left
    drain_at: float = math.inf  # trio time when running streams are ended (see `drain`)
    spans: Spans = field(default_factory=Spans)  # a span per upstream call (tracing on)
    health: ProviderHealth = field(init=False)  # cool-downs: each attempt's outcome counts
    metrics: WorkerMetrics = field(init=False)  # this process's own registry
    prices: Prices = field(init=False)  # route prices of this worker's own config
    responses: Responses = field(init=False)  # the Responses API over each kind's chat call
    pace: Pace = field(init=False)  # the providers' rpm/tpm, shared through Redis

    def __post_init__(self) -> None:
        self.prices = Prices(self.config)
        self.health = ProviderHealth(self.queue.redis, self.config)
        self.metrics = WorkerMetrics(lambda: len(self.running))
        self.responses = Responses(self.queue.redis, self.config)
        self.pace = Pace(self.queue.redis, self.config)

    def cancel(self, request_id: str) -> None:
        """The client left: stop its job if it runs here."""
        scope = self.running.get(request_id)
        if scope is not None:
            self.gone.add(request_id)
            scope.cancel()

    def drain(self, grace_s: float) -> None:
        """Give running jobs `grace_s` seconds. A stream still running then ends with an error
        frame (its client is told at once, its usage metered, its job acknowledged); a job
        with no output yet stays pending, and another worker runs it."""
        self.drain_at = trio.current_time() + grace_s
        for scope in self.running.values():
            scope.deadline = min(scope.deadline, self.drain_at)

    async def run(self, delivery: Delivery) -> None:
        """Run one job to an outcome, then acknowledge it. Never raises for job failures."""
        job = delivery.job
        if job.batch and not await batch_open(self.queue, self.config, delivery, partial(
                self.metrics.batch_line, job.route.provider)):
            return  # its batch ended or expired: acknowledged without an upstream call
        attempt = job.attempt + delivery.earlier_deliveries
        started = time.monotonic()
        outcome: Done | Error | None = None
        usage: Usage | None = None
        forward: Job | None = None
        failed: GatewayError | None = None  # why this route did not answer (for the log)
        answered = False  # the provider answered this attempt: its health's success
        progress = _Progress()
        with trio.CancelScope(deadline=self.drain_at) as scope:
            self.running[job.request_id] = scope
            try:
                async with self.health.watch(job.route.provider):
                    outcome, usage = await self._attempt(delivery, attempt, progress)
                answered = True
            except UpstreamFailure as failure:
                failed = failure
                next_index = job.route_index + 1
                if failure.failover and next_index < len(job.routes):
                    forward = msgspec.structs.replace(job, route_index=next_index,
                                                      attempt=attempt + 1)
                    log_event("job_failover", request_id=job.request_id,
                              provider=job.route.provider, code=failure.code,
                              to=job.routes[next_index].provider)
                else:
                    outcome = self._error(delivery, attempt, failure, progress)
            except GatewayError as failure:
                failed = failure
                outcome = self._error(delivery, attempt, failure, progress)
            except (Withdrawn, NotWanted):  # (a batch line left pending: re-run, dropped)
                outcome = None
            except ClientGone:  # a frame reached no ingress: the channel is re-subscribing
                outcome = self._error(delivery, attempt, GatewayError(
                    503, "reply_channel_lost", "the answer was interrupted on its way back"), progress)
            except Exception as exc:  # a bug must fail one job, never the worker process
                log_event("job_crashed", request_id=job.request_id, provider=job.route.provider,
                          error=type(exc).__name__)
                outcome = self._error(delivery, attempt, GatewayError(
                    500, "internal_error", "the gateway failed while running this request"),
                    progress)
            finally:
                self.running.pop(job.request_id, None)
        client_left = job.request_id in self.gone
        self.gone.discard(job.request_id)
        if scope.cancelled_caught:
            outcome, forward = None, None  # the client left; nothing to tell anyone
            if not client_left:  # the drain deadline
                if not progress.began:
                    log_event("job_interrupted", request_id=job.request_id,
                              provider=job.route.provider)
                    return  # left pending: another worker runs it, invisibly to the client
                outcome = self._error(delivery, attempt, GatewayError(
                    503, "worker_shutdown",
                    "the worker serving this stream shut down before the answer was complete"),
                    progress)
        if usage is None:
            usage = progress.cut_usage()  # a stream that ended early is metered all the same
        line = None
        if job.batch and outcome is not None and forward is None:  # its output file's line
            line = batch_line(self.config, job, attempt, outcome, failed)
        if outcome is not None or forward is not None or not job.batch:
            # (A batch line with no outcome, cut off or lost, stays pending: it is re-run.)
            await self._finish(delivery, outcome, usage, forward, line,
                               healthy=answered and not scope.cancelled_caught)
        kind = "forwarded" if forward else "retried" if line and line.mode == "retry" else \
            type(outcome).__name__.lower() if outcome else "cancelled"
        # A route that failed over says how it failed: its answer was not the client's 200.
        status = outcome.status if isinstance(outcome, Error) else \
            failed.status if failed and forward else 200
        self.metrics.job_finished(job.route.provider, kind, status, time.monotonic() - started,
                                  progress.tries)
        why = _why(failed) if failed and (forward or isinstance(outcome, Error)) else {}
        log_event("job", request_id=job.request_id, org=job.org, model=job.model,
                  provider=job.route.provider, attempt=attempt, outcome=kind, status=status,
                  **why,
                  ms=round((time.monotonic() - started) * 1000, 1),
                  prompt_tokens=usage.prompt_tokens if usage else 0,
                  completion_tokens=usage.completion_tokens if usage else 0,
                  **log_ids(job))

    async def _attempt(self, delivery: Delivery, attempt: int,
                       progress: _Progress) -> tuple[Done | Error, Usage]:
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
        if delivery.earlier_deliveries and job.stream and await self._output_began(job):
            # The client saw part of an answer from a worker that died: another upstream call
            # could only be refused by the ingress (one attempt once output began).
            raise GatewayError(502, "worker_lost",
                               "the worker serving this stream stopped; the answer is incomplete")
        tries = provider.max_retries + 1
        for try_index in range(tries):
            ticket = await self.pace.acquire(  # waits until the call fits rpm/tpm
                job, still_open(self.queue, self.config, job) if job.batch else None)
            remaining = job.deadline - time.time()
            if remaining <= 0:
                raise GatewayError(504, "upstream_timeout",
                                   "the request's deadline passed before it could run")
            progress.tries += 1
            call = progress.call = Call(job, route.model)
            publisher = progress.publisher = StreamPublisher(self.queue, job, attempt,
                                                             self.config.limits)
            try:
                with self.spans.upstream(job, call.span_id, provider.kind, attempt) as span, \
                        trio.fail_after(min(provider.timeout_s, remaining)), traced(call.trace):
                    if job.stream:
                        usage = await self._stream(adapter, call, publisher)
                        self.spans.tokens(span, usage)
                        await self.pace.settle(ticket, usage)
                        return Done(request_id=job.request_id, attempt=attempt,
                                    seq=publisher.seq, provider=route.provider,
                                    prompt_tokens=usage.prompt_tokens,
                                    completion_tokens=usage.completion_tokens), usage
                    answer = await _plain_call(adapter, call, self.responses)
                    self.spans.tokens(span, answer.usage)
            except trio.TooSlowError:
                failure = UpstreamFailure(504, "upstream_timeout",
                                          f"provider {route.provider!r} timed out",
                                          provider=route.provider, retryable=True)
                if publisher.started or try_index + 1 == tries:
                    raise failure from None
                continue
            except UpstreamFailure as failure:
                await self.pace.on_failure(job, failure)  # a 429 pauses its batch traffic
                # A batch line's 429 waits for the pause in the batch's retry set, not here.
                if publisher.started or not failure.retryable or try_index + 1 == tries \
                        or (job.batch != "" and throttled(failure)):
                    if publisher.started:
                        failure.failover = False  # output began: no other route may answer
                    raise
                await trio.sleep(BACKOFF_S * 2**try_index)
                continue
            await self.pace.settle(ticket, answer.usage)
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
                elif call.job.endpoint == "responses":
                    usage = await self.responses.stream(adapter, call, publisher.emit)
                elif call.job.endpoint == "completions":
                    usage = await adapter.completion_stream(call, publisher.emit)
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

    async def _output_began(self, job: Job) -> bool:
        try:
            with trio.fail_after(self.config.limits.redis_timeout_s):
                return await self.queue.output_began(job.request_id)
        except (trio.TooSlowError, coredis.exceptions.RedisError, OSError) as exc:
            raise GatewayError(503, "service_unavailable",
                               "the gateway cannot reach Redis") from exc

    def _error(self, delivery: Delivery, attempt: int, failure: GatewayError,
               progress: _Progress) -> Error:
        job = delivery.job
        # Numbered after whatever this attempt already published (the ingress checks order,
        # and ignores frames of attempts older than the one it follows).
        return Error(request_id=job.request_id, attempt=attempt, seq=progress.seq,
                     status=failure.status, body=failure.encode(), provider=job.route.provider)

    async def _finish(self, delivery: Delivery, outcome: Done | Error | None,
                      usage: Usage | None, forward: Job | None,
                      line: LineOutcome | None = None, *, healthy: bool = False) -> bool:
        """Publish (or, for a batch line, write its `line`), meter and acknowledge; False
        if Redis did not take it (the job stays pending and is reclaimed)."""
        metered = None
        if usage is not None:  # a complete answer, or output that went out before it ended
            metered = {"tokens": usage.prompt_tokens + usage.completion_tokens,
                       "prompt_tokens": usage.prompt_tokens,
                       "completion_tokens": usage.completion_tokens, "requests": 1}
            # Cost in micro-dollars (HINCRBY counts integers). Priced requests are counted,
            # so a report can say "unpriced" for the rest (requests - priced_requests), and
            # a deployment without prices meters no new fields.
            job = delivery.job
            cost = batch_cost(self.config, job, self.prices.cost(
                job.model, job.route, usage.prompt_tokens, usage.completion_tokens))
            metered["cost_micro_usd"] = cost or 0
            metered["priced_requests"] = 0 if cost is None else 1
        limits = self.config.limits
        size = len(outcome.body) if isinstance(outcome, Done) else 0
        with trio.CancelScope(shield=True), trio.move_on_after(limits.transfer_s(size)) as scope:
            try:
                if isinstance(outcome, Done) and size > limits.max_frame_bytes and not line:
                    outcome = await self._stored(delivery.job, outcome)
                # A failure is counted in the day's `errors` whether or not it used tokens;
                # only one that used tokens counts in `requests` (docs/architecture.md). A
                # batch line waiting for its retry has not failed (yet).
                error = isinstance(outcome, Error) and not (line and line.mode == "retry")
                if await self.queue.finish(delivery, None if line else outcome, usage=metered,
                                           forward=forward, error=error, line=line,
                                           retention_days=self.config.usage.retention_days,
                                           healthy=healthy):
                    if metered is not None:  # counted once: only the run that metered it
                        self.metrics.cost.labels(delivery.job.model, delivery.job.route.provider
                                                 ).inc(metered["cost_micro_usd"] / MICRO_USD)
                    if line is not None:
                        self.metrics.batch_line(delivery.job.route.provider, line.counter
                                                or ("retried" if line.mode == "retry" else
                                                    "expired" if line.mode == "line" else
                                                    "dropped"))
                    return True
                # Another worker took the job over (we were presumed dead): its run counts.
                log_event("job_not_owned", request_id=delivery.job.request_id)
                return False
            except Exception as exc:  # Redis trouble: the job stays pending and is reclaimed
                log_event("job_finish_failed", request_id=delivery.job.request_id,
                          error=type(exc).__name__)
        if scope.cancelled_caught:
            log_event("job_finish_timeout", request_id=delivery.job.request_id)
        return False

    async def _stored(self, job: Job, done: Done) -> Done:
        """The Done frame of an answer too big for one frame: its body stored under a key.

        Redis drops a subscriber whose pub/sub output buffer passes its limit (32 MB by
        default), and with it every other answer on that ingress; a key is read by the
        ingress at its own pace (docs/architecture.md).
        """
        # The ingress reads it as soon as the small Done frame arrives; the TTL only clears
        # what an ingress (or its client) that went away never read.
        ttl = BODY_TTL_S + int(self.config.limits.transfer_s(len(done.body)))
        key = await self.queue.store_body(job.request_id, done.body, ttl)
        return msgspec.structs.replace(done, body=b"", body_key=key, body_bytes=len(done.body))


def _why(failure: GatewayError) -> dict[str, object]:
    """The `job` log line's fields for a failed route: our code, and the upstream's status."""
    upstream = (failure.details or {}).get("status")
    return {"code": failure.code, **({"upstream_status": upstream} if upstream else {})}


async def _plain_call(adapter: Adapter, call: Call, responses: Responses) -> Answer:
    """The adapter method that serves a non-streamed job of this endpoint."""
    match call.job.endpoint:
        case "chat":
            return await adapter.complete(call)
        case "responses":
            return await responses.complete(adapter, call)
        case "embeddings":
            return await adapter.embed(call)
        case "completions":
            return await adapter.completion(call)
        case "images" | "transcriptions" | "translations":
            return await adapter.media(call)
        case _:  # a native API: the provider's own request, relayed
            return await adapter.native(call)


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out
