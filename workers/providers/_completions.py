"""Legacy completions served by a kind's chat call, for kinds with no `/completions`.

Each prompt becomes one chat request (`messages: [{"role": "user", "content": prompt}]`,
the other fields as sent, `max_tokens` OpenAI's default of 16 when absent); the prompts
run one after another, and the chat answers come back as one `text_completion` whose
choices are numbered prompt by prompt (`index = prompt * n + choice`), as OpenAI numbers
them. What chat cannot express is a 400 `unsupported_parameter`: `suffix`, `logprobs`,
`best_of` above 1 and token-id prompts. `echo` is honoured (the prompt leads the text).
"""

from __future__ import annotations

import time
import uuid

import msgspec

from schemas.chat import Usage, request_decoder
from schemas.completions import DEFAULT_MAX_TOKENS, TextChoice, TextCompletion
from schemas.errors import GatewayError
from workers.providers._base import ABSENT, Adapter, Answer, Call, Emit, unsupported_parameter
from workers.providers._meter import UsageMeter

_decode_object = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode
_encode = msgspec.json.Encoder().encode
_PROMPT = msgspec.json.Decoder(str | list[str | int | list[int]]).decode
# Completions fields the translation consumes itself: never sent to the chat call.
_OWN = frozenset({"prompt", "echo", "best_of", "suffix", "logprobs", "stream_options"})


class _Message(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    index: int = 0
    message: _Message | None = None
    delta: _Message | None = None
    finish_reason: str | None = None


class _Chat(msgspec.Struct):
    """A chat.completion or chat.completion.chunk, as far as completions need it."""

    choices: list[_Choice] = []
    system_fingerprint: str | None = None


_decode_chat = msgspec.json.Decoder(_Chat).decode
_FINISH = {"stop": "stop", "length": "length", "content_filter": "content_filter"}


class _Plan:
    """One completions job as chat calls: the prompts and the shared chat fields."""

    def __init__(self, call: Call, kind: str) -> None:
        raw = _decode_object(call.job.body)
        for name, allowed in (("suffix", ()), ("logprobs", (b"0",)), ("best_of", (b"0", b"1"))):
            if name in raw and bytes(raw[name]) not in ABSENT and bytes(raw[name]) not in allowed:
                raise unsupported_parameter(kind, name, f"`{name}` (legacy completions only)")
        prompt = _PROMPT(raw["prompt"])
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not all(isinstance(p, str) for p in prompts):
            raise unsupported_parameter(kind, "prompt", "a prompt of token ids")
        self.prompts: list[str] = [p for p in prompts if isinstance(p, str)]
        self.echo = bytes(raw.get("echo", b"false")) == b"true"
        self.n = int(msgspec.json.decode(raw["n"])) if bytes(raw.get("n", b"null")) != b"null" else 1
        self.fields = {k: v for k, v in raw.items() if k not in _OWN}
        if bytes(self.fields.get("max_tokens", b"null")) == b"null":
            self.fields["max_tokens"] = msgspec.Raw(str(DEFAULT_MAX_TOKENS).encode())
        elif bytes(self.fields["max_tokens"]) == b"0":  # (a prompt-only echo: no chat can)
            raise unsupported_parameter(kind, "max_tokens", "`max_tokens: 0`")
        self.id = "cmpl-" + uuid.uuid4().hex
        self.created = int(time.time())
        self.total = Usage()

    def chat_call(self, call: Call, index: int) -> Call:
        """The chat call of prompt `index`, sharing the job's trace; its meter is new."""
        messages = [{"role": "user", "content": self.prompts[index]}]
        body = _encode({**self.fields, "messages": msgspec.Raw(_encode(messages))})
        try:  # what chat checks at its edge, checked here: a kind may rely on it
            request_decoder.decode(body)
        except msgspec.ValidationError as exc:
            raise GatewayError(422, "validation_error", f"invalid request for a chat call: {exc}",
                               details={"reason": str(exc)}) from None
        job = msgspec.structs.replace(call.job, body=body, endpoint="chat", include_usage=False)
        inner = Call(job, call.upstream_model)
        inner.trace, inner.span_id = call.trace, call.span_id
        return inner

    def add(self, usage: Usage) -> None:
        self.total = Usage(self.total.prompt_tokens + usage.prompt_tokens,
                           self.total.completion_tokens + usage.completion_tokens,
                           self.total.total_tokens + usage.total_tokens)


class _SumMeter(UsageMeter):
    """The job's meter: finished prompts' usage plus the running prompt's count."""

    def __init__(self, plan: _Plan) -> None:
        super().__init__()
        self.plan = plan
        self.current: UsageMeter | None = None

    def usage(self) -> Usage:
        done = self.plan.total
        if self.current is None:
            return done
        now = self.current.usage()
        return Usage(done.prompt_tokens + now.prompt_tokens,
                     done.completion_tokens + now.completion_tokens,
                     done.total_tokens + now.total_tokens)


async def complete_via_chat(adapter: Adapter, call: Call, kind: str) -> Answer:
    """A non-streamed completions job through `adapter.complete`, one prompt at a time."""
    plan = _Plan(call, kind)
    choices: list[TextChoice] = []
    fingerprint: str | None = None
    for index, prompt in enumerate(plan.prompts):
        answer = await adapter.complete(plan.chat_call(call, index))
        chat = _decode_chat(answer.body)
        fingerprint = fingerprint or chat.system_fingerprint
        for choice in chat.choices:
            text = (choice.message.content if choice.message else None) or ""
            choices.append(TextChoice((prompt if plan.echo else "") + text,
                                      index * plan.n + choice.index,
                                      _FINISH.get(choice.finish_reason or "", "stop")))
        plan.add(answer.usage)
    body = TextCompletion(plan.id, plan.created, call.job.model, choices, usage=plan.total,
                          system_fingerprint=fingerprint or msgspec.UNSET)
    return Answer(_encode(body), plan.total)


async def stream_via_chat(adapter: Adapter, call: Call, emit: Emit, kind: str) -> Usage:
    """A streamed completions job through `adapter.stream`: each chat chunk's text goes out
    as a `text_completion` chunk; with `include_usage`, one usage chunk for all prompts."""
    plan = _Plan(call, kind)
    meter = call.meter = _SumMeter(plan)  # what the runner meters if the stream is cut

    def chunk(choices: list[TextChoice]) -> bytes:
        return _encode(TextCompletion(plan.id, plan.created, call.job.model, choices))

    for index, prompt in enumerate(plan.prompts):
        if plan.echo:
            emit(chunk([TextChoice(prompt, index * plan.n + j) for j in range(plan.n)]))

        def relay(payload: bytes, event: str = "", index: int = index) -> None:
            choices = [TextChoice((c.delta.content if c.delta else None) or "",
                                  index * plan.n + c.index,
                                  _FINISH.get(c.finish_reason, "stop") if c.finish_reason else None)
                       for c in _decode_chat(payload).choices]
            kept = [c for c in choices if c.text or c.finish_reason]
            if kept:
                emit(chunk(kept))

        inner = plan.chat_call(call, index)
        meter.current = inner.meter
        usage = await adapter.stream(inner, relay)
        meter.current = None
        plan.add(usage)
    if call.job.include_usage:
        emit(_encode(TextCompletion(plan.id, plan.created, call.job.model, [], usage=plan.total)))
    return plan.total
