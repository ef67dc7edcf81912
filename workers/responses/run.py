"""Serving a Responses job through the route's chat call, with the built-in tool loop.

Each model call is the kind's own chat completion (`adapter.complete` / `adapter.stream`
on a Call whose job is the chat form), so every kind serves Responses. When the model
calls only built-in tools the gateway runs them, feeds the results back and calls the
model again, up to `max_tool_calls`; usage is summed over every model call (and reported
to the attempt's meter after each, so a stream cut short is metered with what came
before). A stored response is written before the answer goes out.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, cast

import msgspec

from schemas.chat import Usage
from schemas.config import Config
from schemas.errors import GatewayError
from schemas.responses import (
    FunctionCallItem,
    FunctionCallOutputItem,
    Incomplete,
    Item,
    OutputItem,
    Resolved,
    Response,
    ResponseError,
    ResponseUsage,
    resolved_decoder,
)
from workers.connection import RedisClient
from workers.providers._base import Adapter, Answer, Call, Emit
from workers.responses import native, state
from workers.responses.builtins import BUILTINS
from workers.responses.events import EventWriter, chunk_decoder
from workers.responses.translate import (
    ChatAnswer,
    as_item,
    chat_answer_decoder,
    chat_body,
    messages,
    output_of,
)

_encode = msgspec.json.Encoder().encode


@dataclass(slots=True)
class _Run:
    """One Responses job: its request, the chat so far, the usage so far."""

    call: Call
    resolved: Resolved
    chat: list[dict[str, Any]] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    finish: str | None = None

    @property
    def stem(self) -> str:
        return self.call.job.request_id.removeprefix("req_")

    def inner(self, stream: bool) -> Call:
        """The chat call of the next model turn (a new meter; the attempt's keeps the sum)."""
        job = msgspec.structs.replace(self.call.job, endpoint="chat", include_usage=True,
                                      body=chat_body(self.resolved, self.chat, stream))
        return Call(job, self.call.upstream_model)

    def add_usage(self, prompt: int, completion: int) -> None:
        self.usage = Usage(self.usage.prompt_tokens + prompt,
                           self.usage.completion_tokens + completion,
                           self.usage.total_tokens + prompt + completion)
        self.call.meter.report(self.usage)

    def builtins_only(self, calls: list[FunctionCallItem], made: int) -> bool:
        """Whether the gateway runs these calls itself (each is a built-in, within budget)."""
        enabled = {t.type for t in self.resolved.tools if t.type in BUILTINS}
        return (bool(calls) and all(c.name in enabled for c in calls)
                and made + len(calls) <= self.resolved.max_tool_calls)

    def run_tools(self, calls: list[FunctionCallItem]) -> list[FunctionCallOutputItem]:
        """Run built-in calls; the chat gets the assistant turn and each result."""
        self.chat.append({"role": "assistant", "content": None, "tool_calls": [
            {"id": c.call_id, "type": "function",
             "function": {"name": c.name, "arguments": c.arguments}} for c in calls]})
        results = []
        for index, c in enumerate(calls):
            output = BUILTINS[c.name].run(c.arguments)
            self.chat.append({"role": "tool", "tool_call_id": c.call_id, "content": output})
            results.append(FunctionCallOutputItem(id=f"fco_{c.id.removeprefix('fc_')}_{index}",
                                                  call_id=c.call_id, output=output))
        return results

    def response(self, status: str, output: list[OutputItem]) -> Response:
        r = self.resolved
        incomplete = None
        if status == "completed" and self.finish == "length":
            status, incomplete = "incomplete", Incomplete("max_output_tokens")
        usage = ResponseUsage(self.usage.prompt_tokens, self.usage.completion_tokens,
                              self.usage.prompt_tokens + self.usage.completion_tokens)
        return Response(
            id="resp_" + self.stem, created_at=int(time.time()), model=r.model,
            status=status,  # type: ignore[arg-type]
            output=output, instructions=r.instructions, tools=r.tools,
            tool_choice=r.tool_choice or "auto",
            parallel_tool_calls=r.parallel_tool_calls is not False,
            text=r.text,
            max_output_tokens=r.max_output_tokens, max_tool_calls=r.max_tool_calls,
            temperature=r.temperature, top_p=r.top_p, metadata=r.metadata,
            previous_response_id=r.previous_response_id, store=r.store,
            usage=usage if status != "in_progress" else None, incomplete_details=incomplete)


@dataclass(slots=True)
class Responses:
    """What a worker needs to serve Responses jobs: the providers (which relay natively)
    and where finished responses are stored."""

    redis: RedisClient
    config: Config

    def _native(self, adapter: Adapter, call: Call) -> native.NativeUpstream | None:
        """The adapter, if the route's provider relays the Responses API natively."""
        provider = self.config.providers.get(call.job.route.provider)
        if getattr(provider, "responses", "translate") == "native":
            return cast(native.NativeUpstream, adapter)
        return None

    def _storer(self, run: _Run) -> native.Store:
        async def store(response: bytes, output: list[Item]) -> None:
            if run.resolved.store:
                await state.store(self.redis, org=run.call.job.org, resolved=run.resolved,
                                  response_id="resp_" + run.stem, response=response,
                                  output=output,
                                  retention_days=self.config.responses.retention_days,
                                  timeout_s=self.config.limits.redis_timeout_s)
        return store

    async def _store(self, run: _Run, response: Response) -> None:
        await self._storer(run)(_encode(response), [as_item(i) for i in response.output])

    async def complete(self, adapter: Adapter, call: Call) -> Answer:
        """A whole response: model calls until it answers (or calls a client's tool)."""
        run = _Run(call, resolved_decoder.decode(call.job.body))
        relay = self._native(adapter, call)
        if relay is not None:
            return await native.complete(relay, call, run.resolved, "resp_" + run.stem,
                                         self._storer(run))
        run.chat = messages(run.resolved)
        output: list[OutputItem] = []
        made = 0
        for turn in range(run.resolved.max_tool_calls + 1):
            answer = await adapter.complete(run.inner(stream=False))
            parsed: ChatAnswer = chat_answer_decoder.decode(answer.body)
            run.add_usage(answer.usage.prompt_tokens, answer.usage.completion_tokens)
            run.finish = parsed.choices[0].finish_reason if parsed.choices else None
            items = output_of(parsed, run.stem, turn)
            output.extend(items)
            calls = [i for i in items if isinstance(i, FunctionCallItem)]
            if not run.builtins_only(calls, made):
                break
            made += len(calls)
            output.extend(run.run_tools(calls))
        response = run.response("completed", output)
        await self._store(run, response)
        return Answer(_encode(response), run.usage)

    async def stream(self, adapter: Adapter, call: Call, emit: Emit) -> Usage:
        """The typed events of a response; `response.failed` if it breaks once begun."""
        run = _Run(call, resolved_decoder.decode(call.job.body))
        relay = self._native(adapter, call)
        if relay is not None:
            return await native.stream(relay, call, run.resolved, "resp_" + run.stem, emit,
                                       self._storer(run))
        run.chat = messages(run.resolved)
        writer = EventWriter(emit, run.response("in_progress", []))
        try:
            made = 0
            for turn in range(run.resolved.max_tool_calls + 1):
                def on_chunk(payload: bytes, event: str = "", turn: int = turn) -> None:
                    chunk = chunk_decoder.decode(payload)
                    for choice in chunk.choices or ():
                        if choice.delta.content:
                            writer.text(run.stem, turn, choice.delta.content)
                        for delta in choice.delta.tool_calls or ():
                            writer.call(run.stem, turn, delta)
                        run.finish = choice.finish_reason or run.finish

                usage = await adapter.stream(run.inner(stream=True), on_chunk)
                run.add_usage(usage.prompt_tokens, usage.completion_tokens)
                writer.begin()  # an answer with no content is still a response
                calls = writer.close_turn()
                if not run.builtins_only(calls, made):
                    break
                made += len(calls)
                for result in run.run_tools(calls):
                    writer.item(result)
            response = run.response("completed", writer.output)
            await self._store(run, response)
            writer.send(f"response.{response.status}", response=response)
        except GatewayError as exc:
            if writer.began:  # the client saw output: say it failed, never a fake completion
                failed = run.response("failed", writer.partial())
                failed.error = ResponseError(exc.code, exc.message)
                writer.send("response.failed", response=failed)
            raise
        return run.usage
