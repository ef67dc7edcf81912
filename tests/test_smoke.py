"""The spine end to end: the official OpenAI SDK through ingress, Redis and a worker."""

from __future__ import annotations

import os

from tests.conftest import Gateway
from tests.fakes.openai_upstream import FakeOpenAI

os.environ.setdefault("FAKE_UP_KEY", "sk-upstream-secret-123")


async def test_plain_completion_through_openai_provider(openai_gateway: Gateway,
                                                        fake_openai: FakeOpenAI) -> None:
    client = openai_gateway.client()
    answer = await client.chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": "ping pong"}])
    assert answer.choices[0].message.content == "ping pong"
    assert answer.model == "gpt-test"
    assert fake_openai.requests[0].body["model"] == "upstream-model-1"
    assert fake_openai.requests[0].headers["authorization"] == "Bearer sk-upstream-secret-123"


async def test_streamed_completion_through_mock(openai_gateway: Gateway) -> None:
    client = openai_gateway.client()
    stream = await client.chat.completions.create(
        model="echo", stream=True, messages=[{"role": "user", "content": "one two three"}])
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "one two three"
