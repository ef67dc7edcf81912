"""The OpenAI surface under `/v3/router/` (the official SDK with that base URL), model
retrieval, and refusals that no retry can fix telling the SDK so (`x-should-retry`)."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest
import trio

from tests.conftest import TLS
from tests.surface_gateways import Surface, surface_gateway


@pytest.fixture
async def surface(nursery: trio.Nursery, redis_url: str,
                  monkeypatch: pytest.MonkeyPatch) -> Surface:
    return await surface_gateway(nursery, redis_url, monkeypatch)


def router_client(surface: Surface, **kwargs: object) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=surface.gateway.base_url + "/v3/router",
                              api_key=surface.gateway.secret,
                              http_client=openai.DefaultAsyncHttpxClient(verify=TLS),
                              **{"max_retries": 0, **kwargs})  # type: ignore[arg-type]


async def test_every_openai_endpoint_under_v3_router(surface: Surface, tmp_path: Path) -> None:
    client = router_client(surface)
    chat = await client.chat.completions.create(
        model="echo", messages=[{"role": "user", "content": "hello router"}])
    assert chat.choices[0].message.content == "hello router"
    completion = await client.completions.create(model="gpt-test", prompt="p")
    assert completion.choices[0].text == "completed: p"
    embedded = await client.embeddings.create(model="echo", input="x")
    assert len(embedded.data[0].embedding) == 8
    assert "echo" in [m.id async for m in client.models.list()]
    assert (await client.models.retrieve("az-test")).id == "az-test"
    image = await client.images.generate(model="gpt-test", prompt="fox")
    assert image.data is not None and image.data[0].b64_json == "aGk="
    audio = tmp_path / "a.wav"
    audio.write_bytes(b"RIFF....")
    heard = await client.audio.transcriptions.create(model="gpt-test", file=audio)
    assert heard.text == "heard a.wav (8 bytes)"
    translated = await client.audio.translations.create(model="echo", file=audio)
    assert translated.text.startswith("Mock translation")


async def test_models_retrieve(surface: Surface) -> None:
    client = surface.gateway.client()
    model = await client.models.retrieve("gpt-test")
    assert (model.id, model.object, model.owned_by) == ("gpt-test", "model", "switchboard")
    assert isinstance(model.created, int)
    with pytest.raises(openai.NotFoundError) as missing:
        await client.models.retrieve("no-such-model")
    assert missing.value.code == "model_not_found"
    async with httpx.AsyncClient() as http:
        unauthenticated = await http.get(surface.gateway.base_url + "/v1/models/gpt-test")
    assert unauthenticated.status_code == 401


async def test_unknown_path_lists_the_new_endpoints(surface: Surface) -> None:
    async with httpx.AsyncClient() as http:
        answer = await http.get(surface.gateway.base_url + "/v1/nothing")
    message = answer.json()["error"]["message"]
    assert answer.status_code == 404
    for endpoint in ("POST /v1/completions", "GET /v1/models/{model_id}",
                     "POST /v1/images/generations", "POST /v1/audio/transcriptions",
                     "POST /v3/router/embeddings", "POST /v3/router/audio/translations"):
        assert endpoint in message


async def test_subscription_limit_is_not_retried(nursery: trio.Nursery, redis_url: str,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 switchboard_logs: pytest.LogCaptureFixture) -> None:
    # The month rolls over in 5 s: a Retry-After the SDK would honour, were it not told.
    monkeypatch.setattr("ingress.limits.seconds_to_next_month", lambda now=None: 5)
    surface = await surface_gateway(nursery, redis_url, monkeypatch, plan="tiny",
                                    plans={"tiny": {"monthly_tokens": 1}})
    client = surface.gateway.client(max_retries=3)
    await client.completions.create(model="echo", prompt="uses the plan up", max_tokens=5)
    with pytest.raises(openai.RateLimitError) as refused:
        await client.completions.create(model="echo", prompt="more", max_tokens=5)
    assert refused.value.code == "subscription_limit"
    assert refused.value.response.headers["x-should-retry"] == "false"
    assert refused.value.response.headers["retry-after"] == "5"
    rejected = [r for r in switchboard_logs.records
                if '"code":"subscription_limit"' in r.getMessage()]
    assert len(rejected) == 1  # the SDK asked once



async def test_budget_exceeded_is_not_retried(nursery: trio.Nursery, redis_url: str,
                                              monkeypatch: pytest.MonkeyPatch,
                                              switchboard_logs: pytest.LogCaptureFixture) -> None:
    from tests.conftest import make_config, start_gateway
    from tests.test_limits import set_limits

    monkeypatch.setattr("ingress.limits.seconds_to_next_month", lambda now=None: 5)
    config = make_config(redis_url, {"local": {"kind": "mock"}}, [{"slug": "paid", "routes": [
        {"provider": "local", "model": "echo", "input_per_mtok": 1e6, "output_per_mtok": 1e6}]}])
    gateway = await start_gateway(nursery, config)
    await set_limits(gateway.redis, "org", "acme", {"monthly_budget_usd": 0.5})
    with pytest.raises(openai.RateLimitError) as refused:  # a dollar a token: never fits
        await gateway.client(max_retries=3).chat.completions.create(
            model="paid", messages=[{"role": "user", "content": "hi"}], max_tokens=5)
    assert refused.value.code == "budget_exceeded"
    assert refused.value.response.headers["x-should-retry"] == "false"
    assert refused.value.response.headers["retry-after"] == "5"
    assert sum('"code":"budget_exceeded"' in r.getMessage()
               for r in switchboard_logs.records) == 1
