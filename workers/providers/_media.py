"""Relaying images and audio to an OpenAI-shaped upstream (kinds `openai` and `azure`).

Images: the JSON body with `model` replaced, to `images/generations`. Audio: the uploaded
form (schemas/media.py) rebuilt as multipart with the route's model, to
`audio/transcriptions` or `audio/translations`. The answer goes back as the provider wrote
it (JSON, or text for `text`/`srt`/`vtt`); whatever usage it reports is metered
(`input_tokens`/`output_tokens`; a duration is not tokens), and the request is counted.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from schemas.chat import Usage
from schemas.media import encode_form, form_decoder
from workers.providers._base import Answer, Call
from workers.providers._http import Upstream

_decode_object = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode
_encode = msgspec.json.Encoder().encode
OPERATIONS = {"images": "images/generations", "transcriptions": "audio/transcriptions",
              "translations": "audio/translations"}


class _MediaUsage(msgspec.Struct):
    input_tokens: int = 0
    output_tokens: int = 0


class _Reported(msgspec.Struct):
    usage: _MediaUsage | None = None


_decode_reported = msgspec.json.Decoder(_Reported).decode


def reported_usage(body: bytes) -> Usage:
    """The usage an images or audio answer reports (none: zero tokens, still a request)."""
    try:
        usage = _decode_reported(body).usage
    except (msgspec.DecodeError, msgspec.ValidationError):
        return Usage()  # a text answer, or a usage of another shape (a duration)
    if usage is None:
        return Usage()
    return Usage(usage.input_tokens, usage.output_tokens, usage.input_tokens + usage.output_tokens)


async def relay_media(upstream: Upstream, url: Callable[[str], str], call: Call) -> Answer:
    """POST the job's image or audio request to `url(operation)`; the answer as is."""
    target = url(OPERATIONS[call.job.endpoint])
    if call.job.endpoint == "images":
        body = _decode_object(call.job.body)
        body["model"] = msgspec.Raw(_encode(call.upstream_model))
        content = await upstream.post(target, _encode(body))
    else:
        form = form_decoder.decode(call.job.body).with_value("model", call.upstream_model)
        payload, content_type = encode_form(form)
        content = await upstream.post(target, payload, extra_headers={"content-type": content_type})
    return Answer(content, reported_usage(content))
