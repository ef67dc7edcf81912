"""The request path of a chat completion: key, quota, route, enqueue, wait, relay."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import coredis
import msgspec
import trio

from ingress.admission import ADMITTED, OVER_QUOTA, QUEUE_BYTES_FULL, Admission
from ingress.bounds import Bounds
from ingress.catalog import Catalog
from ingress.keys import Identity, KeyStore
from ingress.relay import Outcome, first_frame, stream_events
from ingress.replies import Replies, ReplyHub
from schemas.chat import embedding_decoder, request_decoder
from schemas.config import Config
from schemas.envelopes import Done, Endpoint, Error, Head, Job
from schemas.errors import GatewayError
from schemas.kinds import dialect
from workers.logs import log_event

REPLY_GRACE_S = 2.0  # how much longer than the job's deadline the ingress waits for a frame
T = TypeVar("T")
S = TypeVar("S")


@dataclass(slots=True)
class Reply:
    """What the HTTP layer sends: a JSON body, or an SSE stream of bytes."""

    status: int
    body: bytes = b""
    events: AsyncIterator[bytes] | None = None


@dataclass(slots=True)
class Ticket:
    """One admitted request: what is needed to relay, withdraw and log it."""

    job: Job
    entry_id: bytes
    replies: Replies
    wait_until: float
    started: float = field(default_factory=time.monotonic)
    provider: str = ""


@dataclass(slots=True)
class Submission:
    """A validated request of any endpoint, ready to become a job."""

    endpoint: Endpoint
    model: str
    body: bytes
    stream: bool = False
    include_usage: bool = False
    headers: dict[str, str] = field(default_factory=dict)  # native protocol headers to relay


def decode_body(decoder: msgspec.json.Decoder[S], body: bytes) -> S:
    """Validate a body: 400 for bad JSON, 422 naming the field for a bad shape."""
    try:
        # JSON is UTF-8. msgspec checks only the strings it decodes (a bad byte there is a
        # UnicodeDecodeError, once a 500) and relays skipped fields' bytes as they are.
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise GatewayError(400, "invalid_json",
                           f"the body is not valid UTF-8 (byte {exc.start})") from None
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        message = str(exc)
        reason, _, where = message.partition(" - at `")
        path = where.rstrip("`") or "$"
        raise GatewayError(422, "validation_error", f"invalid request: {message}",
                           param=path.removeprefix("$.") if path != "$" else None,
                           details={"field": path, "reason": reason}) from None
    except msgspec.DecodeError as exc:
        raise GatewayError(400, "invalid_json", f"the body is not valid JSON: {exc}") from None


class Gateway:
    """Everything an ingress process shares between requests."""

    def __init__(self, config: Config, redis: coredis.Redis[bytes], hub: ReplyHub) -> None:
        self.config = config
        self.redis = redis
        self.hub = hub
        self.admission = Admission(redis)
        self.keys = KeyStore(redis, config.limits.key_cache_s)
        self.catalog = Catalog(config, int(time.time()))
        self.bounds = Bounds(config.limits)

    async def redis_call(self, awaitable: Awaitable[T]) -> T:
        """Await a Redis operation; trouble becomes a 503 within the timeout (invariant 7)."""
        try:
            with trio.fail_after(self.config.limits.redis_timeout_s):
                return await awaitable
        except (trio.TooSlowError, coredis.exceptions.RedisError, OSError) as exc:
            raise GatewayError(503, "service_unavailable",
                               "the gateway cannot reach Redis; try again shortly") from exc

    async def authenticate(self, secret: str | None) -> Identity:
        """The caller's identity, or 401 / 503."""
        return await self.redis_call(self.keys.authenticate(secret))

    def chat(self, body: bytes) -> Submission:
        """An OpenAI chat completion request."""
        request = decode_body(request_decoder, body)
        self.bounds.count("messages", request.messages, "max_messages")
        self.bounds.count("tools", request.tools, "max_tools")
        return Submission("chat", request.model, body, request.stream, request.include_usage)

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
        return Submission("embeddings", request.model, body)

    async def submit(self, identity: Identity, submission: Submission, request_id: str,
                     pin: str | None = None) -> Reply:
        """Run one request through the queue. Raises GatewayError before output."""
        self.bounds.model(submission.model)
        if pin is not None:
            self.bounds.model(pin, "vendor")  # a provider name, echoed like a slug
        routes = self.catalog.routes(submission.model, endpoint=submission.endpoint, pin=pin)
        job = Job(request_id=request_id, org=identity.org, project=identity.project,
                  key_id=identity.key_id, model=submission.model, routes=routes,
                  body=submission.body, stream=submission.stream,
                  include_usage=submission.include_usage, endpoint=submission.endpoint,
                  headers=submission.headers,
                  reply_to=self.hub.channel,
                  deadline=time.time() + self.config.limits.request_timeout_s)
        replies = self.hub.register(request_id)
        try:
            ticket = await self._admit(job, identity, replies)
            try:
                frame = await first_frame(replies, ticket.wait_until)
            except BaseException:
                with trio.CancelScope(shield=True):
                    await self._withdraw(ticket)
                raise
            match frame:
                case Error(status=status, body=error_body):
                    ticket.provider = frame.provider or job.route.provider
                    self._log(ticket, status)
                    return Reply(status, dialect(job.endpoint).shape(error_body, status))
                case Done(body=answer):
                    ticket.provider = frame.provider
                    self._log(ticket, 200, frame.prompt_tokens, frame.completion_tokens)
                    return Reply(200, answer)
                case Head():
                    ticket.provider = frame.provider
                    replies = None  # type: ignore[assignment]  # the stream owns it now
                    return Reply(200, events=self._stream(ticket))
                case _:
                    raise AssertionError(f"unexpected first frame {frame!r}")
        finally:
            if replies is not None:
                replies.close()

    async def _admit(self, job: Job, identity: Identity, replies: Replies) -> Ticket:
        provider = self.config.providers[job.route.provider]
        plan = self.config.plans.get(identity.plan) if identity.plan else None
        code, entry_id = await self.redis_call(self.admission.admit(
            job, max_queue=provider.max_queue, max_queue_bytes=provider.max_queue_bytes,
            token_limit=plan.monthly_tokens if plan else None))
        if code == OVER_QUOTA:
            raise GatewayError(429, "subscription_limit",
                               f"organization {identity.org!r} has used its plan's monthly tokens")
        if code == QUEUE_BYTES_FULL:
            raise GatewayError(429, "queue_full",
                               f"provider {job.route.provider!r} holds its budget of queued bytes "
                               f"(providers.{job.route.provider}.max_queue_bytes = "
                               f"{provider.max_queue_bytes})", retry_after=1,
                               details={"limit": "max_queue_bytes", "max": provider.max_queue_bytes})
        if code != ADMITTED:
            raise GatewayError(429, "queue_full",
                               f"provider {job.route.provider!r} has too many queued requests",
                               retry_after=1)
        wait_until = trio.current_time() + self.config.limits.request_timeout_s + REPLY_GRACE_S
        return Ticket(job, entry_id, replies, wait_until)

    async def _stream(self, ticket: Ticket) -> AsyncIterator[bytes]:
        outcome = Outcome()
        try:
            events = stream_events(ticket.replies, ticket.wait_until, outcome,
                                   dialect(ticket.job.endpoint))
            async for event in events:
                yield event
        finally:
            ticket.replies.close()
            with trio.CancelScope(shield=True):
                if not outcome.finished:
                    await self._withdraw(ticket)
                    if outcome.status == 200:
                        outcome.status = 499  # the client went away mid-stream
            self._log(ticket, outcome.status, outcome.prompt_tokens, outcome.completion_tokens)

    async def _withdraw(self, ticket: Ticket) -> None:
        """The client left or nobody answered: drop the job, cancel its upstream call."""
        with trio.move_on_after(self.config.limits.redis_timeout_s):
            try:
                await self.admission.withdraw(ticket.job.route.provider, ticket.entry_id,
                                          ticket.job.request_id,
                                          self.config.limits.request_timeout_s + REPLY_GRACE_S)
            except Exception as exc:
                log_event("withdraw_failed", request_id=ticket.job.request_id,
                          error=type(exc).__name__)

    def _log(self, ticket: Ticket, status: int, prompt_tokens: int = 0,
             completion_tokens: int = 0) -> None:
        job = ticket.job
        fields: dict[str, Any] = {
            "request_id": job.request_id, "org": job.org, "key_id": job.key_id,
            "model": job.model, "provider": ticket.provider or job.route.provider,
            "stream": job.stream, "status": status,
            "ms": round((time.monotonic() - ticket.started) * 1000, 1),
            "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}
        log_event("request", **fields)


def new_request_id() -> str:
    """A fresh request id (also the `x-request-id` header)."""
    return "req_" + uuid.uuid4().hex
