"""The request path of a chat completion: key, quota, route, enqueue, wait, relay."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import coredis
import trio

from ingress.admission import (
    ADMITTED,
    EXPIRY_GRACE_S,
    Admission,
    estimate_tokens,
    holds_for,
    prompt_estimate,
)
from ingress.agents import Agents
from ingress.bodies import decode_body
from ingress.bounds import Bounds
from ingress.catalog import Catalog
from ingress.control import Control
from ingress.health import RouteHealth
from ingress.keys import Identity, KeyStore
from ingress.limits import admission_refusal, estimate_cost, limit_holds, rate_headers
from ingress.metrics import IngressMetrics
from ingress.relay import Outcome, end_only, first_frame, stream_events, whole_body
from ingress.replies import Replies, ReplyHub
from ingress.requestlog import RequestLog, error_code, job_record
from ingress.withdrawals import Withdrawals
from schemas import names
from schemas.chat import embedding_decoder, request_decoder
from schemas.config import Config, Plan
from schemas.envelopes import Done, Endpoint, Error, Head, Job
from schemas.errors import GatewayError
from schemas.kinds import dialect
from schemas.pricing import Prices
from schemas.trace import TraceContext
from schemas.tracking import identity_id, log_ids, strip_tracking
from workers.connection import RedisClient
from workers.logs import log_event
from workers.tracing import Span, Spans

REPLY_GRACE_S = 2.0  # how much longer than the job's deadline the ingress waits for a frame
T = TypeVar("T")
# Seconds this request has waited on Redis so far: its calls share one redis_timeout_s.
_redis_waited: ContextVar[float] = ContextVar("redis_waited", default=0.0)


@dataclass(slots=True)
class Reply:
    """What the HTTP layer sends: a JSON body, or an SSE stream of bytes."""

    status: int
    body: bytes = b""
    events: AsyncIterator[bytes] | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Ticket:
    """One admitted request: what is needed to relay, withdraw and log it."""

    job: Job
    entry_id: bytes
    replies: Replies
    wait_until: float
    started: float = field(default_factory=time.monotonic)
    provider: str = ""
    withdrawn: bool = False  # handed to the withdrawals already
    rate: dict[str, str] = field(default_factory=dict)  # x-ratelimit-* of a limited key
    first_at: float | None = None  # a stream's first content arrived (monotonic)
    span: Span | None = None  # the request's span, ended with its log line (tracing on)


@dataclass(slots=True)
class Submission:
    """A validated request of any endpoint, ready to become a job."""

    endpoint: Endpoint
    model: str
    body: bytes
    stream: bool = False
    include_usage: bool = False
    headers: dict[str, str] = field(default_factory=dict)  # native protocol headers to relay
    max_output_tokens: int | None = None  # the request's own output limit (None: unset)
    choices: int = 1  # answers asked for (OpenAI `n`): each may use max_output_tokens
    identity: str = ""  # the end user's id (`identity.id`, else OpenAI's `user`)
    thread: str = ""  # the conversation's id
    prompt_bytes: int | None = None  # bytes the prompt estimate counts (None: the body's;
    # an audio upload counts its text fields only, not the file)


class Gateway:
    """Everything an ingress process shares between requests."""

    def __init__(self, config: Config, redis: RedisClient, hub: ReplyHub,
                 spans: Spans | None = None) -> None:
        self.config = config
        self.redis = redis
        self.hub = hub
        self.spans = spans or Spans()  # the server's; off unless the config has [tracing]
        self.admission = Admission(redis)
        self.keys = KeyStore(redis, config.limits.key_cache_s, config.limits.key_miss_cache_s)
        self.control = Control(self.keys, frozenset(config.plans))
        self.agents = Agents(config, redis)  # `model: "agent/<name>"` of the Responses API
        self.catalog = Catalog(config, int(time.time()))
        self.prices = Prices(config)  # what budgets reserve for a request (its estimate)
        self.routing = RouteHealth(redis, config)  # its refresher runs beside the reply hub
        # Withdrawals run in their own task (started by the server), never in a request's
        # way; they are retried while the job could still start.
        self.withdrawals = Withdrawals[Ticket](
            self._withdraw, timeout_s=config.limits.redis_timeout_s,
            keep_s=config.limits.request_timeout_s + REPLY_GRACE_S)
        self.bounds = Bounds(config.limits)
        self.metrics = IngressMetrics(config, redis, lambda: int(hub.statistics()["waiting"]))
        # The request log is written by its own task (started by the server), never in an
        # answer's way: a slow Redis fills its buffer and drops records, counted.
        self.request_log = RequestLog(redis, retention_days=config.usage.request_log_days,
                                      buffer=config.usage.request_log_buffer,
                                      timeout_s=config.limits.redis_timeout_s)
        self.request_log.expose(self.metrics.registry)

    async def redis_call(self, awaitable: Awaitable[T]) -> T:
        """Await a Redis operation; trouble becomes a 503 (invariant 7).

        All Redis calls of one request (authentication, admission) share one
        `redis_timeout_s`, so Redis trouble answers a request within that bound in total.
        A call that times out while the reply hub still hears Redis (on its own client,
        and it judges silence faster than this timeout) is this process's overload, not
        Redis's: 429 `ingress_busy`, never a false 503.
        """
        waited = _redis_waited.get()
        started = trio.current_time()
        try:
            with trio.fail_after(max(self.config.limits.redis_timeout_s - waited, 0.0)):
                return await awaitable
        except trio.TooSlowError as exc:
            if self.hub.ready:  # the hub still hears Redis (see ReplyHub): Redis is up,
                raise busy_error() from exc  # and this process was too busy to hear it
            raise redis_error() from exc
        except (coredis.exceptions.RedisError, OSError) as exc:
            raise redis_error() from exc
        finally:
            _redis_waited.set(waited + trio.current_time() - started)

    async def authenticate(self, secret: str | None) -> Identity:
        """The caller's identity, or 401 / 503."""
        return await self.redis_call(self.keys.authenticate(secret))

    def chat(self, body: bytes) -> Submission:
        """An OpenAI chat completion request."""
        request = decode_body(request_decoder, body)
        self.bounds.count("messages", request.messages, "max_messages")
        self.bounds.count("tools", request.tools, "max_tools")
        tracked = request.identity is not None or request.thread is not None
        return Submission("chat", request.model, strip_tracking(body, tracked), request.stream,
                          request.include_usage,
                          max_output_tokens=request.max_completion_tokens or request.max_tokens,
                          choices=request.n or 1,
                          identity=identity_id(request.identity, request.user),
                          thread=request.thread.id if request.thread else "")

    def embeddings(self, body: bytes) -> Submission:
        """An OpenAI embeddings request."""
        request = decode_body(embedding_decoder, body)
        if not isinstance(request.input, str) and len({type(x) for x in request.input}) > 1:
            # msgspec cannot say "a list of one of these"; a mixed list reached the workers.
            raise GatewayError(422, "validation_error", "invalid request: `input` is a string, a "
                               "list of strings, a list of token ids or a list of lists of them, "
                               "never a mix", param="input",
                               details={"field": "$.input", "reason": "mixed input list"})
        if not isinstance(request.input, str) and not isinstance(request.input[0], int):
            self.bounds.count("input", request.input, "max_inputs")  # (token ids are one input)
        self.bounds.dimensions(request.dimensions)
        tracked = request.identity is not None or request.thread is not None
        return Submission("embeddings", request.model, strip_tracking(body, tracked),
                          max_output_tokens=0,
                          identity=identity_id(request.identity, request.user),
                          thread=request.thread.id if request.thread else "")

    async def submit(self, identity: Identity, submission: Submission, request_id: str,
                     pin: str | None = None, trace: TraceContext | None = None,
                     span: Span | None = None) -> Reply:
        """Run one request through the queue. Raises GatewayError before output; once
        admitted, its log line ends `span` too."""
        self.bounds.model(submission.model)
        if pin is not None:
            self.bounds.model(pin, "vendor")  # a provider name, echoed like a slug
        routes = await self.routing.order(submission.model, self.catalog.routes(
            submission.model, endpoint=submission.endpoint, pin=pin))
        job = Job(request_id=request_id, org=identity.org, project=identity.project,
                  key_id=identity.key_id, model=submission.model, routes=routes,
                  body=submission.body, stream=submission.stream,
                  include_usage=submission.include_usage, endpoint=submission.endpoint,
                  headers=submission.headers,
                  identity=submission.identity, thread=submission.thread,
                  traceparent=trace.header() if trace else "",
                  tracestate=trace.state if trace else "",
                  reply_to=self.hub.channel,
                  deadline=time.time() + self.config.limits.request_timeout_s)
        replies = self.hub.register(request_id)
        rate: dict[str, str] = {}
        try:
            ticket = await self._admit(job, identity, replies, submission)
            ticket.span = span
            rate = ticket.rate
            replies.when_behind(partial(self._withdraw_soon, ticket))
            try:
                frame = await first_frame(replies, ticket.wait_until)
            except BaseException:
                self._withdraw_soon(ticket)
                raise
            match frame:
                case Error(status=status, body=error_body):
                    ticket.provider = frame.provider or job.route.provider
                    self._log(ticket, status, code=error_code(error_body))
                    headers = {**served_by(frame.provider, frame.attempt), **rate}
                    if status == 429:  # every 429 says when to retry, a relayed one too
                        headers["retry-after"] = "1"
                    return Reply(status, dialect(job.endpoint).shape(error_body, status),
                                 headers=headers)
                case Done() if job.stream:  # no content (and no Head from an older worker)
                    ticket.provider = frame.provider
                    self._log(ticket, 200, frame.prompt_tokens, frame.completion_tokens)
                    return Reply(200, events=end_only(dialect(job.endpoint)),
                                 headers={**served_by(frame.provider, frame.attempt), **rate})
                case Done():
                    ticket.provider = frame.provider
                    answer = await whole_body(self.redis, frame, self.config.limits)
                    self._log(ticket, 200, frame.prompt_tokens, frame.completion_tokens)
                    return Reply(200, answer,
                                 headers={**served_by(frame.provider, frame.attempt), **rate})
                case Head():
                    ticket.provider = frame.provider
                    ticket.first_at = self.metrics.stream_began()
                    replies = None  # type: ignore[assignment]  # the stream owns it now
                    return Reply(200, events=self._stream(ticket),
                                 headers={**served_by(frame.provider, frame.attempt), **rate})
                case _:
                    raise AssertionError(f"unexpected first frame {frame!r}")
        except GatewayError as exc:
            exc.headers = {**rate, **exc.headers}  # a limited key's errors carry them too
            raise
        finally:
            if replies is not None:
                replies.close()

    async def _admit(self, job: Job, identity: Identity, replies: Replies,
                     submission: Submission) -> Ticket:
        """Reserve the request's estimate and its place in the queue, or refuse (429)."""
        provider = self.config.providers[job.route.provider]
        plan = self._plan(identity)
        body_bytes = len(job.body) if submission.prompt_bytes is None else submission.prompt_bytes
        estimate = estimate_tokens(body_bytes, submission.max_output_tokens,
                                   self.config.limits.reserve_output_tokens, submission.choices)
        month = names.month()
        holds = holds_for(job, month, estimate=estimate, org_cap=provider.org_queue_cap,
                          token_limit=plan.monthly_tokens if plan else None)
        if identity.limits:
            prompt = min(prompt_estimate(body_bytes), estimate)
            cost = estimate_cost(self.prices, job.model, job.routes, prompt, estimate - prompt)
            holds += limit_holds(identity.limits, org=job.org, project=job.project,
                                 month=month, tokens=estimate, cost=cost)
        verdict = await self.redis_call(self.admission.admit(
            job, holds=holds, max_queue=provider.max_queue,
            expires_at=job.deadline + EXPIRY_GRACE_S,
            max_queue_bytes=provider.max_queue_bytes))
        rate = rate_headers(verdict.windows)
        if verdict.code != ADMITTED:
            refusal = admission_refusal(verdict, job, provider.max_queue_bytes)
            refusal.headers.update(rate)
            self.metrics.refusal(job.endpoint, job.model, job.route.provider, refusal.code)
            raise refusal
        wait_until = trio.current_time() + self.config.limits.request_timeout_s + REPLY_GRACE_S
        return Ticket(job, verdict.entry_id, replies, wait_until, rate=rate)

    async def rate_headers(self, identity: Identity) -> dict[str, str]:
        """The x-ratelimit headers of a limited key for an answer that did not reach
        admission (a 400 or 422 say): one read of its windows; none if Redis is slow."""
        if not any(s.limits.rpm is not None or s.limits.tpm is not None
                   for s in identity.limits):
            return {}
        holds = limit_holds(identity.limits, org=identity.org, project=identity.project,
                            month=names.month(), tokens=0, cost=0)
        try:
            with trio.move_on_after(self.config.limits.redis_timeout_s):
                return rate_headers(await self.admission.peek(holds))
        except (coredis.exceptions.RedisError, OSError):
            pass
        return {}

    def _plan(self, identity: Identity) -> Plan | None:
        """The caller's plan; a plan the config does not know fails closed (403)."""
        if not identity.plan:
            return None
        plan = self.config.plans.get(identity.plan)
        if plan is None:
            raise GatewayError(403, "plan_not_configured",
                               f"organization {identity.org!r} is on plan {identity.plan!r}, "
                               "which this gateway does not configure; ask its operator",
                               details={"plan": identity.plan})
        return plan

    async def _stream(self, ticket: Ticket) -> AsyncIterator[bytes]:
        outcome = Outcome()
        try:
            events = stream_events(ticket.replies, ticket.wait_until, outcome,
                                   dialect(ticket.job.endpoint))
            async for event in events:
                yield event
        finally:
            ticket.replies.close()
            if not outcome.finished:
                self._withdraw_soon(ticket)
                if outcome.status == 200:
                    outcome.status = 499  # the client went away mid-stream
            self._log(ticket, outcome.status, outcome.prompt_tokens, outcome.completion_tokens)

    def _withdraw_soon(self, ticket: Ticket) -> None:
        """The client left, fell behind, or nobody answered: withdraw the job (once),
        without making the answer wait for Redis."""
        if not ticket.withdrawn:
            ticket.withdrawn = True
            self.withdrawals.submit(ticket)

    async def _withdraw(self, ticket: Ticket) -> None:
        """Drop the job and cancel its upstream call (run by `withdrawals`, bounded there)."""
        await self.admission.withdraw(ticket.job.route.provider, ticket.entry_id,
                                      ticket.job.request_id,
                                      self.config.limits.request_timeout_s + REPLY_GRACE_S)

    def _log(self, ticket: Ticket, status: int, prompt_tokens: int = 0,
             completion_tokens: int = 0, code: str = "") -> None:
        job = ticket.job
        fields: dict[str, Any] = {
            "request_id": job.request_id, "org": job.org, "key_id": job.key_id,
            "model": job.model, "provider": ticket.provider or job.route.provider,
            "stream": job.stream, "status": status,
            "ms": round((time.monotonic() - ticket.started) * 1000, 1),
            "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            **log_ids(job)}
        log_event("request", **fields)
        self.request_log.record(job_record(
            job, self.prices, provider=fields["provider"], status=status, code=code,
            latency_s=fields["ms"] / 1000, prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            ttft_s=None if ticket.first_at is None else ticket.first_at - ticket.started))
        if ticket.span is not None:
            ticket.span.tag(org=job.org, key_id=job.key_id, model=job.model,
                            provider=fields["provider"])
            # A stream that began went out as 200, whatever ended it.
            self.spans.answered(ticket.span, 200 if ticket.first_at is not None else status,
                                status)
        self.metrics.finished(job.endpoint, job.model, fields["provider"], status, ticket.started,
                              ticket.first_at, prompt_tokens, completion_tokens)


def served_by(provider: str, attempt: int) -> dict[str, str]:
    """The headers that say who answered: the provider, and after how many attempts
    (routes tried plus re-runs after a lost worker; a frame's attempt counts from 0)."""
    if not provider:
        return {}  # the worker failed the job before any provider was called
    return {"x-switchboard-provider": provider, "x-switchboard-attempts": str(attempt + 1)}


def redis_error() -> GatewayError:
    return GatewayError(503, "service_unavailable",
                        "the gateway cannot reach Redis; try again shortly")


def busy_error() -> GatewayError:
    return GatewayError(429, "ingress_busy", "this gateway process is overloaded; "
                        "try again shortly", retry_after=1)


def new_request_id() -> str:
    """A fresh request id (also the `x-request-id` header)."""
    return "req_" + uuid.uuid4().hex
