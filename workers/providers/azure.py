"""Provider kind `azure`: Azure OpenAI, the OpenAI wire format at Azure's addresses.

    POST {base_url}/openai/deployments/{deployment}/chat/completions?api-version={api_version}
    POST {base_url}/openai/deployments/{deployment}/embeddings?api-version={api_version}

`base_url` is `https://{resource}.openai.azure.com`, the route's `model` names the
deployment, the credential goes in the `api-key` header. Bodies, answers, streams and
usage are OpenAI's, so the adapter is OpenAIAdapter with another address and these
decisions about Azure's differences:

- The body's `model` is set to the deployment name. Azure routes by the path and ignores
  the field; the deployment name is what the official `AzureOpenAI` SDKs put there, so
  Azure sees the body it sees most, and the client's slug never travels upstream.
- Azure's filter annotations are extra fields OpenAI SDKs ignore: `content_filter_results`
  on choices and `prompt_filter_results` on a whole answer are relayed where they sit in a
  well-formed object (they tell which categories fired, or cite protected material).
- An event that is only annotations is dropped: the prompt's results, which Azure sends
  first with empty `choices` (`prompt_filter_results`, or `prompt_annotations` in older
  versions), and the choices without `delta` that the Asynchronous Filter sends. Such a
  choice that carries a `finish_reason` (the filter cut the completion) is relayed as a
  proper chunk (the stream's id, `delta: {}`), so every event the client sees is a
  `chat.completion.chunk` and a `content_filter` finish arrives as it was sent.
- A prompt the content filter refuses (400, `error.code == "content_filter"`) is the
  client's 400 with code `content_filter`, never retried or failed over; a 400 about the
  `api-version` is ours (the configured version), so it fails over like a 404.
"""

from __future__ import annotations

from urllib.parse import quote

import httpx2
import msgspec

from schemas.chat import Usage
from schemas.providers import AzureProvider
from workers.providers._base import (
    Call,
    UpstreamFailure,
    malformed,
    read_credential,
    status_failure,
)
from workers.providers._http import Upstream, header_auth
from workers.providers.openai import OpenAIAdapter, RawObject

_decode_usage = msgspec.json.Decoder(Usage | None).decode
_encode = msgspec.json.Encoder().encode
_EMPTY = (b"[]", b"null")
_NO_DELTA = msgspec.Raw(b"{}")
_CHUNK = msgspec.Raw(b'"chat.completion.chunk"')
_NULL = msgspec.Raw(b"null")


class _Category(msgspec.Struct):
    filtered: bool = False


class _InnerError(msgspec.Struct):
    content_filter_result: dict[str, msgspec.Raw] = {}


class _Error(msgspec.Struct):
    message: str = ""
    code: str | int | None = None
    innererror: msgspec.Raw = _NULL  # read apart: a shape we do not know spoils nothing


class _ErrorBody(msgspec.Struct):
    error: _Error | str | None = None


class _Choice(msgspec.Struct):
    delta: msgspec.Raw = _NULL  # absent or null: an annotation, not a chunk's choice
    finish_reason: str | None = None

    @property
    def annotation(self) -> bool:
        return bytes(self.delta) == b"null"


_decode_error = msgspec.json.Decoder(_ErrorBody).decode
_decode_inner = msgspec.json.Decoder(_InnerError).decode
_decode_category = msgspec.json.Decoder(_Category).decode
_decode_choices = msgspec.json.Decoder(list[_Choice]).decode
_decode_raw_choices = msgspec.json.Decoder(list[dict[str, msgspec.Raw]]).decode


def _flagged(innererror: msgspec.Raw) -> list[str]:
    """The categories the content filter flagged, from the error's `innererror`."""
    try:
        results = _decode_inner(innererror).content_filter_result
        return [name for name, raw in results.items() if _decode_category(raw).filtered]
    except msgspec.DecodeError:
        return []


class AzureAdapter(OpenAIAdapter):
    """OpenAIAdapter's calls and stream loop, with Azure's deployment URL (`_url`), the
    `api-key` header, a chunk filter that knows Azure's annotation events (`_relayable`) and
    Azure's error bodies (`_failure`)."""

    kind = "azure"

    def __init__(self, name: str, config: AzureProvider, http: httpx2.AsyncClient) -> None:
        self.name = name
        self.base = config.base_url.rstrip("/") + "/openai/deployments/"
        self.query = "?api-version=" + quote(config.api_version, safe="")
        self.secret = read_credential(config)
        auth = header_auth({"api-key": self.secret}) if self.secret else None
        self.upstream = Upstream(name, http, self._failure, auth=auth)

    def _url(self, call: Call, operation: str) -> str:
        return f"{self.base}{quote(call.upstream_model, safe='')}/{operation}{self.query}"

    def _relayable(self, chunk: RawObject, stream_id: dict[str, msgspec.Raw],
                   include_usage: bool) -> RawObject | None:
        """The chunk as the client gets it, or None when it is nothing for the client."""
        choices = chunk.get("choices", msgspec.Raw(b"[]"))
        if bytes(chunk.get("object", b'""')) == b'"text_completion"':
            # A legacy completions chunk has no `delta`: only the prompt's annotations
            # (empty `choices`) are dropped, and usage the client did not ask for.
            return super()._relayable(chunk, stream_id, include_usage) \
                if bytes(choices) not in _EMPTY or "usage" in chunk else None
        usage_set = bytes(chunk.get("usage", b"null")) != b"null"
        if not include_usage:
            chunk.pop("usage", None)
        if bytes(choices) in _EMPTY:
            # The prompt's annotations, or the usage chunk (only when the client asked).
            return chunk if usage_set and include_usage else None
        try:
            parsed = _decode_choices(choices)
            if not any(choice.annotation for choice in parsed):
                if not stream_id and bytes(chunk.get("id", b'""')) != b'""':
                    stream_id.update((key, chunk[key]) for key in ("id", "created") if key in chunk)
                return chunk
            raw_choices = _decode_raw_choices(choices)
        except msgspec.DecodeError as exc:
            raise malformed(self.name, "chunk") from exc
        # Asynchronous Filter annotations: keep only the choices that finish.
        kept = []
        for raw, choice in zip(raw_choices, parsed, strict=True):
            if choice.annotation and choice.finish_reason is None:
                continue
            if choice.annotation:
                raw["delta"] = _NO_DELTA
            kept.append(raw)
        if not kept:
            return None
        return {**chunk, **stream_id, "object": _CHUNK, "choices": msgspec.Raw(_encode(kept))}

    def _failure(self, status: int, content: bytes) -> UpstreamFailure:
        message, code = "", None
        flagged: list[str] = []
        try:
            error = _decode_error(content).error
        except msgspec.DecodeError:
            error = None
        if isinstance(error, _Error):
            message, code = error.message, str(error.code) if error.code is not None else None
            flagged = _flagged(error.innererror)
        elif isinstance(error, str):
            message = error
        if status == 400 and code == "content_filter":
            refused = f"the content filter of provider {self.name!r} refused the prompt"
            message = refused + (f" (flagged: {', '.join(flagged)})" if flagged else "")
        ours = status == 400 and "api version" in message.lower()  # our configured api_version
        return status_failure(self.name, status, message, code, secret=self.secret, ours=ours)
