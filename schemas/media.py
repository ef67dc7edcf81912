"""Images and audio: the OpenAI request fields the gateway reads, and the uploaded form.

`POST /v1/images/generations` is JSON (`ImageRequest`, validated, relayed as received).
`POST /v1/audio/transcriptions` and `/translations` are `multipart/form-data`: the ingress
decodes the form once into a `Form` (every part, the file's bytes untouched) and the job
carries it as msgpack, so the worker rebuilds the upload with the route's model without
parsing multipart again (`encode_form`).
"""

from __future__ import annotations

import secrets
from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

from schemas.tracking import EndUser, Thread

MEDIA_ENDPOINTS = ("images", "transcriptions", "translations")
TEXT_FORMATS = frozenset({"text", "srt", "vtt"})  # answered as text/plain, not JSON
AUDIO_FORMATS = ("json", "text", "srt", "verbose_json", "vtt", "diarized_json")


class ImageRequest(Struct):
    """The fields of an image generation request that the gateway type-checks."""

    prompt: Annotated[str, Meta(min_length=1)]
    model: str
    n: Annotated[int, Meta(ge=1, le=10)] | None = None
    response_format: Literal["url", "b64_json"] | None = None
    size: str | None = None
    stream: bool = False
    user: str | None = None
    identity: EndUser | None = None  # Switchboard's own: recorded, never sent upstream
    thread: Thread | None = None


class Part(Struct, array_like=True):
    """One part of a multipart form: a field's text, or a file with its name and type."""

    name: str
    data: bytes
    filename: str | None = None
    content_type: str | None = None


class Form(Struct, array_like=True):
    """An uploaded form, every part in order."""

    parts: list[Part]

    def value(self, name: str) -> str | None:
        """The text of field `name` (its first part), if sent."""
        for part in self.parts:
            if part.name == name and part.filename is None:
                return part.data.decode("utf-8", "replace")
        return None

    def file(self) -> Part | None:
        return next((p for p in self.parts if p.name == "file" and p.filename is not None), None)

    def with_value(self, name: str, value: str) -> Form:
        """The same form with field `name` set to `value` (replaced where it was)."""
        parts = [Part(name, value.encode()) if p.name == name and p.filename is None else p
                 for p in self.parts]
        return Form(parts)


def _quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\r", "").replace("\n", "")


def encode_form(form: Form) -> tuple[bytes, str]:
    """The form as a multipart/form-data body, and the content type naming its boundary."""
    boundary = "sb-" + secrets.token_hex(16)
    out: list[bytes] = []
    for part in form.parts:
        disposition = f'form-data; name="{_quoted(part.name)}"'
        if part.filename is not None:
            disposition += f'; filename="{_quoted(part.filename)}"'
        head = f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
        if part.content_type:
            head += f"Content-Type: {_quoted(part.content_type)}\r\n"
        out += [head.encode(), b"\r\n", part.data, b"\r\n"]
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out), f"multipart/form-data; boundary={boundary}"


form_encoder = msgspec.msgpack.Encoder()
form_decoder = msgspec.msgpack.Decoder(Form)
image_decoder = msgspec.json.Decoder(ImageRequest)
