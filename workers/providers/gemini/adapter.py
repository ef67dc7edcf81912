"""Provider kind `gemini`: Google's Gemini API, with the key in `x-goog-api-key`.

    OpenAI chat      ──workers.providers.gemini.request──>  models/{m}:generateContent
                                                  models/{m}:streamGenerateContent?alt=sse
                     <──workers.providers.gemini.response── GenerateContentResponse (body or SSE events)
    OpenAI embeddings ──workers.providers.gemini.embed──>   models/{m}:embedContent | :batchEmbedContents
    native Gemini    ──as received──>             models/{m}:generateContent | :stream...?alt=sse
                     <──as received──             the upstream body, or each SSE event's data
    native others    ──workers.providers.gemini.native──> models/{m}:countTokens |
                                                  :embedContent | :batchEmbedContents

Native relays (`call.job.endpoint == "gemini_generate"`) send the client's own
GenerateContentRequest untouched; only the model (in the URL) is the route's. They read
just enough of the answer to meter usage and to tell a complete stream from a cut one.
Every failure goes through `upstream_failure`, which never relays the credential.

Wire format: https://ai.google.dev/api/generate-content, https://ai.google.dev/api/embeddings
(errors: https://ai.google.dev/gemini-api/docs/troubleshooting).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import TypeVar

import httpx2
import msgspec

from schemas.chat import Usage
from schemas.gemini import (
    GeminiError,
    GenerateContentResponse,
    ResponseSummary,
    error_decoder,
    resource_name,
    response_decoder,
    summary_decoder,
)
from schemas.providers import GeminiProvider
from workers.providers._base import (
    AdapterBase,
    Answer,
    Call,
    Emit,
    UpstreamFailure,
    cut_short,
    malformed,
    read_credential,
    status_failure,
)
from workers.providers._chat_view import log_not_forwarded
from workers.providers._http import Upstream, header_auth
from workers.providers._sse import Event
from workers.providers.gemini.embed import embedding_answer, plan_embeddings
from workers.providers.gemini.native import count_tokens_call, embed_call
from workers.providers.gemini.request import first_call_only, translate_request
from workers.providers.gemini.response import StreamTranslator, translate_response, usage_of

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com/v1beta"

_encode = msgspec.json.Encoder().encode
T = TypeVar("T")
# The native endpoints relayed as one POST of the client's body (besides generateContent).
_NATIVE_CALLS = {"gemini_count_tokens": count_tokens_call, "gemini_embed": embed_call}


# ── failures ─────────────────────────────────────────────────────────────────────
def upstream_failure(provider: str, status: int, error: GeminiError,
                     secret: str | None = None) -> UpstreamFailure:
    """`status_failure`'s rule, plus Gemini's own ways of saying that our key or project is
    at fault (API_KEY_INVALID, FAILED_PRECONDITION), which fail over."""
    reasons = {d.get("reason") for d in error.details if isinstance(d, dict)}
    ours = "API_KEY_INVALID" in reasons or error.status == "FAILED_PRECONDITION"
    return status_failure(provider, status, error.message, error.status.lower() or None,
                          secret=secret, ours=ours, label=error.status)

@dataclass
class NativeProgress:
    """What a relayed stream has said so far: its usage and which candidates finished."""

    usage: Usage = field(default_factory=Usage)
    begun: set[int] = field(default_factory=set)
    ended: set[int] = field(default_factory=set)
    blocked: bool = False

    def feed(self, event: ResponseSummary) -> None:
        if event.usage_metadata is not None:
            self.usage = usage_of(event.usage_metadata)  # the last one is the total
        self.blocked = self.blocked or (event.blocked and not event.candidates)
        for candidate in event.candidates:
            self.begun.add(candidate.index)
            if candidate.finish_reason:
                self.ended.add(candidate.index)

    @property
    def finished(self) -> bool:
        """Every candidate that began got its finishReason, or the prompt was blocked."""
        return self.blocked or (bool(self.begun) and self.begun <= self.ended)


# ── the adapter ──────────────────────────────────────────────────────────────────
class GeminiAdapter(AdapterBase):
    """Calls `{base_url}/models/{model}:{method}`: chat, embeddings and native relays."""

    kind = "gemini"

    def __init__(self, name: str, config: GeminiProvider, http: httpx2.AsyncClient) -> None:
        self.name = name
        self.base_url = (config.base_url or DEFAULT_BASE_URL).rstrip("/")
        self.credential = read_credential(config)
        auth = header_auth({"x-goog-api-key": self.credential}) if self.credential else None
        self.upstream = Upstream(name, http, self._failure, auth=auth)

    def _url(self, model: str, method: str) -> str:
        return f"{self.base_url}/{resource_name(model)}:{method}"

    # ── OpenAI chat completions ──────────────────────────────────────────────────
    def _chat_body(self, call: Call) -> bytes:
        translation = translate_request(call.job.body)
        log_not_forwarded(call, self.name, translation.ignored)
        return _encode(translation.request)

    async def complete(self, call: Call) -> Answer:
        """Non-streamed call: one GenerateContentResponse, one chat.completion."""
        content = await self.upstream.post(self._url(call.upstream_model, "generateContent"),
                                   self._chat_body(call))
        answer = self._decode(content, response_decoder, retryable=True)
        completion = translate_response(answer, call.job.model, self.name,
                                        first_call_only=first_call_only(call.job.body))
        return Answer(_encode(completion), completion.usage or Usage())

    async def stream(self, call: Call, emit: Emit) -> Usage:
        """Streamed call over SSE; each event becomes zero or more chunks."""
        translator = StreamTranslator(call.job.model, call.meter,
                                      first_call_only=first_call_only(call.job.body))
        async with self._events(call.upstream_model, self._chat_body(call)) as events:
            async for event in events:
                answer: GenerateContentResponse = self._decode(event.data, response_decoder)
                if answer.error is not None:
                    raise upstream_failure(self.name, answer.error.code or 502, answer.error,
                                           self.credential)
                for chunk in translator.feed(answer):
                    emit(chunk)
        if not translator.finished:
            raise cut_short(self.name)
        if call.job.include_usage:
            emit(translator.usage_chunk())
        return translator.usage

    # ── OpenAI embeddings ────────────────────────────────────────────────────────
    async def embed(self, call: Call) -> Answer:
        """One input: `embedContent`; several: `batchEmbedContents`. Usage is estimated."""
        plan = plan_embeddings(call.job.body, call.upstream_model)
        log_not_forwarded(call, self.name, plan.ignored)
        content = await self.upstream.post(self._url(call.upstream_model, plan.method), plan.body)
        return embedding_answer(content, plan, call.job.model, self.name)

    # ── native Gemini relays ─────────────────────────────────────────────────────
    async def native(self, call: Call) -> Answer:
        """`generateContent` (or countTokens, embedContent, batchEmbedContents: see
        `workers.providers.gemini.native`) with the client's body; the answer relayed
        byte for byte."""
        plan = _NATIVE_CALLS.get(call.job.endpoint)
        if plan is not None:
            relayed = plan(call.job.body, call.upstream_model)
            content = await self.upstream.post(self._url(call.upstream_model, relayed.method),
                                               relayed.body)
            return Answer(content, relayed.usage)
        content = await self.upstream.post(self._url(call.upstream_model, "generateContent"),
                                   call.job.body)
        summary: ResponseSummary = self._decode(content, summary_decoder, retryable=True)
        return Answer(content, usage_of(summary.usage_metadata))

    async def native_stream(self, call: Call, emit: Emit) -> Usage:
        """`streamGenerateContent?alt=sse` with the client's body; each event's data relayed."""
        progress = NativeProgress()
        async with self._events(call.upstream_model, call.job.body) as events:
            async for event in events:
                summary: ResponseSummary = self._decode(event.data, summary_decoder)
                if summary.error is not None:
                    raise upstream_failure(self.name, summary.error.code or 502, summary.error,
                                           self.credential)
                progress.feed(summary)
                call.meter.add_text(sum(candidate.chars for candidate in summary.candidates))
                if summary.usage_metadata is not None:
                    call.meter.report(progress.usage)  # Gemini's running totals cover this event
                # A multi-line `data:` field arrives joined by "\n", which in JSON can only be
                # whitespace; flattened, the ingress can frame it as one `data:` line.
                emit(event.data)
        if not progress.finished:
            raise cut_short(self.name)
        return progress.usage

    # ── HTTP ─────────────────────────────────────────────────────────────────────
    def _events(self, model: str, body: bytes) -> AbstractAsyncContextManager[AsyncIterator[Event]]:
        """The SSE events of a `streamGenerateContent?alt=sse` call."""
        return self.upstream.events(self._url(model, "streamGenerateContent"), body,
                                    params={"alt": "sse"})

    def _decode(self, data: bytes, decoder: msgspec.json.Decoder[T], *,
                   retryable: bool = False) -> T:
        try:
            return decoder.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise malformed(self.name, retryable=retryable) from exc

    def _failure(self, status: int, content: bytes) -> UpstreamFailure:
        try:
            error = error_decoder.decode(content).error or GeminiError()
        except (msgspec.DecodeError, msgspec.ValidationError):
            error = GeminiError()
        return upstream_failure(self.name, status, error, self.credential)
