"""What the mock answers, whatever the dialect asked: a `Prompt` in, one `Reply` out.

Each dialect (OpenAI chat here; Anthropic Messages and Gemini generateContent in
`mock_anthropic` / `mock_gemini`) reads its request into a Prompt; `reply` decides the answer once, the same
for every one of the `n` choices:

- a tool call, when tools are offered, not refused (`tool_choice: none`), and either one is
  forced by the request, or the last message is the user's and names a tool (its name
  appears in the text, any case; the longest such name wins), or a tool is required (the
  first one then). Its arguments: a minimal JSON object valid for the tool's schema.
  After a tool result the mock answers with text (the result), so agent loops end;
- else JSON when a schema (a minimal valid instance, `mock_schema`) or a JSON object
  (`{"echo": <text>}`) is asked for;
- else the echo of the last user message's text (text parts joined), or of the last tool
  result when that is the last message.

Text is then cut before the first `stop` sequence (finish "stop"), then to `max_words`
whitespace-separated words (finish "length"). Usage counts words, as the echo always did.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec
from msgspec import Struct

from schemas.errors import GatewayError
from workers.providers.mock_schema import instance

DEFAULT_TEXT = "Hello from the Switchboard mock provider."
MAX_CHOICES = 128  # OpenAI's own bound on `n`: the mock's answer must stay bounded
Finish = Literal["stop", "length", "tool_calls"]
_WORD = re.compile(r"\S+")


@dataclass(slots=True)
class ToolSpec:
    name: str
    schema: dict[str, Any]


@dataclass(slots=True)
class Prompt:
    """A request, as far as the mock's answer depends on it."""

    text: str = ""  # what to echo ("" = DEFAULT_TEXT)
    words: int = 1  # the prompt's size, in words
    asks: bool = True  # the last message is the user's (not a tool result)
    tools: list[ToolSpec] = field(default_factory=list)
    tool_mode: Literal["auto", "none", "required"] = "auto"
    forced: str = ""  # the tool the request forces
    schema: dict[str, Any] | None = None  # a JSON schema the answer must validate against
    json_object: bool = False  # any JSON object will do
    max_words: int | None = None
    stop: list[str] = field(default_factory=list)
    n: int = 1


@dataclass(slots=True)
class Reply:
    """One choice: text, or a tool call (`tool`, with `arguments` as JSON text)."""

    text: str | None
    finish: Finish
    stop_sequence: str | None = None  # the sequence the text was cut before
    tool: str = ""
    arguments: str = ""

    @property
    def words(self) -> int:
        """Completion size in words (a tool call counts its arguments)."""
        return len((self.arguments if self.tool else self.text or "").split())

    @property
    def args(self) -> dict[str, Any]:
        """The tool call's arguments as an object."""
        value = json.loads(self.arguments or "{}")
        return value if isinstance(value, dict) else {}


def choices(n: int | None, param: str) -> int:
    """How many choices to answer (a 400 naming `param` past MAX_CHOICES)."""
    if n is not None and not 1 <= n <= MAX_CHOICES:
        raise GatewayError(400, "invalid_value", f"`{param}` must be between 1 and {MAX_CHOICES}",
                           param=param)
    return n or 1


def reply(prompt: Prompt) -> Reply:
    """The answer to `prompt` (see the module docstring for the rules)."""
    tool = _chosen_tool(prompt)
    if tool is not None:
        arguments = instance(tool.schema) if tool.schema else {}
        if not isinstance(arguments, dict):
            arguments = {}
        return Reply(None, "tool_calls", tool=tool.name, arguments=json.dumps(arguments))
    text = prompt.text or DEFAULT_TEXT
    if prompt.schema is not None:
        text = json.dumps(instance(prompt.schema))
    elif prompt.json_object:
        text = json.dumps({"echo": text})
    return _cut(text, prompt)


def _chosen_tool(prompt: Prompt) -> ToolSpec | None:
    if not prompt.tools or prompt.tool_mode == "none":
        return None
    if prompt.forced:
        return next((t for t in prompt.tools if t.name == prompt.forced), prompt.tools[0])
    if prompt.asks:
        said = prompt.text.lower()
        named = [t for t in prompt.tools if t.name and t.name.lower() in said]
        if named:
            return max(named, key=lambda t: len(t.name))
    return prompt.tools[0] if prompt.tool_mode == "required" else None


def _cut(text: str, prompt: Prompt) -> Reply:
    found = [(text.find(s), s) for s in prompt.stop if s and s in text]
    at, sequence = min(found) if found else (-1, None)
    if sequence is not None:
        text = text[:at]
    if prompt.max_words is not None:
        ends = [m.end() for m in _WORD.finditer(text)]
        if len(ends) > prompt.max_words:
            return Reply(text[:ends[prompt.max_words - 1]] if prompt.max_words > 0 else "", "length")
    return Reply(text, "stop", sequence)


def pieces(text: str, count: int) -> list[str]:
    """`text` cut into at most `count` consecutive pieces at spaces, joining back to it."""
    words = text.split(" ")
    count = max(1, min(count, len(words)))
    size, extra = divmod(len(words), count)
    out, start = [], 0
    for i in range(count):
        end = start + size + (1 if i < extra else 0)
        piece = " ".join(words[start:end])
        out.append(piece if i == 0 else " " + piece)
        start = end
    return out


def slices(text: str, count: int) -> list[str]:
    """`text` cut into at most `count` slices of about equal length (tool arguments)."""
    count = max(1, min(count, len(text)))
    size = -(-len(text) // count)
    return [text[i:i + size] for i in range(0, len(text), size)] or [""]


# ── OpenAI chat completions ──────────────────────────────────────────────────────
# The few request fields the mock reads; the ingress validated the body already.
class _Part(Struct):
    type: str
    text: str = ""


class _Message(Struct):
    role: str
    content: str | list[_Part] | None = None


class _Function(Struct):
    name: str
    parameters: dict[str, Any] = {}


class _Tool(Struct):
    function: _Function | None = None


class _Named(Struct):
    name: str


class _ToolChoice(Struct):
    function: _Named | None = None


class _Format(Struct):
    type: str
    json_schema: dict[str, Any] | None = None


class _ChatRequest(Struct):
    messages: list[_Message]
    n: int | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    stop: str | list[str] | None = None
    tools: list[_Tool] | None = None
    tool_choice: str | _ToolChoice | None = None
    response_format: _Format | None = None


_chat_decoder = msgspec.json.Decoder(_ChatRequest)


def text_of(content: str | list[_Part] | None) -> str:
    """A message's text: the string, or its text parts joined by a space."""
    if isinstance(content, str):
        return content
    return " ".join(p.text for p in content or () if p.text and "text" in p.type)


def chat_prompt(body: bytes) -> Prompt:
    """An OpenAI chat completion request, read as a Prompt."""
    try:
        request = _chat_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:  # what the edge does not check
        raise GatewayError(400, "invalid_request", f"the mock cannot read this request: {exc}") from None
    prompt = Prompt(n=choices(request.n, "n"), max_words=request.max_completion_tokens or request.max_tokens)
    words, echo = 0, ""
    for message in request.messages:
        text = text_of(message.content)
        words += len(text.split())
        if message.role == "user" and text:
            echo = text
    last = request.messages[-1] if request.messages else None
    prompt.asks = last is not None and last.role == "user"
    prompt.text = text_of(last.content) if last is not None and last.role == "tool" else echo
    prompt.words = max(words, 1)
    prompt.stop = [request.stop] if isinstance(request.stop, str) else list(request.stop or ())
    prompt.tools = [ToolSpec(t.function.name, t.function.parameters)
                    for t in request.tools or () if t.function is not None]
    choice = request.tool_choice
    if isinstance(choice, _ToolChoice):
        prompt.forced = choice.function.name if choice.function else ""
    elif choice in ("none", "required"):
        prompt.tool_mode = choice  # type: ignore[assignment]
    form = request.response_format
    if form is not None and form.type == "json_schema":
        schema = (form.json_schema or {}).get("schema")
        prompt.schema = schema if isinstance(schema, dict) else {}
    prompt.json_object = form is not None and form.type == "json_object"
    return prompt
