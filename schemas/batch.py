"""The Files and Batch APIs' shapes (OpenAI's), and a batch as Redis keeps it.

    POST /v1/files (purpose=batch, JSONL of BatchRequestLine)  → FileObject
    POST /v1/batches (CreateBatch)                              → Batch, status validating
      ingress: every line becomes a Job (batch, batch_line, custom_id set) on the list
      `names.batch_lines(batch, provider)` of its first route's provider
    workers: validating → in_progress; lines fed to `names.batch_queue(provider)` as the
      provider's pace allows; each outcome written once as an OutputLine in
      `names.batch_output` / `names.batch_errors`; all ended → finalizing → completed,
      with the output and error files
    POST /v1/batches/{id}/cancel → cancelling; the lines in flight end → cancelled

The hash `names.batch(id)` holds `BatchState`'s fields, each as a string (counters as
integers, so Lua can HINCRBY them; `record` and `errors` as JSON).
"""

from __future__ import annotations

from typing import Literal

import msgspec
from msgspec import Struct

BatchStatus = Literal["validating", "failed", "in_progress", "finalizing", "completed",
                      "expired", "cancelling", "cancelled"]
# A batch in one of these is on `names.BATCHES_ACTIVE`: the workers still have work on it.
ACTIVE: frozenset[str] = frozenset({"validating", "in_progress", "finalizing", "cancelling"})
BatchEndpoint = Literal["/v1/chat/completions", "/v1/embeddings", "/v1/responses",
                        "/v1/completions"]
FILE_PREFIX, BATCH_PREFIX, LINE_PREFIX = "file-", "batch_", "batch_req_"


class FileObject(Struct, kw_only=True, omit_defaults=False):
    """OpenAI's file object (`GET /v1/files/{id}`)."""

    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    expires_at: int | None = None
    status: str = "processed"  # deprecated upstream, still read by older SDKs
    status_details: str | None = None


class FileList(Struct, kw_only=True):
    data: list[FileObject]
    object: Literal["list"] = "list"
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


class FileDeleted(Struct, kw_only=True):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


class BatchRequestLine(Struct, kw_only=True):
    """One line of a batch input file."""

    custom_id: str
    method: str
    url: str
    body: msgspec.Raw


class BatchError(Struct, kw_only=True, omit_defaults=False):
    """Why a batch (or one of its input lines) failed validation; `line` counts from 1."""

    code: str
    message: str
    param: str | None = None
    line: int | None = None


class BatchErrors(Struct, kw_only=True):
    data: list[BatchError]
    object: Literal["list"] = "list"


class RequestCounts(Struct, kw_only=True):
    total: int = 0
    completed: int = 0
    failed: int = 0


class CreateBatch(Struct, kw_only=True, forbid_unknown_fields=True):
    """`POST /v1/batches`."""

    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None = None


class Batch(Struct, kw_only=True, omit_defaults=False):
    """OpenAI's batch object."""

    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    errors: BatchErrors | None = None
    input_file_id: str
    completion_window: str
    status: BatchStatus
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: RequestCounts = msgspec.field(default_factory=RequestCounts)
    metadata: dict[str, str] | None = None


class BatchList(Struct, kw_only=True):
    data: list[Batch]
    object: Literal["list"] = "list"
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


class LineResponse(Struct, kw_only=True, omit_defaults=False):
    status_code: int
    request_id: str
    body: msgspec.Raw


class LineError(Struct, kw_only=True, omit_defaults=False):
    code: str
    message: str


class OutputLine(Struct, kw_only=True, omit_defaults=False):
    """A line of a batch's output or error file: the same answer a direct call would
    give (`response`), or `error` for a failure that is not an HTTP answer."""

    id: str
    custom_id: str
    response: LineResponse | None
    error: LineError | None


class BatchRecord(Struct, kw_only=True):
    """What a batch's hash keeps as JSON under `record`: what never changes after create."""

    id: str
    endpoint: str
    input_file_id: str
    completion_window: str
    created_at: int
    expires_at: int
    metadata: dict[str, str] | None = None


# The hash's timestamp fields, each set (unix seconds) when the batch reaches that status.
TIMESTAMPS = ("in_progress_at", "finalizing_at", "completed_at", "failed_at", "expired_at",
              "cancelling_at", "cancelled_at")


class BatchState(Struct, kw_only=True):
    """A batch as its hash `names.batch(id)` holds it.

    `total`: lines in the batch; `queued`: lines fed to a batch stream (or waiting for a
    retry) that have not ended; `completed`/`failed`: lines ended with a 2xx answer / any
    other outcome (written to the output / error file). Lines never fed when a batch is
    cancelled or expires are counted in neither.
    """

    org: str
    project: str = ""
    key_id: str = ""
    record: BatchRecord
    status: BatchStatus
    total: int = 0
    queued: int = 0
    completed: int = 0
    failed: int = 0
    errors: list[BatchError] = msgspec.field(default_factory=list)
    output_file_id: str = ""
    error_file_id: str = ""
    in_progress_at: int = 0
    finalizing_at: int = 0
    completed_at: int = 0
    failed_at: int = 0
    expired_at: int = 0
    cancelling_at: int = 0
    cancelled_at: int = 0

    def public(self) -> Batch:
        """The batch as the API answers it."""
        record = self.record
        return Batch(
            id=record.id, endpoint=record.endpoint, input_file_id=record.input_file_id,
            completion_window=record.completion_window, status=self.status,
            errors=BatchErrors(data=self.errors) if self.errors else None,
            output_file_id=self.output_file_id or None, error_file_id=self.error_file_id or None,
            created_at=record.created_at, expires_at=record.expires_at,
            request_counts=RequestCounts(total=self.total, completed=self.completed,
                                         failed=self.failed),
            metadata=record.metadata,
            in_progress_at=self.in_progress_at or None, finalizing_at=self.finalizing_at or None,
            completed_at=self.completed_at or None, failed_at=self.failed_at or None,
            expired_at=self.expired_at or None, cancelling_at=self.cancelling_at or None,
            cancelled_at=self.cancelled_at or None)


_json = msgspec.json.Encoder()
_record = msgspec.json.Decoder(BatchRecord)
_errors = msgspec.json.Decoder(list[BatchError])
_INTS = ("total", "queued", "completed", "failed", *TIMESTAMPS)


def state_fields(state: BatchState) -> dict[str, bytes]:
    """The hash fields of a new batch (HSET them all)."""
    fields = {"org": state.org.encode(), "project": state.project.encode(),
              "key_id": state.key_id.encode(), "record": _json.encode(state.record),
              "status": state.status.encode(), "errors": _json.encode(state.errors),
              "output_file_id": state.output_file_id.encode(),
              "error_file_id": state.error_file_id.encode()}
    fields.update({name: str(getattr(state, name)).encode() for name in _INTS})
    return fields


def state_from_hash(raw: dict[bytes, bytes]) -> BatchState | None:
    """A batch read back with HGETALL (None: no such batch, or a hash it cannot read)."""
    if b"record" not in raw or b"status" not in raw:
        return None
    try:
        text = {k.decode(): v.decode() for k, v in raw.items()}
        return BatchState(
            org=text.get("org", ""), project=text.get("project", ""),
            key_id=text.get("key_id", ""), record=_record.decode(raw[b"record"]),
            status=msgspec.convert(text["status"], BatchStatus),  # type: ignore[arg-type]
            errors=_errors.decode(raw[b"errors"]) if raw.get(b"errors") else [],
            output_file_id=text.get("output_file_id", ""),
            error_file_id=text.get("error_file_id", ""),
            **{name: int(text.get(name) or 0) for name in _INTS})
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError, UnicodeDecodeError):
        return None

