"""Provider kind `openai`: any OpenAI-compatible server (OpenAI, vLLM, Ollama, ...).

The client's body goes upstream as received except for `model` (the route's upstream
model) and, for streams, `stream_options.include_usage` (so every stream can be
metered). Answers come back with `model` set to the client's slug; the usage chunk
reaches the client only if it asked for it.
"""

from __future__ import annotations

from typing import Any

import httpx2
import msgspec

from schemas.chat import Usage, raw_object_decoder
from schemas.providers import OpenAIProvider
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
from workers.providers._http import Upstream, header_auth
from workers.providers._media import relay_media

RawObject = dict[str, msgspec.Raw]

_decode_object = raw_object_decoder.decode
_decode_usage = msgspec.json.Decoder(Usage | None).decode
_encode = msgspec.json.Encoder().encode
_NULL = msgspec.Raw(b"null")
_INCLUDE_USAGE = msgspec.Raw(b'{"include_usage":true}')
_NO_CHOICES = (msgspec.Raw(b"[]"), _NULL)  # a usage-only chunk (vLLM may send null)

class _UpstreamError(msgspec.Struct):
    message: str = ""
    code: str | int | None = None


class _UpstreamErrorBody(msgspec.Struct):
    error: _UpstreamError | str | None = None


_decode_error = msgspec.json.Decoder(_UpstreamErrorBody).decode


class _FunctionText(msgspec.Struct):
    arguments: str | None = None


class _ToolCallText(msgspec.Struct):
    function: _FunctionText | None = None


class _DeltaText(msgspec.Struct):
    """The generated text of a chunk's delta, for the running usage estimate."""

    content: str | None = None
    reasoning_content: str | None = None  # vLLM, DeepSeek and others stream reasoning here
    refusal: str | None = None
    tool_calls: list[_ToolCallText] | None = None

    @property
    def chars(self) -> int:
        calls = sum(len(c.function.arguments or "") for c in self.tool_calls or () if c.function)
        return (len(self.content or "") + len(self.reasoning_content or "")
                + len(self.refusal or "") + calls)


class _ChoiceText(msgspec.Struct):
    delta: _DeltaText | None = None
    text: str | None = None  # a legacy completions chunk's text


_decode_choice_text = msgspec.json.Decoder(list[_ChoiceText] | None).decode


def generated_chars(chunk: RawObject) -> int:
    """Characters of generated text in one chunk (0 for what cannot be read)."""
    try:
        choices = _decode_choice_text(chunk.get("choices", _NULL)) or []
    except (msgspec.DecodeError, msgspec.ValidationError):
        return 0
    return sum((choice.delta.chars if choice.delta else 0) + len(choice.text or "")
               for choice in choices)


class OpenAIAdapter(AdapterBase):
    """Calls `POST {base_url}/chat/completions` with the provider's bearer token."""

    kind = "openai"

    def __init__(self, name: str, config: OpenAIProvider, http: httpx2.AsyncClient) -> None:
        self.name = name
        self.base = (config.base_url or "https://api.openai.com/v1").rstrip("/")
        self.secret = read_credential(config)
        auth = header_auth({"authorization": f"Bearer {self.secret}"}) if self.secret else None
        self.upstream = Upstream(name, http, self._failure, auth=auth)

    def _url(self, call: Call, operation: str) -> str:
        """Where an operation (`chat/completions`, `embeddings`) of this provider is served."""
        return f"{self.base}/{operation}"

    async def embed(self, call: Call) -> Answer:
        """`POST {base_url}/embeddings`, model replaced both ways."""
        body = _decode_object(call.job.body)
        body["model"] = msgspec.Raw(_encode(call.upstream_model))
        return await self._relay_json(self._url(call, "embeddings"), _encode(body), call.job.model)

    async def complete(self, call: Call) -> Answer:
        """Non-streamed call: one JSON body back, `model` replaced by the slug."""
        return await self._relay_json(self._url(call, "chat/completions"), self._body(call),
                                      call.job.model)

    async def _relay_json(self, url: str, content: bytes, slug: str) -> Answer:
        content = await self.upstream.post(url, content)
        try:
            answer = _decode_object(content)
            usage = _decode_usage(answer.get("usage", _NULL)) or Usage()
        except msgspec.DecodeError as exc:
            raise malformed(self.name, retryable=True) from exc
        answer["model"] = msgspec.Raw(_encode(slug))
        return Answer(_encode(answer), usage)

    def _body(self, call: Call) -> bytes:
        body = _decode_object(call.job.body)
        body["model"] = msgspec.Raw(_encode(call.upstream_model))
        if call.job.stream:
            options: dict[str, Any] = {}
            if "stream_options" in body and body["stream_options"] != _NULL:
                options = msgspec.json.decode(body["stream_options"])
            options["include_usage"] = True
            body["stream_options"] = msgspec.Raw(_encode(options)) if len(options) > 1 else _INCLUDE_USAGE
        return _encode(body)

    async def completion(self, call: Call) -> Answer:
        """A legacy completion, relayed to `{base_url}/completions` (model replaced)."""
        return await self._relay_json(self._url(call, "completions"), self._body(call),
                                      call.job.model)

    async def completion_stream(self, call: Call, emit: Emit) -> Usage:
        """A streamed legacy completion, relayed chunk by chunk like chat's."""
        return await self._relay_stream(call, emit, "completions")

    async def media(self, call: Call) -> Answer:
        """Images (JSON) and audio (multipart, rebuilt with the upstream model), relayed."""
        return await relay_media(self.upstream, lambda operation: self._url(call, operation), call)

    async def stream(self, call: Call, emit: Emit) -> Usage:
        """Streamed call: each upstream chunk is re-emitted with the slug as `model`."""
        return await self._relay_stream(call, emit, "chat/completions")

    async def _relay_stream(self, call: Call, emit: Emit, operation: str) -> Usage:
        usage = Usage()
        model = msgspec.Raw(_encode(call.job.model))
        state: dict[str, msgspec.Raw] = {}  # what `_relayable` keeps across one stream's chunks
        done = False
        async with self.upstream.events(self._url(call, operation), self._body(call)) as events:
            async for event in events:
                # Read to the end of the body after [DONE] so the connection is reused.
                if done or event.data == b"[DONE]":
                    done = True
                    continue
                chunk = self._decode_chunk(event.data)
                if "error" in chunk:
                    raise self._failure(502, event.data)
                call.meter.add_text(generated_chars(chunk))
                if "usage" in chunk:
                    usage = _decode_usage(chunk["usage"]) or usage
                    if chunk["usage"] != _NULL:
                        call.meter.report(usage)
                relayed = self._relayable(chunk, state, call.job.include_usage)
                if relayed is not None:
                    relayed["model"] = model
                    emit(_encode(relayed))
        if done:
            return usage
        raise cut_short(self.name, "[DONE]")

    def _relayable(self, chunk: RawObject, state: dict[str, msgspec.Raw],
                   include_usage: bool) -> RawObject | None:
        """The chunk as the client gets it, or None when it is nothing for the client
        (here: the usage-only chunk the client did not ask for)."""
        if "usage" in chunk and not include_usage:
            if chunk.get("choices", _NULL) in _NO_CHOICES:
                return None
            del chunk["usage"]
        return chunk

    def _decode_chunk(self, data: bytes) -> RawObject:
        try:
            return _decode_object(data)
        except msgspec.DecodeError as exc:
            raise malformed(self.name, "chunk") from exc

    def _failure(self, status: int, content: bytes) -> UpstreamFailure:
        message, code = "", None
        try:
            error = _decode_error(content).error
            if isinstance(error, _UpstreamError):
                message, code = error.message, error.code
            elif isinstance(error, str):
                message = error
        except msgspec.DecodeError:
            pass
        return status_failure(self.name, status, message, str(code) if code else None,
                              secret=self.secret)
