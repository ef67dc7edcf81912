"""Images and audio: `POST /v1/images/generations` (JSON) and `/v1/audio/transcriptions`,
`/v1/audio/translations` (multipart/form-data uploads), also under `/v3/router/`.

Relayed by the `openai` and `azure` kinds, answered by `mock`; any other kind is a 400
`unsupported_endpoint` from the catalog before anything is queued. An upload is decoded
here, once, into a `Form` (schemas/media.py) that the job carries as msgpack; the size
bound is the edge's `limits.max_body_bytes` (OpenAI accepts files up to 25 MB: raise it
for audio). Streamed images or transcripts are not relayed (a 400 says so).
"""

from __future__ import annotations

from quart import Blueprint, Response, request
from werkzeug.http import parse_options_header
from werkzeug.sansio.multipart import Data, Epilogue, Field, File, MultipartDecoder, NeedData

from ingress.bodies import decode_body
from ingress.gateway import Submission
from ingress.respond import relay
from schemas.envelopes import Endpoint
from schemas.errors import GatewayError
from schemas.media import AUDIO_FORMATS, TEXT_FORMATS, Form, Part, form_encoder, image_decoder
from schemas.tracking import identity_id, strip_tracking

media = Blueprint("media", __name__)
MAX_PARTS = 64  # an upload's form fields and files


def _bad_form(reason: str) -> GatewayError:
    return GatewayError(400, "invalid_multipart", f"the body is not a valid multipart/form-data "
                        f"upload: {reason}", details={"reason": reason})


def decode_form(body: bytes, content_type: str) -> Form:
    """Every part of a multipart/form-data body (400 `invalid_multipart` otherwise)."""
    kind, options = parse_options_header(content_type)
    if kind != "multipart/form-data":
        raise GatewayError(415, "unsupported_media_type", "send the audio as multipart/form-data "
                           f"(a `file` and a `model` field), not {kind or 'no content type'!r}")
    boundary = options.get("boundary", "")
    if not boundary or len(boundary) > 200:
        raise _bad_form("no boundary in the content type")
    decoder = MultipartDecoder(boundary.encode("latin-1", "replace"))
    parts: list[Part] = []
    pieces: list[bytes] = []
    try:
        decoder.receive_data(body)
        decoder.receive_data(None)
        while not isinstance(event := decoder.next_event(), Epilogue):
            match event:
                case NeedData():
                    raise _bad_form("the body ends before its closing boundary")
                case File(name=name, filename=filename, headers=headers):
                    if len(parts) >= MAX_PARTS:
                        raise _bad_form(f"more than {MAX_PARTS} parts")
                    parts.append(Part(name, b"", filename, headers.get("content-type")))
                case Field(name=name):
                    if len(parts) >= MAX_PARTS:
                        raise _bad_form(f"more than {MAX_PARTS} parts")
                    parts.append(Part(name, b""))
                case Data(data=data, more_data=more):
                    pieces.append(data)
                    if not more and parts:
                        parts[-1].data = b"".join(pieces)
                        pieces = []
    except ValueError as exc:
        raise _bad_form(str(exc)[:200] or "malformed") from None
    return Form(parts)


def audio_submission(endpoint: Endpoint, body: bytes, content_type: str) -> tuple[Submission, str]:
    """A validated audio upload, and the `response_format` it asked for."""
    form = decode_form(body, content_type)
    model = form.value("model")
    if not model:
        raise GatewayError(400, "missing_field", "the form needs a `model` field", param="model")
    upload = form.file()
    if upload is None:
        raise GatewayError(400, "missing_field", "the form needs a `file` part with a filename "
                           "(the audio)", param="file")
    answer_format = form.value("response_format") or "json"
    if answer_format not in AUDIO_FORMATS:
        raise GatewayError(400, "invalid_value", f"`response_format` is one of "
                           f"{', '.join(AUDIO_FORMATS)}", param="response_format")
    if (form.value("stream") or "false").lower() == "true":
        raise GatewayError(400, "unsupported_parameter", "streamed transcripts are not relayed; "
                           "leave `stream` unset", param="stream")
    text_bytes = sum(len(p.data) for p in form.parts if p.filename is None)
    return Submission(endpoint, model, form_encoder.encode(form), prompt_bytes=text_bytes,
                      identity=(form.value("user") or "")[:256]), answer_format


def image_submission(body: bytes) -> Submission:
    """A validated image generation request (JSON, relayed as received)."""
    generate = decode_body(image_decoder, body)
    if generate.stream:
        raise GatewayError(400, "unsupported_parameter", "streamed image generation is not "
                           "relayed; leave `stream` unset", param="stream")
    tracked = generate.identity is not None or generate.thread is not None
    return Submission("images", generate.model, strip_tracking(body, tracked),
                      choices=generate.n or 1, max_output_tokens=None,
                      identity=identity_id(generate.identity, generate.user),
                      thread=generate.thread.id if generate.thread else "")


@media.post("/v1/images/generations")
@media.post("/v3/router/images/generations")
async def create_image() -> Response:
    """Generate images: OpenAI's images response (`data` of `b64_json` or `url`)."""
    return await relay(image_submission)


async def _audio(endpoint: Endpoint) -> Response:
    content_type = request.headers.get("content-type", "")
    asked: list[str] = []

    def submission(body: bytes) -> Submission:
        made, answer_format = audio_submission(endpoint, body, content_type)
        asked.append(answer_format)
        return made

    response = await relay(submission, json_body=False)
    if response.status_code == 200 and asked and asked[0] in TEXT_FORMATS:
        response.content_type = "text/plain; charset=utf-8"  # the provider's text, as is
    return response


@media.post("/v1/audio/transcriptions")
@media.post("/v3/router/audio/transcriptions")
async def create_transcription() -> Response:
    """Transcribe an uploaded audio file (multipart: `file`, `model`, options)."""
    return await _audio("transcriptions")


@media.post("/v1/audio/translations")
@media.post("/v3/router/audio/translations")
async def create_translation() -> Response:
    """Translate an uploaded audio file into English text (multipart, as transcriptions)."""
    return await _audio("translations")
