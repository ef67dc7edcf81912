"""The provider kinds the conformance suite (tests/test_conformance.py) runs, as data.

A kind joins the suite with its fake upstream (a `ScriptedUpstream` under tests/fakes/,
`base_path` set to what follows the origin in the provider's `base_url`) and one
`KindCase` in `CASES`: the fake's class, the kind's provider options, the upstream model
its route names, the credential and the header that must carry it, and how to script
the fake (a 5xx, a client 400, a stream cut mid-way, a tool call) and read its records
(the model a request named, a conversation's last turn). `fake_upstream(kind)` and
`kind_gateway(kind)` in conftest then serve it; nothing else changes.

A field left `None` means the conformance cases that need it do not apply: `mock` calls
no upstream, so only plain, stream and usage run for it. `unsupported=None` says every
field passes through, which the suite checks instead of the 400.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tests.fakes import anthropic_upstream as anthropic
from tests.fakes import azure_upstream as azure
from tests.fakes import gemini_upstream as gemini
from tests.fakes import openai_upstream as openai
from tests.fakes.server import Received, ScriptedUpstream


def _body_model(request: Received) -> str:
    return str(request.body.get("model"))


@dataclass(frozen=True)
class KindCase:
    """One provider kind as the conformance suite sees it."""

    kind: str
    fake: Callable[[], ScriptedUpstream[Any]] | None  # the fake's class; None: no upstream
    upstream_model: str
    provider: Mapping[str, Any] = field(default_factory=dict)  # kind-specific provider options
    # The credential the provider is configured with, and the header that must carry it.
    credential: str = ""
    auth_header: str = ""
    auth_scheme: str = ""  # what precedes the credential in that header ("Bearer ")
    sent_model: Callable[[Received], str] = _body_model  # the upstream model a request named
    # How to script the fake: each returns one of the fake's `Behavior`s.
    server_error: Callable[[str], Any] | None = None  # a 5xx carrying this message (`.status`)
    client_error: Callable[[str], Any] | None = None  # a 400 carrying this message...
    client_error_code: str = ""  # ...which the gateway relays with this code
    cut_stream: Callable[[list[str], int], Any] | None = None  # stream the pieces, drop after n
    tool_call: Callable[[str, dict[str, Any]], Any] | None = None  # call this tool with these args
    # Where a conversation's turns are in the kind's request body, and a tool result as
    # the kind's own last turn: (call id, tool name, content) -> the turn.
    turns: str = "messages"
    tool_result: Callable[[str, str, str], Any] | None = None
    # A field the kind cannot honour, answered 400 unsupported_parameter (None: all pass).
    unsupported: Mapping[str, Any] | None = None


CUT_DELAY_S = 0.05  # between the pieces of a cut stream: the first is out before the cut


# FakeOpenAI's scripts, for every kind whose fake speaks OpenAI's wire format.
def openai_server_error(message: str) -> openai.Behavior:
    return openai.Behavior(status=500, error={"error": {
        "message": message, "type": "server_error", "param": None, "code": None}})


def openai_client_error(message: str) -> openai.Behavior:
    return openai.Behavior(status=400, error={"error": {
        "message": message, "type": "invalid_request_error", "param": "messages",
        "code": "context_length_exceeded"}})


def openai_cut_stream(pieces: list[str], after: int) -> openai.Behavior:
    return openai.Behavior(chunks=pieces, break_after=after, chunk_delay_s=CUT_DELAY_S)


def openai_tool_call(name: str, args: dict[str, Any]) -> openai.Behavior:
    return openai.Behavior(tool_calls=[{"id": "call_conformance", "type": "function",
                                        "function": {"name": name, "arguments": json.dumps(args)}}])


def openai_tool_result(call_id: str, name: str, content: str) -> Any:
    return {"role": "tool", "tool_call_id": call_id, "content": content}


def _gemini_model(request: Received) -> str:
    """Gemini names the model in the path: /v1beta/models/{model}:{method}."""
    return request.path.removeprefix("/v1beta/models/").rpartition(":")[0]


def _gemini_tool_result(call_id: str, name: str, content: str) -> Any:
    # Gemini matches results by function name; a JSON object result goes as it is.
    return {"role": "user", "parts": [{"functionResponse": {"name": name,
                                                            "response": json.loads(content)}}]}


CASES: dict[str, KindCase] = {case.kind: case for case in [
    KindCase(
        kind="openai", fake=openai.FakeOpenAI, upstream_model="upstream-model-1",
        credential="sk-openai-conformance-secret-0001", auth_header="authorization",
        auth_scheme="Bearer ",
        server_error=openai_server_error, client_error=openai_client_error,
        client_error_code="context_length_exceeded", cut_stream=openai_cut_stream,
        tool_call=openai_tool_call, tool_result=openai_tool_result,
    ),
    KindCase(
        kind="anthropic", fake=anthropic.FakeAnthropic, upstream_model="claude-upstream-1",
        credential="sk-ant-conformance-secret-0002", auth_header="x-api-key",
        server_error=lambda message: anthropic.Behavior(status=529, error_type="overloaded_error",
                                                        error_message=message),
        client_error=lambda message: anthropic.Behavior(
            status=400, error_type="invalid_request_error", error_message=message),
        client_error_code="invalid_request_error",
        cut_stream=lambda pieces, after: anthropic.Behavior(chunks=pieces, break_after=after,
                                                            chunk_delay_s=CUT_DELAY_S),
        tool_call=lambda name, args: anthropic.Behavior(
            text="", tool_uses=[{"id": "toolu_conformance", "name": name, "input": args}]),
        tool_result=lambda call_id, name, content: {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": call_id, "content": content}]},
        unsupported={"logit_bias": {"50256": -100}},
    ),
    KindCase(
        kind="gemini", fake=gemini.FakeGemini, upstream_model="gemini-2.5-flash",
        credential="AIzaSy-conformance-credential-0003", auth_header="x-goog-api-key",
        sent_model=_gemini_model,
        server_error=lambda message: gemini.Behavior(status=503, error_status="UNAVAILABLE",
                                                     message=message),
        client_error=lambda message: gemini.Behavior(status=400, error_status="INVALID_ARGUMENT",
                                                     message=message),
        client_error_code="invalid_argument",
        cut_stream=lambda pieces, after: gemini.Behavior(chunks=pieces, break_after=after,
                                                         chunk_delay_s=CUT_DELAY_S),
        tool_call=lambda name, args: gemini.Behavior(function_calls=[{"name": name, "args": args}]),
        turns="contents", tool_result=_gemini_tool_result,
        unsupported={"logit_bias": {"50256": -100}},
    ),
    KindCase(kind="mock", fake=None, upstream_model="echo"),
    KindCase(
        kind="azure", fake=azure.FakeAzure, upstream_model="gpt-4o-deployment",
        provider={"api_version": "2024-10-21"},
        credential="azure-conformance-key-0005", auth_header="api-key",
        sent_model=azure.deployment_of,  # Azure names the deployment in the path
        server_error=azure.server_error, client_error=azure.client_error,
        client_error_code="context_length_exceeded",
        cut_stream=lambda pieces, after: azure.cut_stream(pieces, after, CUT_DELAY_S),
        tool_call=azure.tool_call, tool_result=openai_tool_result,
    ),
]}
