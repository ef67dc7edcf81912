"""Provider kind `anthropic`: Anthropic's Messages API, with the key in `x-api-key`.

    OpenAI chat   --workers.providers.anthropic.request-->   POST {base_url}/v1/messages
                  <--workers.providers.anthropic.response--  Message body, or its SSE events
    native        --workers.providers.anthropic.native--->   POST {base_url}/v1/messages, the client's body
                  <--workers.providers.anthropic.native----  the body or each event, only the model set
    count_tokens  --the client's body, the model set------>  POST {base_url}/v1/messages/count_tokens
                  <--as received---------------------------  {"input_tokens": n}

Chat completions are translated field by field; native relays (`call.job.endpoint ==
"anthropic_messages"`) send the client's own request with only the model replaced and
give back Anthropic's answer with only the model replaced. Both go through one POST,
one SSE reader and one failure classification (`upstream_failure`, `status_failure`'s
rules), which never relays the credential. A stream is complete only at `message_stop`.

Wire format: https://docs.anthropic.com/en/api/messages,
https://docs.anthropic.com/en/api/messages-streaming, https://docs.anthropic.com/en/api/errors.
"""

from __future__ import annotations

import httpx2
import msgspec

from schemas.chat import Usage
from schemas.providers import AnthropicProvider
from workers.providers._base import (
    AdapterBase,
    Answer,
    Call,
    Emit,
    UpstreamFailure,
    cut_short,
    malformed,
    read_credential,
)
from workers.providers._chat_view import log_not_forwarded
from workers.providers._http import Upstream, header_auth
from workers.providers.anthropic.native import NativeRelay, native_answer, native_request
from workers.providers.anthropic.request import translate_request
from workers.providers.anthropic.response import (
    StreamTranslator,
    decode_error,
    to_chat_completion,
    upstream_failure,
)

DEFAULT_BASE_URL = "https://api.anthropic.com"

_encode = msgspec.json.Encoder().encode


class AnthropicAdapter(AdapterBase):
    """Calls `POST {base_url}/v1/messages`: chat completions and native relays."""

    kind = "anthropic"

    def __init__(self, name: str, config: AnthropicProvider, http: httpx2.AsyncClient) -> None:
        self.name = name
        self.config = config
        self.url = (config.base_url or DEFAULT_BASE_URL).rstrip("/") + "/v1/messages"
        self.count_url = self.url + "/count_tokens"
        self._secret = read_credential(config)
        auth = header_auth({"x-api-key": self._secret}) if self._secret else None
        self.upstream = Upstream(name, http, self._failure, auth=auth,
                                 headers={"anthropic-version": config.anthropic_version})

    # ── OpenAI chat completions ──────────────────────────────────────────────────
    def _chat_body(self, call: Call) -> bytes:
        translation = translate_request(call.job.body, call.upstream_model, self.config,
                                        stream=call.job.stream)
        log_not_forwarded(call, self.name, translation.ignored)
        return _encode(translation.request)

    async def complete(self, call: Call) -> Answer:
        """Non-streamed call: one Message back, translated to a chat.completion."""
        content = await self.upstream.post(self.url, self._chat_body(call))
        try:
            completion, usage = to_chat_completion(content, call.job.model)
        except msgspec.DecodeError as exc:
            raise malformed(self.name, "message", retryable=True) from exc
        return Answer(_encode(completion), usage)

    async def stream(self, call: Call, emit: Emit) -> Usage:
        """Streamed call: each event translated as it comes; complete only at message_stop."""
        translator = StreamTranslator(self.name, call.job.model, call.job.include_usage,
                                      self._secret, call.meter)
        async with self.upstream.events(self.url, self._chat_body(call)) as events:
            async for event in events:
                for chunk in translator.feed(event.event, event.data):
                    emit(chunk)
                if translator.done:
                    return translator.usage
        raise cut_short(self.name, "message_stop")

    # ── native Messages relays ───────────────────────────────────────────────────
    async def native(self, call: Call) -> Answer:
        """The client's request with the route's model; Anthropic's Message with the slug.
        A count_tokens request is relayed the same way; its answer ({"input_tokens"}) as
        is, and nothing but the request is metered (counting is free at Anthropic)."""
        # The client's anthropic-version/-beta headers override the configured ones.
        if call.job.endpoint == "anthropic_count_tokens":
            content = await self.upstream.post(
                self.count_url, native_request(call.job.body, call.upstream_model),
                call.job.headers)
            return Answer(content, Usage())
        content = await self.upstream.post(
            self.url, native_request(call.job.body, call.upstream_model), call.job.headers)
        body, usage = native_answer(content, call.job.model, self.name)
        return Answer(body, usage)

    async def native_stream(self, call: Call, emit: Emit) -> Usage:
        """Every upstream event relayed in order under its own name, until message_stop
        (the preamble once content begins, so an early error event may still be retried)."""
        relay = NativeRelay(self.name, call.job.model, self._secret, call.meter)
        async with self.upstream.events(
                self.url, native_request(call.job.body, call.upstream_model), call.job.headers,
        ) as events:
            async for event in events:
                for name, data in relay.feed(event.event, event.data):
                    emit(data, event=name)
                if relay.done:
                    return relay.usage
        raise cut_short(self.name, "message_stop")

    def _failure(self, status: int, content: bytes) -> UpstreamFailure:
        return upstream_failure(self.name, status, decode_error(content), self._secret)
