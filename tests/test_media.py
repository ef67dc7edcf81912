"""Images and audio with the official openai SDK: relayed to `openai` and `azure`
upstreams (the fakes decode and record the upload), answered by `mock`, refused with
`unsupported_endpoint` on other kinds; the upload reaches the upstream byte for byte."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import httpx
import openai
import pytest
import trio

from tests.conftest import KindGateways
from tests.surface_gateways import AZURE_KEY, OPENAI_KEY, Surface, surface_gateway

AUDIO = bytes(range(256)) * 64 + b"\r\n--not-a-boundary\r\n[[[[{{{{"  # binary, bracket-heavy


@pytest.fixture
async def surface(nursery: trio.Nursery, redis_url: str,
                  monkeypatch: pytest.MonkeyPatch) -> Surface:
    return await surface_gateway(nursery, redis_url, monkeypatch)


@pytest.fixture
def audio_file(tmp_path: Path) -> Path:
    path = tmp_path / "meeting.wav"
    path.write_bytes(AUDIO)
    return path


async def test_images_relayed_to_openai_and_metered(surface: Surface) -> None:
    client = surface.gateway.client()
    answer = await client.images.generate(model="gpt-test", prompt="a red fox", size="1024x1024")
    assert answer.data is not None and answer.data[0].b64_json == "aGk="
    sent = surface.openai.requests[-1]
    assert sent.path == "/v1/images/generations"
    assert sent.headers["authorization"] == f"Bearer {OPENAI_KEY}"
    assert sent.body == {"model": "upstream-model-1", "prompt": "a red fox", "size": "1024x1024"}
    usage = await surface.gateway.usage()
    assert usage["prompt_tokens"] == 7 and usage["completion_tokens"] == 200
    assert usage["requests"] == 1


async def test_images_relayed_to_the_azure_deployment(surface: Surface) -> None:
    answer = await surface.gateway.client().images.generate(model="az-test", prompt="a boat")
    assert answer.data is not None and answer.data[0].b64_json == "aGk="
    sent = surface.azure.requests[-1]
    assert sent.path == "/openai/deployments/my-deploy/images/generations"
    assert sent.query == {"api-version": ["2024-10-21"]} and sent.headers["api-key"] == AZURE_KEY


@pytest.mark.parametrize("slug,fake", [("gpt-test", "openai"), ("az-test", "azure")])
async def test_transcription_upload_reaches_upstream_intact(
        surface: Surface, audio_file: Path, slug: str, fake: str) -> None:
    client = surface.gateway.client()
    with audio_file.open("rb") as upload:
        answer = await client.audio.transcriptions.create(model=slug, file=upload,
                                                          language="en", temperature=0.2)
    assert answer.text == f"heard meeting.wav ({len(AUDIO)} bytes)"
    upstream = getattr(surface, fake)
    form = upstream.forms[-1]
    sent = form.file()
    assert sent is not None and sent.filename == "meeting.wav" and sent.data == AUDIO
    assert form.value("model") == ("upstream-model-1" if fake == "openai" else "my-deploy")
    assert form.value("language") == "en" and form.value("temperature") == "0.2"
    path = upstream.requests[-1].path
    assert path.endswith("/audio/transcriptions")
    if fake == "azure":
        assert path == "/openai/deployments/my-deploy/audio/transcriptions"
    usage = await surface.gateway.usage()
    assert usage["prompt_tokens"] == 11 and usage["completion_tokens"] == 4


async def test_translation_as_text(surface: Surface, audio_file: Path) -> None:
    client = surface.gateway.client()
    text = await client.audio.translations.create(model="gpt-test", file=audio_file,
                                                  response_format="text")
    assert text.strip() == f"heard meeting.wav ({len(AUDIO)} bytes)"
    assert surface.openai.requests[-1].path == "/v1/audio/translations"
    async with httpx.AsyncClient() as http:
        answer = await http.post(surface.gateway.base_url + "/v1/audio/translations",
                                 headers={"authorization": f"Bearer {surface.gateway.secret}"},
                                 data={"model": "gpt-test", "response_format": "srt"},
                                 files={"file": ("a.mp3", b"abc", "audio/mpeg")})
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")


async def test_mock_media_is_deterministic(surface: Surface, audio_file: Path) -> None:
    client = surface.gateway.client()
    first = await client.images.generate(model="echo", prompt="same prompt", n=2)
    again = await client.images.generate(model="echo", prompt="same prompt")
    assert first.data is not None and again.data is not None and len(first.data) == 2
    assert first.data[0].b64_json == again.data[0].b64_json
    assert base64.b64decode(first.data[0].b64_json or "").startswith(b"\x89PNG")
    heard = await client.audio.transcriptions.create(model="echo", file=audio_file)
    digest = hashlib.sha256(AUDIO).hexdigest()[:12]
    assert heard.text == f"Mock transcription of meeting.wav ({len(AUDIO)} bytes, sha256 {digest})."
    verbose = await client.audio.translations.create(model="echo", file=audio_file,
                                                     response_format="verbose_json")
    assert verbose.text.startswith("Mock translation of meeting.wav")


async def test_other_kinds_refuse_media(kind_gateway: KindGateways, audio_file: Path) -> None:
    gateway = await kind_gateway("anthropic")
    client = gateway.client()
    with pytest.raises(openai.BadRequestError) as refused:
        await client.images.generate(model=gateway.slug, prompt="x")
    assert refused.value.code == "unsupported_endpoint"
    with pytest.raises(openai.BadRequestError) as refused:
        await client.audio.transcriptions.create(model=gateway.slug, file=audio_file)
    assert refused.value.code == "unsupported_endpoint"
    assert gateway.fake.requests == []


async def test_bad_uploads_are_4xx(surface: Surface) -> None:
    auth = {"authorization": f"Bearer {surface.gateway.secret}"}
    url = surface.gateway.base_url + "/v1/audio/transcriptions"
    async with httpx.AsyncClient() as http:
        no_file = await http.post(url, headers=auth, data={"model": "echo"},
                                  files={"other": ("x", b"1")})
        no_model = await http.post(url, headers=auth, files={"file": ("a.wav", b"1")})
        as_json = await http.post(url, headers=auth, json={"model": "echo"})
        cut = await http.post(url, headers={**auth, "content-type":
                                            "multipart/form-data; boundary=zz"},
                              content=b"--zz\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nech")
        streamed = await http.post(url, headers=auth, data={"model": "echo", "stream": "true"},
                                   files={"file": ("a.wav", b"1")})
    assert (no_file.status_code, no_file.json()["error"]["param"]) == (400, "file")
    assert (no_model.status_code, no_model.json()["error"]["param"]) == (400, "model")
    assert as_json.status_code == 415
    assert (cut.status_code, cut.json()["error"]["code"]) == (400, "invalid_multipart")
    assert (streamed.status_code, streamed.json()["error"]["code"]) == (400, "unsupported_parameter")


async def test_a_large_upload_goes_through_the_queue(surface: Surface, tmp_path: Path) -> None:
    big = tmp_path / "long.flac"
    payload = bytes(range(256)) * (3 * 1024 * 1024 // 256)  # 3 MiB, under max_body_bytes
    big.write_bytes(payload)
    heard = await surface.gateway.client().audio.transcriptions.create(model="echo", file=big)
    digest = hashlib.sha256(payload).hexdigest()[:12]
    assert heard.text == f"Mock transcription of long.flac ({len(payload)} bytes, sha256 {digest})."
    usage = await surface.gateway.usage()
    assert usage["requests"] == 1


async def test_an_upload_is_estimated_by_its_text_not_its_file(
        nursery: trio.Nursery, redis_url: str, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    from tests.test_limits import set_limits

    # 3 MiB would be ~786k tokens counted as a prompt; the key's tpm must fit the estimate.
    surface = await surface_gateway(nursery, redis_url, monkeypatch)
    await set_limits(surface.gateway.redis, "key", surface.gateway.key_id, {"tpm": 10_000})
    big = tmp_path / "long.flac"
    big.write_bytes(b"\x00" * (3 * 1024 * 1024))
    heard = await surface.gateway.client().audio.transcriptions.create(model="echo", file=big)
    assert heard.text.startswith("Mock transcription of long.flac")
