"""The OpenAI chat-completions wire shapes the gateway reads or writes.

Requests are decoded into `ChatRequest` only to validate the fields the gateway
understands; the body itself travels upstream as received, so fields this module does
not name (newer OpenAI parameters, vendor extensions) pass through untouched. Structs
therefore never forbid unknown fields here.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from schemas.tracking import EndUser, Thread

Role = Literal["system", "developer", "user", "assistant", "tool", "function"]


class ContentPart(Struct):
    """One part of a multi-part message: text, image_url, file, input_audio, ..."""

    type: str


class FunctionCall(Struct):
    name: str
    arguments: str


class ToolCall(Struct):
    id: str
    function: FunctionCall
    type: str = "function"


class Message(Struct):
    role: Role
    content: str | list[ContentPart] | None = None
    name: str | UnsetType = UNSET
    tool_calls: list[ToolCall] | UnsetType = UNSET
    tool_call_id: str | UnsetType = UNSET


class FunctionDef(Struct):
    name: str
    description: str | UnsetType = UNSET
    parameters: dict[str, Any] | UnsetType = UNSET
    strict: bool | UnsetType | None = UNSET


class Tool(Struct):
    function: FunctionDef
    type: str = "function"


class NamedFunction(Struct):
    name: str


class ToolChoice(Struct):
    function: NamedFunction
    type: str = "function"


class ResponseFormat(Struct):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | UnsetType = UNSET


class StreamOptions(Struct):
    include_usage: bool = False


class ChatRequest(Struct):
    """The fields of a chat completion request that the gateway type-checks."""

    model: str
    messages: Annotated[list[Message], Meta(min_length=1)]
    stream: bool = False
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: Annotated[int, Meta(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Meta(ge=1)] | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | ToolChoice | None = None
    n: Annotated[int, Meta(ge=1)] | None = None
    response_format: ResponseFormat | None = None
    stream_options: StreamOptions | None = None
    user: str | None = None
    identity: EndUser | None = None  # Switchboard's own: recorded, never sent upstream
    thread: Thread | None = None

    @property
    def include_usage(self) -> bool:
        """Whether the client asked for a usage chunk at the end of a stream."""
        return self.stream_options is not None and self.stream_options.include_usage


class Usage(Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class AssistantMessage(Struct):
    content: str | None
    role: str = "assistant"
    tool_calls: list[ToolCall] | UnsetType = UNSET


class Choice(Struct):
    index: int
    message: AssistantMessage
    finish_reason: str | None
    logprobs: None = None


class ChatCompletion(Struct):
    id: str
    created: int
    model: str
    choices: list[Choice]
    usage: Usage | None = None
    object: str = "chat.completion"


class Delta(Struct):
    role: str | UnsetType = UNSET
    content: str | UnsetType | None = UNSET
    tool_calls: list[dict[str, Any]] | UnsetType = UNSET


class ChunkChoice(Struct):
    index: int
    delta: Delta
    finish_reason: str | None = None
    logprobs: None = None


class ChatCompletionChunk(Struct):
    id: str
    created: int
    model: str
    choices: list[ChunkChoice]
    object: str = "chat.completion.chunk"
    usage: Usage | UnsetType = UNSET


class ModelCard(Struct):
    id: str
    created: int
    owned_by: str
    object: str = "model"


class ModelList(Struct):
    data: list[ModelCard]
    object: str = "list"


class RouterModel(Struct):
    id: str
    slug: str
    name: str


class RouterModelList(Struct):
    data: list[RouterModel]


class ModelProvider(Struct):
    provider: str
    kind: str
    model: str


class ModelProviderList(Struct):
    model: str
    data: list[ModelProvider]


request_decoder = msgspec.json.Decoder(ChatRequest)
# A JSON object's top-level keys with their values undecoded: pass-through rewriting.
raw_object_decoder = msgspec.json.Decoder(dict[str, msgspec.Raw])


class EmbeddingRequest(Struct):
    """The fields of an OpenAI embeddings request that the gateway type-checks."""

    model: str
    input: str | Annotated[list[str | int | list[int]], Meta(min_length=1)]
    dimensions: Annotated[int, Meta(ge=1)] | None = None
    encoding_format: Literal["float", "base64"] | None = None
    user: str | None = None
    identity: EndUser | None = None  # Switchboard's own: recorded, never sent upstream
    thread: Thread | None = None


class Embedding(Struct):
    index: int
    embedding: list[float] | str
    object: str = "embedding"


class EmbeddingUsage(Struct):
    prompt_tokens: int = 0
    total_tokens: int = 0


class EmbeddingList(Struct):
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage
    object: str = "list"


embedding_decoder = msgspec.json.Decoder(EmbeddingRequest)
