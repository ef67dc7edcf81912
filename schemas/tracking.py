"""The gateway's own request fields: `identity` (the end user) and `thread` (the
conversation), accepted on chat completions and embeddings.

They are Switchboard's, not OpenAI's: validated here with fixed bounds (so a log line
or a usage key built from them stays small), recorded by id only, and stripped from
the body before it goes upstream (`strip_tracking`), for every provider kind.

Bounds (documented in the README): ids 1-256 characters; `display_name` up to 256 and
`email` up to 320; `metadata` up to 16 string pairs, keys up to 64 and values up to
512 characters (OpenAI's own `metadata` convention); up to 32 `tags` of 1-64 characters.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

if TYPE_CHECKING:
    from schemas.envelopes import Job

MAX_ID_CHARS = 256
TRACKED_FIELDS = ("identity", "thread")

Id = Annotated[str, Meta(min_length=1, max_length=MAX_ID_CHARS)]
MetadataKey = Annotated[str, Meta(min_length=1, max_length=64)]
MetadataValue = Annotated[str, Meta(max_length=512)]
Tag = Annotated[str, Meta(min_length=1, max_length=64)]


class EndUser(Struct):
    """`identity`: who the request is for (the application's end user)."""

    id: Id
    display_name: Annotated[str, Meta(max_length=256)] | UnsetType = UNSET
    email: Annotated[str, Meta(max_length=320)] | UnsetType = UNSET
    metadata: Annotated[dict[MetadataKey, MetadataValue], Meta(max_length=16)] | UnsetType = UNSET


class Thread(Struct):
    """`thread`: the conversation the request belongs to."""

    id: Id
    tags: Annotated[list[Tag], Meta(max_length=32)] | UnsetType = UNSET


_raw_object = msgspec.json.Decoder(dict[str, msgspec.Raw])
_encode = msgspec.json.Encoder().encode


def strip_tracking(body: bytes, tracked: bool) -> bytes:
    """The body without `identity` and `thread`; unchanged (the same bytes) without them.

    `tracked`: the validated request set one of them. Otherwise the body is decoded
    again only if it names them (with a null value, or a key written with escapes).
    The other top-level values are kept byte for byte (`msgspec.Raw`); only the
    whitespace between top-level members is lost, as in the openai kind's own rewrite.
    """
    if not tracked and b"identity" not in body and b"thread" not in body and b"\\u" not in body:
        return body
    fields = _raw_object.decode(body)
    if not any(name in fields for name in TRACKED_FIELDS):
        return body
    for name in TRACKED_FIELDS:
        fields.pop(name, None)
    return _encode(fields)


def identity_id(identity: EndUser | None, user: str | None) -> str:
    """The id recorded for a request: `identity.id`, else OpenAI's `user` (cut to the id bound)."""
    if identity is not None:
        return identity.id
    return (user or "")[:MAX_ID_CHARS]


def log_ids(job: Job) -> dict[str, str]:
    """What the ingress `request` and worker `job` log lines say of who, which conversation
    and which trace: ids only, never `identity`'s personal data (invariant 6)."""
    # The ingress writes a version-00 traceparent: "00-<32 hex trace id>-...".
    return {"identity": job.identity, "thread": job.thread, "trace_id": job.traceparent[3:35]}
