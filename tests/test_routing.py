"""Routing controls (open routing, model families, the vendor pin) and embeddings."""

from __future__ import annotations

import base64
import struct

import openai
import pytest
import trio

from tests.conftest import FakeUpstreams, Gateway, make_config, start_gateway
from tests.fakes.openai_upstream import FakeOpenAI

HI = [{"role": "user", "content": "hi"}]


async def routed_gateway(nursery: trio.Nursery, redis_url: str, fake: FakeOpenAI,
                         other: FakeOpenAI, open_routing: bool = True) -> Gateway:
    config = make_config(
        redis_url,
        {"openai": {"kind": "openai", "base_url": fake.base_url, "max_retries": 0},
         "vllm": {"kind": "openai", "base_url": other.base_url, "max_retries": 0},
         "local": {"kind": "mock"}},
        [{"slug": "gpt-4o", "routes": [{"provider": "openai", "model": "gpt-4o-2024-08-06"},
                                       {"provider": "vllm", "model": "llama"}]},
         {"slug": "embed", "routes": [{"provider": "openai", "model": "text-embedding-3-small"}]},
         {"slug": "mock-embed", "routes": [{"provider": "local", "model": "m"}]}],
        open_routing=open_routing)
    return await start_gateway(nursery, config)


@pytest.fixture
async def other_fake(fake_upstream: FakeUpstreams) -> FakeOpenAI:
    """A second OpenAI-compatible upstream (the `vllm` provider)."""
    fake: FakeOpenAI = await fake_upstream("openai")
    return fake


async def test_provider_slash_model_reaches_that_provider_as_is(
        nursery: trio.Nursery, redis_url: str, fake_openai: FakeOpenAI, other_fake: FakeOpenAI) -> None:
    gateway = await routed_gateway(nursery, redis_url, fake_openai, other_fake)
    answer = await gateway.client().chat.completions.create(model="vllm/meta-llama/Llama-3-8B",
                                                            messages=HI)  # type: ignore[arg-type]
    assert answer.model == "vllm/meta-llama/Llama-3-8B"
    assert other_fake.requests[0].body["model"] == "meta-llama/Llama-3-8B"
    assert fake_openai.requests == []


async def test_well_known_names_reach_their_family_and_catalog_wins(
        nursery: trio.Nursery, redis_url: str, fake_openai: FakeOpenAI, other_fake: FakeOpenAI) -> None:
    gateway = await routed_gateway(nursery, redis_url, fake_openai, other_fake)
    client = gateway.client()
    await client.chat.completions.create(model="gpt-4.1-mini", messages=HI)  # type: ignore[arg-type]
    assert fake_openai.requests[-1].body["model"] == "gpt-4.1-mini"  # family: first openai kind
    await client.chat.completions.create(model="gpt-4o", messages=HI)  # type: ignore[arg-type]
    assert fake_openai.requests[-1].body["model"] == "gpt-4o-2024-08-06"  # the catalog's route
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model="claude-sonnet-4-6", messages=HI)  # type: ignore[arg-type]
    assert caught.value.body["code"] == "model_not_found"  # type: ignore[index]


async def test_closed_catalog_refuses_open_slugs(
        nursery: trio.Nursery, redis_url: str, fake_openai: FakeOpenAI, other_fake: FakeOpenAI) -> None:
    gateway = await routed_gateway(nursery, redis_url, fake_openai, other_fake, open_routing=False)
    for slug in ("vllm/llama", "gpt-4.1-mini"):
        with pytest.raises(openai.BadRequestError) as caught:
            await gateway.client().chat.completions.create(model=slug, messages=HI)  # type: ignore[arg-type]
        assert caught.value.body["code"] == "model_not_found"  # type: ignore[index]
    assert fake_openai.requests == [] and other_fake.requests == []


async def test_vendor_header_pins_the_provider(
        nursery: trio.Nursery, redis_url: str, fake_openai: FakeOpenAI, other_fake: FakeOpenAI) -> None:
    gateway = await routed_gateway(nursery, redis_url, fake_openai, other_fake)
    client = gateway.client()
    await client.chat.completions.create(model="gpt-4o", messages=HI,  # type: ignore[arg-type]
                                         extra_headers={"vendor": "vllm"})
    assert other_fake.requests[0].body["model"] == "llama" and fake_openai.requests == []
    await client.chat.completions.create(model="gpt-4o", messages=HI,  # type: ignore[arg-type]
                                         extra_headers={"vendor": "auto"})
    assert len(fake_openai.requests) == 1
    for vendor, code in (("local", "vendor_cannot_serve"), ("nobody", "unknown_vendor")):
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(model="gpt-4o", messages=HI,  # type: ignore[arg-type]
                                                 extra_headers={"vendor": vendor})
        assert caught.value.body["code"] == code  # type: ignore[index]
        assert vendor in caught.value.message


async def test_embeddings_openai_kind_and_mock(
        nursery: trio.Nursery, redis_url: str, fake_openai: FakeOpenAI, other_fake: FakeOpenAI) -> None:
    gateway = await routed_gateway(nursery, redis_url, fake_openai, other_fake)
    client = gateway.client()
    result = await client.embeddings.create(model="embed", input=["a b", "c"], dimensions=6)
    assert result.model == "embed" and len(result.data) == 2 and len(result.data[0].embedding) == 6
    assert fake_openai.requests[0].path == "/v1/embeddings"
    assert fake_openai.requests[0].body["model"] == "text-embedding-3-small"
    assert fake_openai.requests[0].body["dimensions"] == 6

    single = await client.embeddings.create(model="mock-embed", input="hello world")
    again = await client.embeddings.create(model="mock-embed", input="hello world")
    assert single.data[0].embedding == again.data[0].embedding and len(single.data[0].embedding) == 8
    packed = await client.embeddings.create(model="mock-embed", input="hello world",
                                            encoding_format="base64", dimensions=4)
    # asked for explicitly, the SDK hands back the base64 text of float32s
    assert len(struct.unpack("<4f", base64.b64decode(packed.data[0].embedding))) == 4  # type: ignore[arg-type]
    raw = await client.with_raw_response.embeddings.create(
        model="mock-embed", input="x", encoding_format="base64", dimensions=2)
    encoded = raw.http_response.json()["data"][0]["embedding"]
    assert len(struct.unpack("<2f", base64.b64decode(encoded))) == 2
    usage = await gateway.usage()
    assert usage["requests"] == 5 and usage["prompt_tokens"] >= 6


async def test_embeddings_validation_and_unsupported_kind(nursery: trio.Nursery,
                                                          redis_url: str) -> None:
    config = make_config(redis_url, {"local": {"kind": "mock"}},
                         [{"slug": "m", "routes": [{"provider": "local", "model": "m"}]}])
    gateway = await start_gateway(nursery, config)
    with pytest.raises(openai.UnprocessableEntityError):
        await gateway.client().embeddings.create(model="m", input=[])
    with pytest.raises(openai.UnprocessableEntityError):
        await gateway.client().embeddings.create(model="m", input="x", dimensions=0)
