"""`POST /v1/completions` with the official openai SDK: relayed to `openai` and `azure`
upstreams (which record what they got), translated to chat for `mock`, `anthropic` and
`gemini` routes, plain and streamed, prompts as a string or a list, `n`, `echo`."""

from __future__ import annotations

import openai
import pytest
import trio

from tests.conftest import KindGateways
from tests.surface_gateways import AZURE_KEY, OPENAI_KEY, Surface, surface_gateway


@pytest.fixture
async def surface(nursery: trio.Nursery, redis_url: str,
                  monkeypatch: pytest.MonkeyPatch) -> Surface:
    return await surface_gateway(nursery, redis_url, monkeypatch)


async def test_openai_route_relays_completions_as_sent(surface: Surface) -> None:
    client = surface.gateway.client()
    answer = await client.completions.create(model="gpt-test", prompt=["one", "two"], max_tokens=7,
                                             extra_body={"vendor_field": 1})
    assert answer.object == "text_completion" and answer.model == "gpt-test"
    assert [c.text for c in answer.choices] == ["completed: one", "completed: two"]
    sent = surface.openai.requests[-1]
    assert sent.path == "/v1/completions"
    assert sent.headers["authorization"] == f"Bearer {OPENAI_KEY}"
    assert sent.body == {"model": "upstream-model-1", "prompt": ["one", "two"], "max_tokens": 7,
                         "vendor_field": 1}
    assert answer.usage is not None and answer.usage.total_tokens == 10
    usage = await surface.gateway.usage()
    assert usage["tokens"] == 10 and usage["requests"] == 1


async def test_openai_route_relays_token_prompts(surface: Surface) -> None:
    answer = await surface.gateway.client().completions.create(model="gpt-test", prompt=[1, 2, 3])
    assert answer.choices[0].text.startswith("completed: ")
    assert surface.openai.requests[-1].body["prompt"] == [1, 2, 3]


async def test_openai_route_streams_completions(surface: Surface) -> None:
    client = surface.gateway.client()
    stream = await client.completions.create(model="gpt-test", prompt="hi", stream=True,
                                             stream_options={"include_usage": True})
    chunks = [chunk async for chunk in stream]
    assert all(c.object == "text_completion" and c.model == "gpt-test" for c in chunks)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "completed: hi"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert surface.openai.requests[-1].body["stream_options"] == {"include_usage": True}


async def test_azure_route_relays_to_the_deployment(surface: Surface) -> None:
    client = surface.gateway.client()
    answer = await client.completions.create(model="az-test", prompt="hey")
    assert answer.choices[0].text == "completed: hey" and answer.model == "az-test"
    sent = surface.azure.requests[-1]
    assert sent.path == "/openai/deployments/my-deploy/completions"
    assert sent.query == {"api-version": ["2024-10-21"]}
    assert sent.headers["api-key"] == AZURE_KEY
    stream = await client.completions.create(model="az-test", prompt="hey", stream=True)
    assert "".join([c.choices[0].text async for c in stream if c.choices]) == "completed: hey"


async def test_mock_route_translates_prompts_times_n(surface: Surface) -> None:
    client = surface.gateway.client()
    answer = await client.completions.create(model="echo", prompt=["alpha beta", "gamma"], n=2,
                                             echo=True, max_tokens=50)
    assert answer.object == "text_completion" and answer.id.startswith("cmpl-")
    # Numbered prompt by prompt: the second prompt's choices start at index n (= 2), whether
    # or not the chat call gave n answers (the mock may answer one).
    by_index = {c.index: c.text for c in answer.choices}
    assert by_index[0] == "alpha betaalpha beta" and by_index[2] == "gammagamma"
    assert by_index.get(1, by_index[0]) == by_index[0] and by_index.get(3, "gammagamma") == "gammagamma"
    assert {c.finish_reason for c in answer.choices} <= {"stop", "length"}
    assert answer.usage is not None and answer.usage.total_tokens > 0


async def test_mock_route_streams_translated_chunks(surface: Surface) -> None:
    client = surface.gateway.client()
    stream = await client.completions.create(model="echo", prompt=["first words", "second"],
                                             stream=True, stream_options={"include_usage": True},
                                             max_tokens=50)
    texts: dict[int, str] = {}
    finished: set[int] = set()
    chunks = [chunk async for chunk in stream]
    for chunk in chunks:
        assert chunk.object == "text_completion" and chunk.model == "echo"
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + choice.text
            if choice.finish_reason:
                finished.add(choice.index)
    assert texts == {0: "first words", 1: "second"} and finished == {0, 1}
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 3


@pytest.mark.parametrize("field", [{"suffix": "end"}, {"logprobs": 2}, {"best_of": 3},
                                   {"max_tokens": 0}])
async def test_mock_route_refuses_what_chat_cannot_do(surface: Surface, field: dict) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        await surface.gateway.client().completions.create(model="echo", prompt="x", **field)
    assert refused.value.code == "unsupported_parameter"
    assert refused.value.param == next(iter(field))


async def test_chat_fields_of_the_wrong_shape_are_422_on_translated_routes(surface: Surface) -> None:
    client = surface.gateway.client()
    with pytest.raises(openai.UnprocessableEntityError):
        await client.completions.create(model="echo", prompt="x", extra_body={"tools": "nope"})
    with pytest.raises(openai.UnprocessableEntityError):
        await client.completions.create(model="echo", prompt="x", seed="abc")  # type: ignore[arg-type]


async def test_mock_route_refuses_token_prompts(surface: Surface) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        await surface.gateway.client().completions.create(model="echo", prompt=[1, 2])
    assert refused.value.code == "unsupported_parameter" and refused.value.param == "prompt"


async def test_bad_prompts_are_422(surface: Surface) -> None:
    client = surface.gateway.client()
    for prompt in (["a", 1], [], None):
        with pytest.raises(openai.UnprocessableEntityError):
            await client.completions.create(model="echo", prompt=prompt)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["anthropic", "gemini"])
async def test_translated_kinds_answer_completions(kind_gateway: KindGateways, kind: str) -> None:
    gateway = await kind_gateway(kind)
    client = gateway.client()
    answer = await client.completions.create(model=gateway.slug, prompt="tell me", max_tokens=20)
    assert answer.object == "text_completion" and answer.model == gateway.slug
    assert answer.choices[0].text == "tell me" and answer.choices[0].index == 0
    sent = gateway.fake.requests[-1].raw
    assert b"tell me" in sent
    stream = await client.completions.create(model=gateway.slug, prompt="stream me",
                                             max_tokens=20, stream=True)
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "stream me"
    assert chunks[-1].choices[0].finish_reason == "stop"
    usage = await gateway.usage()
    assert usage["requests"] == 2
