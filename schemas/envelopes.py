"""The job and frame envelopes between ingress and workers (msgpack on the wire).

Schema evolution: new fields get defaults and types never change, because ingress
and workers may run different versions during a deploy. These envelopes are internal,
so they may forbid nothing and ignore what they do not know.
"""

from __future__ import annotations

from typing import Literal

import msgspec
from msgspec import Struct

from schemas.config import Route

Endpoint = Literal[
    "chat", "embeddings", "responses", "completions", "images", "transcriptions", "translations",
    "anthropic_messages", "anthropic_count_tokens",
    "gemini_generate", "gemini_count_tokens", "gemini_embed"]
"""What the client called: an OpenAI endpoint, or a provider's native API."""


class Job(Struct, kw_only=True):
    """One client request on its way to a provider."""

    request_id: str
    org: str
    project: str
    key_id: str
    model: str  # the slug the client sent; responses echo it
    routes: list[Route]  # ordered: failover walks this list
    route_index: int = 0
    body: bytes  # the client's request body as received (less `identity` and `thread`)
    stream: bool
    include_usage: bool = False  # the client asked for the usage chunk
    reply_to: str  # pub/sub channel of the ingress holding the client
    deadline: float  # unix time after which nobody waits for the answer
    attempt: int = 0  # how many upstream attempts came before this delivery
    endpoint: Endpoint = "chat"
    # Native endpoints only: the client's allow-listed protocol headers (for example
    # anthropic-version, anthropic-beta), relayed upstream. Never a credential.
    headers: dict[str, str] = {}
    # Recorded, never sent upstream: the end user's and the conversation's ids ("" = none).
    identity: str = ""
    thread: str = ""
    # The request's W3C trace (schemas/trace.py): the worker sends each upstream call a
    # child of it. "" from an older ingress: no trace header upstream.
    traceparent: str = ""
    tracestate: str = ""
    # A line of a batch (the Batch API): its batch id ("" = interactive traffic), its
    # index in the input file (from 0) and the client's `custom_id`. Such a job has no
    # `reply_to`: its outcome becomes a line of the batch's output or error file.
    batch: str = ""
    batch_line: int = -1
    custom_id: str = ""

    @property
    def route(self) -> Route:
        return self.routes[self.route_index]


class Head(Struct, tag="head", kw_only=True):
    """The attempt's output begins: after this frame no retry is possible."""

    request_id: str
    attempt: int
    seq: int
    provider: str
    status: int = 200


class Chunk(Struct, tag="chunk", kw_only=True):
    """Client-ready chunk payloads (serialized chat.completion.chunk objects)."""

    request_id: str
    attempt: int
    seq: int
    payloads: list[bytes]
    events: list[str] = []  # SSE event names, parallel to payloads, when the dialect names them


class Done(Struct, tag="done", kw_only=True):
    """The answer is complete. `body` is the whole JSON body for non-streamed jobs; one
    bigger than a frame may be (`Limits.max_frame_bytes`) is stored under `body_key`
    instead (`body_bytes` long), for the ingress to read once."""

    request_id: str
    attempt: int
    seq: int
    provider: str
    body: bytes = b""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    body_key: str = ""
    body_bytes: int = 0


class Error(Struct, tag="error", kw_only=True):
    """The job failed; `body` is the rendered gateway error body."""

    request_id: str
    attempt: int
    seq: int
    status: int
    body: bytes
    provider: str = ""


Frame = Head | Chunk | Done | Error

job_encoder = msgspec.msgpack.Encoder()
job_decoder = msgspec.msgpack.Decoder(Job)
frame_encoder = job_encoder
frame_decoder = msgspec.msgpack.Decoder(Frame)
