"""The mock kind's images and audio: deterministic answers, no network.

Images: `n` 1x1 PNGs whose colour comes from the prompt's SHA-256 (as `b64_json`, or a
`url` under `https://mock.switchboard.invalid/` with `response_format: "url"`), usage in
prompt words. Audio: the transcript (or translation) names the uploaded file, its size and
the first 12 hex digits of its SHA-256, in the `response_format` asked for (`json` with
token usage, `verbose_json`, `text`, `srt`, `vtt`).
"""

from __future__ import annotations

import base64
import hashlib
import struct
import time
import zlib
from typing import Any

import msgspec

from schemas.chat import Usage
from schemas.media import form_decoder, image_decoder
from workers.providers._base import Answer, Call

_encode = msgspec.json.Encoder().encode


def tiny_png(rgb: bytes) -> bytes:
    """A valid 1x1 RGB PNG of colour `rgb` (3 bytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\x00" + rgb[:3])) + chunk(b"IEND", b""))


def _image(call: Call) -> Answer:
    request = image_decoder.decode(call.job.body)
    digest = hashlib.sha256(request.prompt.encode()).hexdigest()
    data: list[dict[str, str]] = []
    for index in range(request.n or 1):
        if request.response_format == "url":
            data.append({"url": f"https://mock.switchboard.invalid/images/{digest[:16]}-{index}.png"})
        else:
            data.append({"b64_json": base64.b64encode(tiny_png(bytes.fromhex(digest[:6]))).decode()})
    words = max(len(request.prompt.split()), 1)
    usage = {"input_tokens": words, "output_tokens": 0, "total_tokens": words,
             "input_tokens_details": {"text_tokens": words, "image_tokens": 0}}
    return Answer(_encode({"created": int(time.time()), "data": data, "usage": usage}),
                  Usage(words, 0, words))


def _timestamp(seconds: float, comma: bool) -> str:
    millis = int(seconds * 1000)
    text = f"{millis // 3_600_000:02d}:{millis // 60_000 % 60:02d}:{millis // 1000 % 60:02d}"
    return text + ("," if comma else ".") + f"{millis % 1000:03d}"


def _audio(call: Call) -> Answer:
    form = form_decoder.decode(call.job.body)
    upload = form.file()
    name, data = (upload.filename or "", upload.data) if upload else ("", b"")
    verb = "translation" if call.job.endpoint == "translations" else "transcription"
    text = (f"Mock {verb} of {name} ({len(data)} bytes, "
            f"sha256 {hashlib.sha256(data).hexdigest()[:12]}).")
    words = len(text.split())
    usage = Usage(0, words, words)
    match form.value("response_format") or "json":
        case "text":
            return Answer(text.encode(), usage)
        case "srt":
            return Answer(f"1\n{_timestamp(0, True)} --> {_timestamp(1, True)}\n{text}\n\n".encode(),
                          usage)
        case "vtt":
            return Answer(f"WEBVTT\n\n{_timestamp(0, False)} --> {_timestamp(1, False)}\n{text}\n\n"
                          .encode(), usage)
        case "verbose_json":
            body: dict[str, Any] = {
                "task": "translate" if verb == "translation" else "transcribe",
                "language": "english", "duration": 1.0, "text": text,
                "segments": [{"id": 0, "seek": 0, "start": 0.0, "end": 1.0, "text": text,
                              "tokens": [], "temperature": 0.0, "avg_logprob": 0.0,
                              "compression_ratio": 1.0, "no_speech_prob": 0.0}]}
            return Answer(_encode(body), usage)
        case _:
            return Answer(_encode({"text": text, "usage": {
                "type": "tokens", "input_tokens": 0, "output_tokens": words,
                "total_tokens": words}}), usage)


class MockMedia:
    """The mock's `media` method, mixed into MockAdapter."""

    async def media(self, call: Call) -> Answer:
        """A deterministic image or transcript (see the module's docstring)."""
        return _image(call) if call.job.endpoint == "images" else _audio(call)
