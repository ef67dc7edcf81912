"""The `azure` provider kind end to end, with the official OpenAI SDK as the client,
through ingress, Redis and a worker to a fake Azure OpenAI resource (tests/fakes/azure_upstream.py).

The conformance suite (tests/test_conformance.py) runs azure too; these are the kind's own
behaviours: deployment URLs, `api-version` and `api-key`, Azure's filter annotations, the
content-filter refusal and Azure's own errors.
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest
import trio
from openai.types.chat import ChatCompletionChunk

from schemas.config import ConfigError, parse_config
from schemas.envelopes import Job
from schemas.providers import AzureProvider
from tests.conftest import Gateway, make_config, start_gateway
from tests.fakes import azure_upstream as azure
from tests.fakes.azure_upstream import Behavior, FakeAzure
from tests.fakes.server import serve_asgi
from workers.providers._base import Call
from workers.providers.azure import AzureAdapter

SECRET = "azure-key-5f3c9a0e1b7d4c2a"
KEY_ENV = "SB_TEST_AZURE_RESOURCE_KEY"
SLUG, EMBED = "office-gpt", "office-embed"
DEPLOYMENT, BACKUP_DEPLOYMENT, EMBED_DEPLOYMENT = "chat-prod", "chat-west", "embed-prod"
CHAT_PATH = f"/openai/deployments/{DEPLOYMENT}/chat/completions"
WEATHER: Any = {"type": "function", "function": {
    "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
STREAM = pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])


@dataclass
class Azure:
    gateway: Gateway
    fake: FakeAzure  # provider `east`: SLUG's first route and EMBED's only one
    backup: FakeAzure | None  # provider `west`: SLUG's second route, with failover

    def client(self) -> openai.AsyncOpenAI:
        return self.gateway.client()


Build = Callable[..., Awaitable[Azure]]


@pytest.fixture
def start_azure(nursery: trio.Nursery, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Build:
    """`await start_azure()`: a gateway whose SLUG goes to deployment DEPLOYMENT of a fake
    resource (`max_retries=1`, `options` on top) and, with `failover`, then to another
    resource; the credential SECRET in KEY_ENV unless `credential=False`."""

    async def fake() -> FakeAzure:
        made = FakeAzure()
        made.base_url = await nursery.start(serve_asgi, made) + made.base_path
        made.api_key = SECRET
        return made

    async def build(*, failover: bool = False, credential: bool = True, **options: Any) -> Azure:
        if credential:
            monkeypatch.setenv(KEY_ENV, SECRET)
        else:
            monkeypatch.delenv(KEY_ENV, raising=False)
        east = await fake()
        common = {"kind": "azure", "api_key_env": KEY_ENV, "timeout_s": 5}
        providers = {"east": {**common, "base_url": east.base_url, "max_retries": 1, **options}}
        routes = [{"provider": "east", "model": DEPLOYMENT}]
        west = await fake() if failover else None
        if west is not None:
            providers["west"] = {**common, "base_url": west.base_url, "max_retries": 0}
            routes.append({"provider": "west", "model": BACKUP_DEPLOYMENT})
        models = [{"slug": SLUG, "routes": routes},
                  {"slug": EMBED, "routes": [{"provider": "east", "model": EMBED_DEPLOYMENT}]}]
        gateway = await start_gateway(nursery, make_config(redis_url, providers, models))
        return Azure(gateway, east, west)

    return build


def user(text: str) -> Any:
    return [{"role": "user", "content": text}]


async def sse_data(az: Azure, **params: Any) -> list[str]:
    """The data of every event of a streamed answer to SLUG, as sent."""
    async with az.client().chat.completions.with_streaming_response.create(
            model=SLUG, stream=True, **params) as response:
        lines = [line async for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines), lines
    return [line.removeprefix("data: ") for line in lines]


def chunks_of(data: list[str]) -> list[ChatCompletionChunk]:
    """Every event before [DONE] as an SDK chunk: the stream ends properly, each event is a
    chat.completion.chunk of one stream with the slug as model."""
    assert data[-1] == "[DONE]" and "[DONE]" not in data[:-1]
    chunks = [ChatCompletionChunk.model_validate_json(d) for d in data[:-1]]
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert {c.model for c in chunks} == {SLUG} and len({c.id for c in chunks}) == 1
    assert all(json.loads(d)["choices"][0].get("delta") is not None for d in data[:-1] if
               json.loads(d)["choices"])
    return chunks


# ── addressing ──────────────────────────────────────────────────────────────────
async def test_plain_completion_goes_to_the_deployment_with_api_version_and_api_key(
        start_azure: Build) -> None:
    az = await start_azure()
    raw = await az.client().chat.completions.with_raw_response.create(model=SLUG, messages=user("ping pong"))
    answer = raw.parse()
    assert answer.model == SLUG and azure.MODEL not in raw.http_response.text
    assert answer.choices[0].message.content == "ping pong" and answer.choices[0].finish_reason == "stop"
    body = raw.http_response.json()  # Azure's annotations are relayed where they sit
    assert body["prompt_filter_results"][0]["content_filter_results"]["jailbreak"]["detected"] is False
    assert body["choices"][0]["content_filter_results"]["violence"]["filtered"] is False
    (seen,) = az.fake.requests
    assert seen.path == CHAT_PATH
    assert seen.query == {"api-version": ["2024-10-21"]}
    assert seen.headers["api-key"] == SECRET and "authorization" not in seen.headers
    assert seen.body["model"] == DEPLOYMENT  # the deployment name, never the client's slug
    assert az.gateway.secret not in seen.raw.decode() + json.dumps(seen.headers)


async def test_the_configured_api_version_is_sent(start_azure: Build) -> None:
    az = await start_azure(api_version="2025-01-01-preview")
    await az.client().chat.completions.create(model=SLUG, messages=user("x"))
    assert az.fake.requests[0].query == {"api-version": ["2025-01-01-preview"]}


async def test_deployment_and_version_are_quoted_into_the_url() -> None:
    job = Job(request_id="r", org="o", project="p", key_id="k", model=SLUG, routes=[], body=b"{}",
              stream=False, reply_to="", deadline=0.0)
    async with httpx.AsyncClient() as http:
        adapter = AzureAdapter("east", AzureProvider(base_url="https://r.openai.azure.com/",
                                                     api_version="v 1&x"), http)
        assert adapter._url(Call(job, "a b/c"), "embeddings") == \
            "https://r.openai.azure.com/openai/deployments/a%20b%2Fc/embeddings?api-version=v%201%26x"


def test_base_url_is_required_and_the_config_error_names_it() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"providers": {"east": {"kind": "azure", "api_key_env": "X"}}}, "sb.toml")
    assert "sb.toml" in str(caught.value) and "$.providers.east.base_url" in str(caught.value)


async def test_an_api_version_azure_refuses_is_our_fault_so_it_fails_over(start_azure: Build) -> None:
    az = await start_azure(failover=True, api_version="2023-13-01")
    answer = await az.client().chat.completions.create(model=SLUG, messages=user("still here"))
    assert answer.choices[0].message.content == "still here"
    assert len(az.fake.requests) == 1  # a 400 is not retried...
    assert az.backup is not None and len(az.backup.requests) == 1  # ...but it is not the client's
    assert az.backup.requests[0].path == f"/openai/deployments/{BACKUP_DEPLOYMENT}/chat/completions"


async def test_without_a_credential_azure_answers_401_and_the_client_502(start_azure: Build) -> None:
    az = await start_azure(credential=False)
    with pytest.raises(openai.InternalServerError) as caught:
        await az.client().chat.completions.create(model=SLUG, messages=user("x"))
    error = caught.value.body
    assert isinstance(error, dict) and error["code"] == "upstream_error"
    assert error["details"] == {"provider": "east", "status": 401}
    assert "api-key" not in az.fake.requests[0].headers and len(az.fake.requests) == 1


# ── streams ─────────────────────────────────────────────────────────────────────
async def test_stream_is_openai_chunks_and_the_prompt_annotations_never_reach_the_client(
        start_azure: Build) -> None:
    az = await start_azure()
    data = await sse_data(az, messages=user("one two three"))
    chunks = chunks_of(data)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "one two three"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks] == [None, None, None, "stop"]
    assert all(c.usage is None for c in chunks)
    assert not any("prompt_filter_results" in d for d in data)
    assert json.loads(data[1])["choices"][0]["content_filter_results"]["hate"]["filtered"] is False
    sent = [json.loads(d) for d in az.fake.answers[:-1]]  # the fake did open with the annotations
    assert sent[0]["choices"] == [] and "prompt_filter_results" in sent[0]
    assert "usage" in sent[-1] and sent[-1]["choices"] == []  # asked for by the gateway, not relayed
    assert len(data) == len(az.fake.answers) - 2
    (seen,) = az.fake.requests
    assert (seen.path, seen.query["api-version"]) == (CHAT_PATH, ["2024-10-21"])


async def test_asynchronous_filter_annotations_never_reach_the_client(start_azure: Build) -> None:
    az = await start_azure()
    az.fake.then(Behavior(async_filter=True))
    data = await sse_data(az, messages=user("one two three"))
    chunks = chunks_of(data)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "one two three"
    assert [c.choices[0].finish_reason for c in chunks][-1] == "stop"
    sent = [json.loads(d) for d in az.fake.answers[:-1]]
    annotations = [e for e in sent if e["object"] == ""]
    assert len(annotations) == 3 and "prompt_annotations" in annotations[0]  # prompt + 2 offsets
    assert len(data) == len(az.fake.answers) - 4  # and the usage chunk


@pytest.mark.parametrize("mode", ["plain", "stream", "async-stream"])
async def test_a_completion_cut_by_the_filter_is_relayed_as_is(start_azure: Build, mode: str) -> None:
    az = await start_azure(failover=True)
    az.fake.then(Behavior(filtered="violence", async_filter=mode == "async-stream"))
    if mode == "plain":
        raw = await az.client().chat.completions.with_raw_response.create(model=SLUG, messages=user("x y"))
        answer = raw.parse()
        assert answer.choices[0].finish_reason == "content_filter" and answer.model == SLUG
        results = raw.http_response.json()["choices"][0]["content_filter_results"]
    else:
        data = await sse_data(az, messages=user("x y"))
        chunks = chunks_of(data)
        assert [c.choices[0].finish_reason for c in chunks] == [None, None, "content_filter"]
        assert chunks[-1].choices[0].delta.content is None
        results = json.loads(data[-2])["choices"][0]["content_filter_results"]
    assert results["violence"]["filtered"] is True
    assert az.backup is not None and az.backup.requests == []  # an answer, not a failure
    assert (await az.gateway.usage())["requests"] == 1


# ── usage ───────────────────────────────────────────────────────────────────────
async def test_usage_is_metered_and_its_chunk_relayed_only_when_asked(start_azure: Build) -> None:
    az = await start_azure()
    client = az.client()
    chunks = [c async for c in await client.chat.completions.create(
        model=SLUG, messages=user("one two three"), stream=True)]
    assert all(c.usage is None and c.choices for c in chunks)
    assert az.fake.requests[0].body["stream_options"] == {"include_usage": True}
    assert await az.gateway.usage() == {"tokens": 6, "prompt_tokens": 3, "completion_tokens": 3,
                                        "requests": 1}
    chunks = [c async for c in await client.chat.completions.create(
        model=SLUG, messages=user("four five"), stream=True, stream_options={"include_usage": True})]
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None and usage.total_tokens == 4
    assert chunks[-1].model == SLUG and chunks[-2].choices[0].finish_reason == "stop"
    answer = await client.chat.completions.create(model=SLUG, messages=user("six"))
    assert answer.usage is not None and answer.usage.total_tokens == 2
    assert await az.gateway.usage() == {"tokens": 12, "prompt_tokens": 6, "completion_tokens": 6,
                                        "requests": 3}


# ── embeddings ──────────────────────────────────────────────────────────────────
async def test_embeddings_as_floats_and_base64(start_azure: Build) -> None:
    az = await start_azure()
    client = az.client()
    floats = await client.embeddings.create(model=EMBED, input=["a", "b"], encoding_format="float")
    assert floats.model == EMBED and [e.embedding for e in floats.data] == [[0.5] * 4] * 2
    raw = await client.embeddings.with_raw_response.create(model=EMBED, input="c", dimensions=3)
    packed = raw.http_response.json()["data"][0]["embedding"]  # the SDK asks for base64 by default
    assert struct.unpack("<3f", base64.b64decode(packed)) == (0.5, 0.5, 0.5)
    assert raw.parse().data[0].embedding == [0.5] * 3 and raw.parse().model == EMBED
    assert [r.path for r in az.fake.requests] == [f"/openai/deployments/{EMBED_DEPLOYMENT}/embeddings"] * 2
    assert [r.body["encoding_format"] for r in az.fake.requests] == ["float", "base64"]
    assert all(r.body["model"] == EMBED_DEPLOYMENT and r.query == {"api-version": ["2024-10-21"]}
               and r.headers["api-key"] == SECRET for r in az.fake.requests)
    assert await az.gateway.usage() == {"tokens": 9, "prompt_tokens": 9, "completion_tokens": 0,
                                        "requests": 2}


# ── tool calls ──────────────────────────────────────────────────────────────────
@STREAM
async def test_tool_calls(start_azure: Build, stream: bool) -> None:
    az = await start_azure()
    az.fake.then(azure.tool_call("get_weather", {"city": "Oslo"}))
    client = az.client()
    if stream:
        chunks = [c async for c in await client.chat.completions.create(
            model=SLUG, messages=user("Weather?"), tools=[WEATHER], stream=True)]
        deltas = [d for c in chunks for d in c.choices[0].delta.tool_calls or []]
        call_id = "".join(d.id or "" for d in deltas)
        arguments = "".join(d.function.arguments or "" for d in deltas if d.function)
        finish = chunks[-1].choices[0].finish_reason
    else:
        answer = await client.chat.completions.create(model=SLUG, messages=user("Weather?"), tools=[WEATHER])
        (call,) = answer.choices[0].message.tool_calls or []
        call_id, arguments = call.id, call.function.arguments  # type: ignore[union-attr]
        finish = answer.choices[0].finish_reason
    assert (finish, call_id, json.loads(arguments)) == ("tool_calls", "call_azure", {"city": "Oslo"})
    assert az.fake.requests[0].body["tools"] == [WEATHER]


# ── failures ────────────────────────────────────────────────────────────────────
@STREAM
async def test_a_prompt_the_content_filter_refuses_is_the_clients_400(start_azure: Build,
                                                                       stream: bool) -> None:
    az = await start_azure(failover=True)
    az.fake.then(Behavior(status=400, error=azure.content_filter_error("hate", "violence")))
    with pytest.raises(openai.BadRequestError) as caught:
        await az.client().chat.completions.create(model=SLUG, messages=user("x"), stream=stream)
    error = caught.value.body
    assert caught.value.status_code == 400 and isinstance(error, dict)
    assert error["code"] == "content_filter"
    assert "content filter" in error["message"] and "refused the prompt" in error["message"]
    assert "hate, violence" in error["message"]
    assert error["details"] == {"provider": "east", "status": 400}
    assert len(az.fake.requests) == 1  # not retried...
    assert az.backup is not None and az.backup.requests == []  # ...nor failed over
    assert await az.gateway.usage() == {}


async def test_rate_limits_and_5xx_are_retried_then_failed_over(start_azure: Build) -> None:
    az = await start_azure(failover=True)
    az.fake.then(azure.rate_limited(), azure.server_error("busy"))
    answer = await az.client().chat.completions.create(model=SLUG, messages=user("made it"))
    assert answer.choices[0].message.content == "made it"
    assert len(az.fake.requests) == 2
    assert az.backup is not None
    assert [azure.deployment_of(r) for r in az.backup.requests] == [BACKUP_DEPLOYMENT]


@STREAM
async def test_5xx_is_retried_then_502(start_azure: Build, stream: bool) -> None:
    az = await start_azure()
    az.fake.then(azure.server_error("busy"), azure.server_error("busy"))
    with pytest.raises(openai.InternalServerError) as caught:
        await az.client().chat.completions.create(model=SLUG, messages=user("x"), stream=stream)
    error = caught.value.body
    assert caught.value.status_code == 502 and isinstance(error, dict)
    assert (error["code"], error["details"]) == ("upstream_error", {"provider": "east", "status": 500})
    assert "busy" not in error["message"]  # only the status is told
    assert len(az.fake.requests) == 2 and await az.gateway.usage() == {}


async def test_credential_never_in_a_response_or_log_line(
        start_azure: Build, switchboard_logs: pytest.LogCaptureFixture) -> None:
    az = await start_azure(max_retries=0)
    refusal = azure.content_filter_error("hate")
    refusal["error"]["message"] += f" (key {SECRET})"
    az.fake.then(azure.client_error(f"bad request with key {SECRET}"),
                 Behavior(status=400, error=refusal),
                 azure.server_error(f"key {SECRET} is busy"),
                 Behavior(status=401, error={"error": {"code": "401", "message": f"no {SECRET}"}}))
    client = az.client()
    seen: list[str] = []
    for failure in (openai.BadRequestError, openai.BadRequestError, openai.InternalServerError,
                    openai.InternalServerError):
        with pytest.raises(failure) as caught:
            await client.chat.completions.create(model=SLUG, messages=user("x"), stream=True)
        seen += [caught.value.response.text, caught.value.message, str(caught.value.response.headers)]
    raw = await client.chat.completions.with_raw_response.create(model=SLUG, messages=user("x"))
    seen += [raw.http_response.text, str(raw.http_response.headers)]
    seen += await sse_data(az, messages=user("x"))
    assert len(az.fake.requests) == 6 and all(r.headers["api-key"] == SECRET for r in az.fake.requests)
    lines = [record.getMessage() for record in switchboard_logs.records]
    assert sum('"event":"job"' in line for line in lines) == 6  # the worker's lines were captured
    assert "[redacted]" in seen[0]  # the provider's message is relayed, the key blotted out
    assert [text for text in seen + lines if SECRET in text] == []


# ── the fake speaks Azure ───────────────────────────────────────────────────────
async def test_the_fake_refuses_what_azure_refuses(nursery: trio.Nursery) -> None:
    fake = FakeAzure()
    fake.deployments = {DEPLOYMENT}
    origin = await nursery.start(serve_asgi, fake)
    body = {"messages": user("x")}
    key = {"api-key": "any"}
    version = "?api-version=2024-10-21"
    async with httpx.AsyncClient(base_url=origin) as http:
        cases = [
            (await http.post(CHAT_PATH, json=body, headers=key), 404, "404"),
            (await http.post(f"/openai/deployments/{DEPLOYMENT}/completions/x{version}", json=body,
                             headers=key), 404, "404"),
            (await http.post(CHAT_PATH + version, json=body), 401, "401"),
            (await http.post(CHAT_PATH + "?api-version=2099-01-01", json=body, headers=key), 400,
             "BadRequest"),
            (await http.post(f"/openai/deployments/nope/chat/completions{version}", json=body,
                             headers=key), 404, "DeploymentNotFound"),
            (await http.post(CHAT_PATH + version, json={**body, "stream_options": {"include_usage": True}},
                             headers=key), 400, None),
        ]
        ok = await http.post(CHAT_PATH + version, json=body, headers=key)
    assert [(r.status_code, r.json()["error"]["code"]) for r, _, _ in cases] == \
        [(status, code) for _, status, code in cases]
    assert ok.status_code == 200 and ok.json()["model"] == azure.MODEL
