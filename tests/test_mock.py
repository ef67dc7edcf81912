"""The `mock` kind honours what shapes an answer, with the official openai SDK through
ingress, Redis and a worker: `n`, text from content-part lists, `max_tokens` /
`max_completion_tokens` (finish `length`), `stop`, a tool call when the last user message
names a tool, `response_format` json_schema (`chat.completions.parse`) and json_object;
each streamed and plain. Plus unit tests of the minimal-instance generator, checked
against the JSON schemas with jsonschema_rs."""

from __future__ import annotations

import json
from typing import Any, Literal

import jsonschema_rs
import openai
import pydantic
import pytest
import trio

from tests.conftest import Gateway, make_config, start_gateway
from workers.providers.mock_schema import instance

WEATHER: Any = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "minLength": 2},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7}},
        "required": ["city", "unit", "days"], "additionalProperties": False}}}
TIME: Any = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {}}}}


@pytest.fixture
async def gateway(nursery: trio.Nursery, redis_url: str) -> Gateway:
    config = make_config(redis_url, {"local": {"kind": "mock", "chunks": 3}},
                         [{"slug": "echo", "routes": [{"provider": "local", "model": "m"}]}])
    return await start_gateway(nursery, config)


def user(content: Any) -> Any:
    return [{"role": "user", "content": content}]


async def ask(gateway: Gateway, stream: bool, **fields: Any) -> tuple[list[str], list[str], Any]:
    """(text of each choice, finish reason of each choice, tool calls of choice 0 as
    (name, arguments) pairs) of one completion, streamed or not."""
    client = gateway.client()
    if not stream:
        answer = await client.chat.completions.create(model="echo", **fields)
        calls = [(c.function.name, c.function.arguments)  # type: ignore[union-attr]
                 for c in answer.choices[0].message.tool_calls or ()]
        return ([c.message.content or "" for c in answer.choices],
                [c.finish_reason for c in answer.choices], calls)
    texts: dict[int, str] = {}
    finishes: dict[int, str] = {}
    tools: dict[int, list[str]] = {}
    async for chunk in await client.chat.completions.create(model="echo", stream=True, **fields):
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
            for call in choice.delta.tool_calls or () if choice.index == 0 else ():
                entry = tools.setdefault(call.index, ["", ""])
                entry[0] += call.function.name or "" if call.function else ""
                entry[1] += call.function.arguments or "" if call.function else ""
    return ([texts[i] for i in sorted(texts)], [finishes[i] for i in sorted(finishes)],
            [tuple(tools[i]) for i in sorted(tools)])


STREAMS = pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])


@STREAMS
async def test_plain_echo_is_unchanged(gateway: Gateway, stream: bool) -> None:
    texts, finishes, calls = await ask(gateway, stream, messages=user("one two three four"))
    assert (texts, finishes, calls) == (["one two three four"], ["stop"], [])


@STREAMS
async def test_n_gives_n_choices(gateway: Gateway, stream: bool) -> None:
    texts, finishes, _ = await ask(gateway, stream, messages=user("hi there"), n=3)
    assert texts == ["hi there"] * 3 and finishes == ["stop"] * 3


async def test_usage_counts_every_choice(gateway: Gateway) -> None:
    answer = await gateway.client().chat.completions.create(
        model="echo", messages=user("hi there"), n=3)
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (2, 6)


@STREAMS
async def test_text_parts_are_echoed(gateway: Gateway, stream: bool) -> None:
    parts = [{"type": "text", "text": "look at"},
             {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
             {"type": "text", "text": "this picture"}]
    texts, _, _ = await ask(gateway, stream, messages=user(parts))
    assert texts == ["look at this picture"]


@STREAMS
@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
async def test_max_tokens_cuts_with_finish_length(gateway: Gateway, stream: bool, field: str) -> None:
    texts, finishes, _ = await ask(gateway, stream, messages=user("a b c d e f"), **{field: 4})
    assert (texts, finishes) == (["a b c d"], ["length"])
    texts, finishes, _ = await ask(gateway, stream, messages=user("a b c"), **{field: 4})
    assert (texts, finishes) == (["a b c"], ["stop"])


@STREAMS
async def test_stop_cuts_before_the_first_stop_sequence(gateway: Gateway, stream: bool) -> None:
    texts, finishes, _ = await ask(gateway, stream, messages=user("one, two. three; four"),
                                   stop=[";", "."])
    assert (texts, finishes) == (["one, two"], ["stop"])
    texts, _, _ = await ask(gateway, stream, messages=user("one END two"), stop="END")
    assert texts == ["one "]


@STREAMS
async def test_a_named_tool_is_called_with_valid_arguments(gateway: Gateway, stream: bool) -> None:
    texts, finishes, calls = await ask(gateway, stream, tools=[TIME, WEATHER],
                                       messages=user("Please call get_weather for Paris"))
    assert finishes == ["tool_calls"] and texts == [""]
    [(name, arguments)] = calls
    assert name == "get_weather"
    args = json.loads(arguments)
    assert jsonschema_rs.is_valid(WEATHER["function"]["parameters"], args), args


@STREAMS
async def test_tools_unnamed_none_or_after_a_result_answer_text(gateway: Gateway, stream: bool) -> None:
    texts, finishes, calls = await ask(gateway, stream, tools=[WEATHER], messages=user("hello"))
    assert (texts, finishes, calls) == (["hello"], ["stop"], [])
    _, finishes, calls = await ask(gateway, stream, tools=[WEATHER], tool_choice="none",
                                   messages=user("get_weather please"))
    assert (finishes, calls) == (["stop"], [])
    turns = [*user("get_weather in Oslo"),
             {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {
                 "name": "get_weather", "arguments": "{}"}}]},
             {"role": "tool", "tool_call_id": "c1", "content": "sunny, 21 C"}]
    texts, finishes, calls = await ask(gateway, stream, tools=[WEATHER], messages=turns)
    assert (texts, finishes, calls) == (["sunny, 21 C"], ["stop"], [])


@STREAMS
async def test_required_and_forced_tool_choice(gateway: Gateway, stream: bool) -> None:
    _, _, calls = await ask(gateway, stream, tools=[TIME, WEATHER], tool_choice="required",
                            messages=user("hello"))
    assert [name for name, _ in calls] == ["get_time"]
    _, finishes, calls = await ask(gateway, stream, tools=[TIME, WEATHER], messages=user("x"),
                                   tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert [name for name, _ in calls] == ["get_weather"] and finishes == ["tool_calls"]


class Address(pydantic.BaseModel):
    street: str
    zip_code: int


class Person(pydantic.BaseModel):
    name: str
    age: int
    height_m: float
    admin: bool
    role: Literal["owner", "guest"]
    tags: list[str]
    home: Address
    nickname: str | None


async def test_parse_with_a_pydantic_model(gateway: Gateway) -> None:
    completion = await gateway.client().chat.completions.parse(
        model="echo", messages=user("who?"), response_format=Person)
    person = completion.choices[0].message.parsed
    assert isinstance(person, Person) and person.role == "owner"
    assert completion.choices[0].finish_reason == "stop"


async def test_streamed_json_schema_validates(gateway: Gateway) -> None:
    schema = Person.model_json_schema()
    form: Any = {"type": "json_schema", "json_schema": {"name": "person", "schema": schema}}
    [text], _, _ = await ask(gateway, True, messages=user("who?"), response_format=form)
    assert jsonschema_rs.is_valid(schema, json.loads(text))
    Person.model_validate_json(text)


@STREAMS
async def test_json_object_is_an_object(gateway: Gateway, stream: bool) -> None:
    [text], _, _ = await ask(gateway, stream, messages=user("hi"),
                             response_format={"type": "json_object"})
    assert json.loads(text) == {"echo": "hi"}


# ── the minimal instance, unit by unit ────────────────────────────────────────────
SCHEMAS: list[Any] = [
    {"type": "string", "minLength": 10, "maxLength": 12},
    {"type": "string", "format": "date-time"},
    {"type": "integer", "minimum": 5, "maximum": 9},
    {"type": "integer", "exclusiveMinimum": 0, "multipleOf": 3},
    {"type": "number", "exclusiveMaximum": -1.5},
    {"type": "number", "minimum": 0.25},
    {"type": "array", "items": {"type": "boolean"}, "minItems": 2},
    {"type": ["null", "string"]},
    {"enum": ["b", "a"]},
    {"const": {"x": 1}},
    {"anyOf": [{"type": "null"}, {"type": "object", "required": ["v"],
                                  "properties": {"v": {"type": "number"}}}]},
    {"allOf": [{"type": "object", "required": ["a"], "properties": {"a": {"type": "string"}}},
               {"required": ["b"], "properties": {"b": {"type": "integer"}}}]},
    {"$defs": {"node": {"type": "object", "required": ["name"],
                        "properties": {"name": {"type": "string"},
                                       "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}}}}},
     "$ref": "#/$defs/node"},
    {"type": "object", "minProperties": 1, "properties": {"only": {"type": "integer"}}},
    {"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}]},
    Person.model_json_schema(),
]


@pytest.mark.parametrize("schema", SCHEMAS, ids=lambda s: json.dumps(s)[:40])
def test_instance_validates(schema: Any) -> None:
    value = instance(schema)
    assert jsonschema_rs.is_valid(schema, value), value


def test_gemini_upper_case_types() -> None:
    schema = {"type": "OBJECT", "properties": {"n": {"type": "INTEGER"}, "s": {"type": "STRING"}},
              "required": ["n", "s"]}
    assert instance(schema) == {"n": 0, "s": "mock"}


@pytest.mark.parametrize("schema", [None, True, [], {"$ref": "#/nowhere"}, {"type": 5},
                                    {"$ref": "#"}, {"minItems": 10**9, "type": "array"}])
def test_odd_schemas_never_crash(schema: Any) -> None:
    instance(schema)


def test_nested_min_items_stay_bounded() -> None:
    schema: Any = {"type": "string"}
    for _ in range(6):
        schema = {"type": "array", "minItems": 1000, "items": schema}
    assert len(json.dumps(instance(schema))) < 200_000


async def test_too_many_choices_is_400(gateway: Gateway) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await gateway.client().chat.completions.create(model="echo", messages=user("x"), n=129)
    assert caught.value.code == "invalid_value" and caught.value.param == "n"


async def test_a_bad_stop_list_is_refused_before_the_mock(gateway: Gateway) -> None:
    with pytest.raises(openai.UnprocessableEntityError):
        await gateway.client().chat.completions.create(  # type: ignore[call-overload]
            model="echo", messages=user("x"), stop=5)


async def test_a_part_the_edge_lets_through_but_the_mock_cannot_read_is_400(gateway: Gateway) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await gateway.client().chat.completions.create(
            model="echo", messages=user([{"type": "text", "text": 5}]))
    assert caught.value.code == "invalid_request"
