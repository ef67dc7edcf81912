"""The request log: one metadata record per answered inference request, and its query.

A record holds ids, figures and the outcome, never content (no prompt, no answer, no
error message: an upstream's message may quote the prompt) and never a secret (the key
is named by its id). `identity` and `thread` are the ids only (schemas/tracking.py).
"""

from __future__ import annotations

import datetime
from typing import Annotated

import msgspec
from msgspec import Meta, Struct

MAX_LIMIT = 1000  # records one page may hold
MAX_SCAN = 20_000  # records one call reads at most when filters match few (then: a cursor)


class RequestRecord(Struct, kw_only=True):
    """What the log keeps of one request. `latency_ms`: from admission (or, for a request
    refused before it, from authentication) to the end of the answer; `ttft_ms`: streams
    only, to the first content; `cost_usd`: null when the route that answered has no price;
    `code`: the error code of a failed request ("" when it succeeded)."""

    id: str
    time: str  # ISO 8601, UTC, milliseconds: when the answer ended
    org: str
    project: str
    key_id: str
    endpoint: str
    model: str
    provider: str
    status: int
    code: str = ""
    latency_ms: float
    ttft_ms: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None
    identity: str = ""
    thread: str = ""
    stream: bool = False


record_encoder = msgspec.json.Encoder()
record_decoder = msgspec.json.Decoder(RequestRecord)

StatusFilter = Annotated[str, Meta(pattern=r"^[1-5]([0-9]{2}|xx)$")]
Filter = Annotated[str, Meta(max_length=256)]


class RequestsQuery(Struct, forbid_unknown_fields=True):
    """`GET /v1/admin/requests` parameters: exact-match filters (`status` also takes a
    class such as `4xx`), a UTC day range (both included), a page size and the cursor a
    previous page returned (`next_cursor`)."""

    org: Filter | None = None
    status: StatusFilter | None = None
    model: Filter | None = None
    key: Filter | None = None
    project: Filter | None = None
    identity: Filter | None = None
    thread: Filter | None = None
    from_: datetime.date | None = msgspec.field(default=None, name="from")
    to: datetime.date | None = None
    limit: Annotated[int, Meta(ge=1, le=MAX_LIMIT)] = 100
    cursor: Annotated[str, Meta(pattern=r"^[0-9]{1,20}-[0-9]{1,20}$")] | None = None

    def matches(self, record: RequestRecord) -> bool:
        """Whether a record passes every filter given."""
        if self.status is not None:
            shown = str(record.status)
            if shown != self.status and not (self.status.endswith("xx")
                                              and shown[0] == self.status[0]):
                return False
        wanted = ((self.model, record.model), (self.key, record.key_id),
                  (self.project, record.project), (self.identity, record.identity),
                  (self.thread, record.thread))
        return all(want is None or want == have for want, have in wanted)


class RequestPage(Struct, kw_only=True):
    """One page of the log, newest first; `next_cursor` continues it (null: the end)."""

    org: str
    data: list[RequestRecord]
    next_cursor: str | None = None


def iso_time(unix: float) -> str:
    """A record's `time`: UTC, to the millisecond."""
    moment = datetime.datetime.fromtimestamp(unix, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
