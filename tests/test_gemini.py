"""The `gemini` provider kind, beside the conformance suite: pure translation both ways,
then end to end with the official OpenAI SDK through ingress, Redis and a worker against a
fake Gemini API."""

from __future__ import annotations

import json
from typing import Any

import httpx
import msgspec
import openai
import pytest

from schemas.errors import GatewayError
from schemas.gemini import GeminiError, GenerateContentResponse, UsageMetadata
from tests.conftest import TLS, Gateway, KindGateway, KindGateways
from tests.fakes.gemini_upstream import Behavior, FakeGemini
from tests.kinds import CASES
from workers.providers.gemini.adapter import upstream_failure
from workers.providers.gemini.request import media_part, translate_request
from workers.providers.gemini.response import StreamTranslator, finish_reason, translate_response, usage_of

KEY = CASES["gemini"].credential
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
PDF = "JVBERi0xLjQKJcTl8uXrp/Og0MTGCjEgMCBvYmoKPDwgPj4KZW5kb2JqCnRyYWlsZXIKPDwgPj4KJSVFT0YK"
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"], "additionalProperties": False}}}


def gemini_body(payload: dict[str, Any]) -> dict[str, Any]:
    """What translate_request sends upstream for an OpenAI payload, as plain JSON."""
    body = {"model": "gem-test", **payload}
    return json.loads(msgspec.json.encode(translate_request(json.dumps(body).encode()).request))


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


# ── unit: request translation ────────────────────────────────────────────────────
def test_roles_system_and_generation_options_translate() -> None:
    body = gemini_body({
        "messages": [{"role": "system", "content": "Be brief."},
                     {"role": "developer", "content": [{"type": "text", "text": "Use French."}]},
                     user("hi"), {"role": "assistant", "content": "salut"}, user("again"),
                     user("and again")],
        "temperature": 0.2, "top_p": 0.9, "top_k": 40, "max_tokens": 50,
        "max_completion_tokens": 64, "stop": "END", "seed": 7, "presence_penalty": 0.5,
        "frequency_penalty": -0.5, "n": 2, "response_format": {"type": "json_object"}})
    assert body == {
        "systemInstruction": {"parts": [{"text": "Be brief."}, {"text": "Use French."}]},
        "contents": [{"role": "user", "parts": [{"text": "hi"}]},
                     {"role": "model", "parts": [{"text": "salut"}]},
                     {"role": "user", "parts": [{"text": "again"}, {"text": "and again"}]}],
        "generationConfig": {"temperature": 0.2, "topP": 0.9, "topK": 40, "maxOutputTokens": 64,
                             "stopSequences": ["END"], "seed": 7, "presencePenalty": 0.5,
                             "frequencyPenalty": -0.5, "candidateCount": 2,
                             "responseMimeType": "application/json"}}


def test_tools_tool_choice_and_json_schema_translate() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}},
              "required": ["a"], "additionalProperties": False}
    body = gemini_body({"messages": [user("x")], "tools": [WEATHER],
                        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
                        "response_format": {"type": "json_schema",
                                            "json_schema": {"name": "A", "strict": True, "schema": schema}}})
    assert body["tools"] == [{"functionDeclarations": [{
        "name": "get_weather", "description": "Weather in a city",
        "parametersJsonSchema": WEATHER["function"]["parameters"]}]}]
    assert body["toolConfig"] == {"functionCallingConfig": {
        "mode": "ANY", "allowedFunctionNames": ["get_weather"]}}
    assert body["generationConfig"] == {"responseMimeType": "application/json",
                                        "responseJsonSchema": schema}
    modes = {choice: gemini_body({"messages": [user("x")], "tools": [WEATHER], "tool_choice": choice})
             ["toolConfig"]["functionCallingConfig"]["mode"] for choice in ("auto", "none", "required")}
    assert modes == {"auto": "AUTO", "none": "NONE", "required": "ANY"}
    assert "toolConfig" not in gemini_body({"messages": [user("x")], "tools": [WEATHER]})


def test_tool_history_becomes_function_call_and_response_parts() -> None:
    calls = [{"id": "call_1", "type": "function",
              "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
              "extra_content": {"google": {"thought_signature": "c2ln"}}},
             {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": ""}}]
    body = gemini_body({"messages": [
        user("weather and time?"), {"role": "assistant", "content": None, "tool_calls": calls},
        {"role": "tool", "tool_call_id": "call_2", "content": "noon"},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 21}'}]})
    assert body["contents"][1:] == [
        {"role": "model", "parts": [
            {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}, "thoughtSignature": "c2ln"},
            {"functionCall": {"name": "get_time", "args": {}}}]},
        {"role": "user", "parts": [
            {"functionResponse": {"name": "get_time", "response": {"content": "noon"}}},
            {"functionResponse": {"name": "get_weather", "response": {"temp_c": 21}}}]}]


def test_media_parts_translate() -> None:
    body = gemini_body({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.JPG?x=1"}},
        {"type": "file", "file": {"filename": "a.pdf", "file_data": f"data:application/pdf;base64,{PDF}"}},
        {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}]}]})
    assert body["contents"][0]["parts"] == [
        {"text": "what is this?"},
        {"inlineData": {"mimeType": "image/png", "data": PNG}},
        {"fileData": {"fileUri": "https://example.com/cat.JPG?x=1", "mimeType": "image/jpeg"}},
        {"inlineData": {"mimeType": "application/pdf", "data": PDF}},
        {"inlineData": {"mimeType": "audio/wav", "data": "UklGRg=="}}]
    assert msgspec.to_builtins(media_part("gs://bucket/files/abc")) == {"fileData": {"fileUri": "gs://bucket/files/abc"}}
    assert msgspec.to_builtins(media_part("data:text/plain,a%20b")) == {
        "inlineData": {"mimeType": "text/plain", "data": "YSBi"}}


@pytest.mark.parametrize(("extra", "param"), [
    ({"logit_bias": {"50256": -100}}, "logit_bias"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"logprobs": True}, "logprobs"),
    ({"reasoning_effort": "high"}, "reasoning_effort"),
    ({"audio": {"voice": "alloy", "format": "wav"}, "modalities": ["text", "audio"]}, "audio"),
    ({"functions": [{"name": "f"}]}, "functions"),
    ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools[0].type"),
    ({"messages": [{"role": "user", "content": [
        {"type": "file", "file": {"file_id": "file-abc"}}]}]}, "messages[0].content[0].file.file_id"),
    ({"messages": [{"role": "function", "name": "f", "content": "x"}]}, "messages[0].role"),
])
def test_parameters_gemini_cannot_honour_are_refused(extra: dict[str, Any], param: str) -> None:
    body = {"model": "gem-test", "messages": [user("x")], **extra}
    with pytest.raises(GatewayError) as info:
        translate_request(json.dumps(body).encode())
    assert (info.value.status, info.value.code, info.value.param) == (400, "unsupported_parameter", param)
    assert "gemini" in info.value.message


def test_harmless_fields_are_accepted_but_reported_and_nulls_are_absent() -> None:
    body = {"model": "gem-test", "messages": [{"role": "user", "content": "x", "name": "ann"}],
            "user": "u-1", "metadata": {"a": "b"}, "logit_bias": None, "functions": [],
            "stream": True, "stream_options": {"include_usage": True}, "parallel_tool_calls": True}
    translation = translate_request(json.dumps(body).encode())
    assert translation.ignored == ["metadata", "user", "messages[].name"]


@pytest.mark.parametrize(("messages", "param"), [
    ([user("x"), {"role": "tool", "tool_call_id": "nope", "content": "1"}], "messages[1].tool_call_id"),
    ([{"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {
        "name": "f", "arguments": "{not json"}}]}], "messages[0].tool_calls[0].function.arguments"),
    ([{"role": "system", "content": "only a system prompt"}], "messages"),
])
def test_invalid_conversations_are_400(messages: list[dict[str, Any]], param: str) -> None:
    with pytest.raises(GatewayError) as info:
        translate_request(json.dumps({"model": "m", "messages": messages}).encode())
    assert (info.value.status, info.value.code, info.value.param) == (400, "invalid_request", param)


# ── unit: response translation ───────────────────────────────────────────────────
@pytest.mark.parametrize(("reason", "tools", "expected"), [
    ("STOP", False, "stop"), ("STOP", True, "tool_calls"), ("MAX_TOKENS", False, "length"),
    ("MAX_TOKENS", True, "length"), ("SAFETY", False, "content_filter"),
    ("RECITATION", False, "content_filter"), ("BLOCKLIST", False, "content_filter"),
    ("PROHIBITED_CONTENT", False, "content_filter"), ("SPII", False, "content_filter"),
    ("MALFORMED_FUNCTION_CALL", False, "stop"), ("OTHER", False, "stop"),
    ("SOMETHING_NEW", False, "stop"), (None, True, "tool_calls"),
])
def test_finish_reasons_map(reason: str | None, tools: bool, expected: str) -> None:
    assert finish_reason(reason, tools) == expected


def test_usage_counts_thinking_as_completion() -> None:
    metadata = UsageMetadata(prompt_token_count=10, candidates_token_count=5,
                             thoughts_token_count=7, total_token_count=22)
    usage = usage_of(metadata)
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (10, 12, 22)
    assert usage_of(None).total_tokens == 0


def decode_response(payload: dict[str, Any]) -> GenerateContentResponse:
    return msgspec.json.decode(json.dumps(payload).encode(), type=GenerateContentResponse)


def test_candidates_become_choices_with_tool_calls_and_signatures() -> None:
    response = decode_response({"candidates": [
        {"index": 1, "finishReason": "MAX_TOKENS", "content": {"role": "model", "parts": [{"text": "b"}]}},
        {"index": 0, "finishReason": "STOP", "content": {"role": "model", "parts": [
            {"text": "thinking...", "thought": True},
            {"text": "Let me check."},
            {"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}},
             "thoughtSignature": "c2ln"}]}}],
        "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 4, "totalTokenCount": 7},
        "responseId": "abc"})
    body = msgspec.to_builtins(translate_response(response, "slug", "gem"))
    assert body["id"] == "chatcmpl-abc" and body["model"] == "slug"
    first, second = body["choices"]
    assert first["finish_reason"] == "tool_calls" and first["message"]["content"] == "Let me check."
    (call,) = first["message"]["tool_calls"]
    assert call["id"].startswith("call_") and call["type"] == "function"
    assert call["function"] == {"name": "get_weather", "arguments": '{"city":"Oslo"}'}
    assert call["extra_content"] == {"google": {"thought_signature": "c2ln"}}
    assert (second["index"], second["message"]["content"], second["finish_reason"]) == (1, "b", "length")
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}


def test_blocked_prompt_is_a_content_filter_answer() -> None:
    body = msgspec.to_builtins(translate_response(
        decode_response({"promptFeedback": {"blockReason": "SAFETY"}}), "slug", "gem"))
    assert body["choices"] == [{"index": 0, "message": {"content": None, "role": "assistant"},
                                "finish_reason": "content_filter", "logprobs": None}]


def test_stream_translator_keeps_indexes_and_finishes_every_choice() -> None:
    translator = StreamTranslator("slug")
    chunks = []
    for event in [
        {"candidates": [{"index": 0, "content": {"parts": [{"text": "Hel"}]}},
                        {"index": 1, "content": {"parts": [{"functionCall": {"name": "a", "args": {}}}]}}]},
        {"candidates": [{"index": 0, "content": {"parts": [{"text": "lo"}]}, "finishReason": "STOP"},
                        {"index": 1, "content": {"parts": [
                            {"functionCall": {"name": "b", "args": {"x": 1}}}]}}]},
    ]:
        chunks += [json.loads(c) for c in translator.feed(decode_response(event))]
    assert not translator.finished  # choice 1 has not finished yet
    chunks += [json.loads(c) for c in translator.feed(decode_response(
        {"candidates": [{"index": 1, "finishReason": "STOP"}],
         "usageMetadata": {"promptTokenCount": 2, "candidatesTokenCount": 3}}))]
    assert translator.finished
    deltas = [(c["choices"][0]["index"], c["choices"][0]["delta"], c["choices"][0]["finish_reason"])
              for c in chunks]
    assert deltas[0] == (0, {"role": "assistant", "content": "Hel"}, None)
    assert deltas[1][1]["role"] == "assistant" and deltas[1][1]["tool_calls"][0]["index"] == 0
    assert [d for d in deltas if d[0] == 0][1:] == [(0, {"content": "lo"}, None), (0, {}, "stop")]
    assert deltas[-2][1]["tool_calls"][0]["index"] == 1
    assert deltas[-2][1]["tool_calls"][0]["function"] == {"name": "b", "arguments": '{"x":1}'}
    assert deltas[-1] == (1, {}, "tool_calls")
    assert json.loads(translator.usage_chunk())["usage"] == {
        "prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}
    assert {c["model"] for c in chunks} == {"slug"} and len({c["id"] for c in chunks}) == 1


@pytest.mark.parametrize(("status", "error", "expected"), [
    (400, {"status": "INVALID_ARGUMENT", "message": "bad schema"}, (400, "invalid_argument", False, False)),
    (413, {"status": "", "message": "too big"}, (413, "upstream_invalid_request", False, False)),
    (400, {"status": "INVALID_ARGUMENT", "message": "API key not valid",
           "details": [{"reason": "API_KEY_INVALID"}]}, (502, "upstream_error", False, True)),
    (400, {"status": "FAILED_PRECONDITION", "message": "no free tier"}, (502, "upstream_error", False, True)),
    (429, {"status": "RESOURCE_EXHAUSTED"}, (502, "upstream_error", True, True)),
    (500, {"status": "INTERNAL"}, (502, "upstream_error", True, True)),
    (503, {"status": "UNAVAILABLE"}, (502, "upstream_error", True, True)),
    (504, {"status": "DEADLINE_EXCEEDED"}, (502, "upstream_error", True, True)),
    (401, {"status": "UNAUTHENTICATED"}, (502, "upstream_error", False, True)),
    (403, {"status": "PERMISSION_DENIED"}, (502, "upstream_error", False, True)),
    (404, {"status": "NOT_FOUND"}, (502, "upstream_error", False, True)),
])
def test_upstream_errors_map(status: int, error: dict[str, Any], expected: tuple[Any, ...]) -> None:
    failure = upstream_failure("gem", status, msgspec.convert(error, GeminiError))
    assert (failure.status, failure.code, failure.retryable, failure.failover) == expected
    assert failure.details == {"provider": "gem", "status": status}
    if failure.status < 500:
        assert failure.message == error["message"]


def test_relayed_messages_never_carry_the_credential() -> None:
    error = GeminiError(400, f"bad request for key {KEY}", "INVALID_ARGUMENT")
    failure = upstream_failure("gem", 400, error, KEY)
    assert KEY not in failure.message and "[redacted]" in failure.message


# ── end to end ───────────────────────────────────────────────────────────────────
@pytest.fixture
async def gateway(kind_gateway: KindGateways) -> KindGateway:
    """`gem-test` routed to the fake Gemini API (provider `primary`, one retry)."""
    return await kind_gateway("gemini", slug="gem-test")


async def post_raw(gateway: Gateway, payload: dict[str, Any]) -> httpx.Response:
    """The gateway's raw HTTP answer (body fully read, streams included)."""
    async with httpx.AsyncClient(verify=TLS, timeout=10) as http:
        return await http.post(f"{gateway.base_url}/v1/chat/completions", json=payload,
                               headers={"authorization": f"Bearer {gateway.secret}"})


async def test_requests_on_the_wire(gateway: Gateway, fake: FakeGemini) -> None:
    client = gateway.client()
    await client.chat.completions.create(model="gem-test", messages=[user("count these four words")])
    await client.chat.completions.create(model="gem-test", messages=[user("one two three")],
                                         stream=True, stream_options={"include_usage": True})
    plain, streamed = fake.requests
    assert plain.path == "/v1beta/models/gemini-2.5-flash:generateContent" and plain.query == {}
    assert plain.headers["x-goog-api-key"] == KEY and "authorization" not in plain.headers
    assert plain.body == {"contents": [{"role": "user", "parts": [{"text": "count these four words"}]}]}
    assert streamed.path == "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    assert streamed.query == {"alt": ["sse"]} and streamed.headers["x-goog-api-key"] == KEY
    assert streamed.body == {"contents": [{"role": "user", "parts": [{"text": "one two three"}]}]}


async def test_tool_call_round_trip(gateway: Gateway, fake: FakeGemini) -> None:
    fake.then(Behavior(function_calls=[{"name": "get_weather", "args": {"city": "Paris"}}],
                              thought_signature="c2lnbmF0dXJl"))
    client = gateway.client()
    messages: list[Any] = [user("Weather in Paris?")]
    first = await client.chat.completions.create(model="gem-test", messages=messages,
                                                 tools=[WEATHER], tool_choice="required")
    assert first.choices[0].finish_reason == "tool_calls"
    (call,) = first.choices[0].message.tool_calls or []
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    assert call.model_dump()["extra_content"] == {"google": {"thought_signature": "c2lnbmF0dXJl"}}
    messages += [first.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temp_c": 21})}]
    second = await client.chat.completions.create(model="gem-test", messages=messages, tools=[WEATHER])
    assert second.choices[0].message.content == 'tool said {"temp_c": 21}'
    assert second.choices[0].finish_reason == "stop"
    one, two = (r.body for r in fake.requests)
    assert one["tools"] == [{"functionDeclarations": [{
        "name": "get_weather", "description": "Weather in a city",
        "parametersJsonSchema": WEATHER["function"]["parameters"]}]}]
    assert one["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}
    assert two["contents"] == [
        {"role": "user", "parts": [{"text": "Weather in Paris?"}]},
        {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
                                     "thoughtSignature": "c2lnbmF0dXJl"}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "get_weather",
                                                         "response": {"temp_c": 21}}}]}]
    assert "toolConfig" not in two


async def test_streamed_parallel_tool_calls(gateway: Gateway, fake: FakeGemini) -> None:
    fake.then(Behavior(function_calls=[{"name": "get_weather", "args": {"city": "Oslo"}},
                                              {"name": "get_weather", "args": {"city": "Rome"}}]))
    stream = await gateway.client().chat.completions.create(
        model="gem-test", stream=True, messages=[user("Oslo and Rome?")], tools=[WEATHER])
    chunks = [c async for c in stream]
    calls = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
    assert [tc.index for tc in calls] == [0, 1]
    assert [json.loads(tc.function.arguments or "")["city"] for tc in calls] == ["Oslo", "Rome"]
    assert len({tc.id for tc in calls}) == 2 and all(tc.id for tc in calls)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


async def test_images_pdf_and_system_reach_gemini(gateway: Gateway, fake: FakeGemini) -> None:
    await gateway.client().chat.completions.create(model="gem-test", messages=[
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": [
            {"type": "text", "text": "Describe both."},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}", "detail": "auto"}},
            {"type": "image_url", "image_url": {"url": "https://example.com/photo.webp"}},
            {"type": "file", "file": {"filename": "doc.pdf",
                                      "file_data": f"data:application/pdf;base64,{PDF}"}}]}])
    (seen,) = fake.requests
    assert seen.body["systemInstruction"] == {"parts": [{"text": "You are terse."}]}
    assert seen.body["contents"] == [{"role": "user", "parts": [
        {"text": "Describe both."},
        {"inlineData": {"mimeType": "image/png", "data": PNG}},
        {"fileData": {"fileUri": "https://example.com/photo.webp", "mimeType": "image/webp"}},
        {"inlineData": {"mimeType": "application/pdf", "data": PDF}}]}]


async def test_generation_options_and_several_candidates(gateway: Gateway,
                                                         fake: FakeGemini) -> None:
    answer = await gateway.client().chat.completions.create(
        model="gem-test", messages=[user("pick")], temperature=0.3, top_p=0.8,
        max_completion_tokens=32, stop=["\n\n", "END"], seed=42, presence_penalty=0.1,
        frequency_penalty=0.2, n=2)
    assert [c.index for c in answer.choices] == [0, 1]
    assert fake.requests[0].body["generationConfig"] == {
        "temperature": 0.3, "topP": 0.8, "maxOutputTokens": 32, "stopSequences": ["\n\n", "END"],
        "seed": 42, "presencePenalty": 0.1, "frequencyPenalty": 0.2, "candidateCount": 2}


async def test_json_schema_response_format(gateway: Gateway, fake: FakeGemini) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
              "additionalProperties": False}
    fake.then(Behavior(text='{"city": "Lyon"}'))
    answer = await gateway.client().chat.completions.create(
        model="gem-test", messages=[user("a city as JSON")],
        response_format={"type": "json_schema",
                         "json_schema": {"name": "City", "strict": True, "schema": schema}})
    assert json.loads(answer.choices[0].message.content or "") == {"city": "Lyon"}
    assert fake.requests[0].body["generationConfig"] == {
        "responseMimeType": "application/json", "responseJsonSchema": schema}


@pytest.mark.parametrize(("behavior", "expected"), [
    (Behavior(finish_reason="SAFETY"), "content_filter"),
    (Behavior(finish_reason="MAX_TOKENS", text="cut sho"), "length"),
    (Behavior(finish_reason="RECITATION", chunks=["It was the best"]), "content_filter"),
    (Behavior(block_reason="PROHIBITED_CONTENT"), "content_filter"),
])
async def test_finish_reasons_plain_and_streamed(gateway: Gateway, fake: FakeGemini,
                                                 behavior: Behavior, expected: str) -> None:
    fake.then(behavior, behavior)
    client = gateway.client()
    answer = await client.chat.completions.create(model="gem-test", messages=[user("risky")])
    assert answer.choices[0].finish_reason == expected
    stream = await client.chat.completions.create(model="gem-test", stream=True,
                                                  messages=[user("risky")])
    chunks = [c async for c in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks][-1] == expected


async def test_bad_credential_is_502_and_never_echoed(gateway: Gateway, fake: FakeGemini) -> None:
    bad_key = Behavior(status=400, error_status="INVALID_ARGUMENT", error_reason="API_KEY_INVALID",
                       message=f"API key not valid: {KEY}. Please pass a valid API key.")
    denied = Behavior(status=403, error_status="PERMISSION_DENIED", message=f"key {KEY} denied")
    relayed = Behavior(status=400, error_status="INVALID_ARGUMENT", message=f"odd value {KEY}")
    fake.then(bad_key, denied, relayed)
    for expected in (502, 502, 400):
        response = await post_raw(gateway, {"model": "gem-test", "messages": [user("hi")]})
        assert response.status_code == expected
        assert KEY not in response.text
    assert len(fake.requests) == 3  # none of them is retried
    assert all(r.headers["x-goog-api-key"] == KEY and KEY not in r.path for r in fake.requests)


async def test_stream_without_finish_reason_is_an_error(gateway: Gateway, fake: FakeGemini) -> None:
    fake.then(Behavior(unfinished=True, chunk_delay_s=0.05))
    stream = await gateway.client().chat.completions.create(
        model="gem-test", stream=True, messages=[user("one two three four")])
    received = []
    with pytest.raises(openai.APIError) as info:
        async for chunk in stream:
            received.append(chunk)
    assert received  # output had begun, so the failure could not be retried
    assert "ended the stream before the answer was complete" in info.value.message
    assert isinstance(info.value.body, dict) and info.value.body["code"] == "upstream_error"
    assert len(fake.requests) == 1
