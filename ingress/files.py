"""OpenAI's Files API, for the Batch API: upload, list, read, download and delete files.

    POST   /v1/files               multipart: `purpose` ("batch"), `file` (JSONL), optional
                                   `expires_after[anchor]`/`[seconds]`  → FileObject
    GET    /v1/files               `purpose`, `after`, `limit` (1-10000, 10000), `order`
    GET    /v1/files/{id}          → FileObject
    GET    /v1/files/{id}/content  → the bytes (application/octet-stream)
    DELETE /v1/files/{id}          → FileDeleted

Files belong to the caller's org (another org's id is a 404, as an unknown one) and expire
after `batch.retention_days`. Uploads are for the Batch API only (`purpose` "batch"); a
batch input file is checked line by line at upload (ingress/batchlines.py) and a bad one
is a 400 whose `details.errors` lists the problems, `{"line", "code", "message", "param"}`,
with nothing stored. The output and error files of batches (purpose `batch_output`,
written by the workers in the same layout) are read, downloaded and deleted here too.
The body of `POST /v1/files` may be up to `batch.max_file_bytes` (the edge lets this one
path past `limits.max_body_bytes`); a file above it is a 413.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import trio
from quart import Blueprint, Response, request
from werkzeug.http import parse_options_header

from ingress.batchlines import check_file
from ingress.filestore import FileStore, new_file_id, not_found
from ingress.keys import Identity
from ingress.media import decode_form
from ingress.respond import gateway, identity, json_response
from schemas.batch import FileDeleted, FileList, FileObject
from schemas.errors import GatewayError
from schemas.media import Form

files = Blueprint("files", __name__)
UPLOAD_PATH = "/v1/files"
FORM_SLACK = 64 * 1024  # what the form may add to the file's own bytes (boundaries, fields)
MAX_FILENAME = 255
PURPOSES = ("batch",)  # what may be uploaded; the workers write `batch_output` files
EXPIRY_S = (3600, 30 * 86400)  # OpenAI's bounds of `expires_after[seconds]`
_DECODE_IN_THREAD = 1 << 20  # a form larger than this is parsed off the event loop


async def inference_caller() -> Identity:
    """The caller, a key of an org: an operator key is refused, as for inference."""
    caller = await identity()
    if caller.role == "operator":
        raise GatewayError(403, "forbidden", "an operator key manages the gateway and serves "
                           "no inference: use a key of an org (member or admin)")
    return caller


def store() -> FileStore:
    return FileStore(gateway().redis, gateway().config.limits.redis_timeout_s)


def file_too_large(limit: int) -> GatewayError:
    return GatewayError(413, "file_too_large", f"the file exceeds {limit} bytes "
                        f"(batch.max_file_bytes = {limit})",
                        details={"limit": "max_file_bytes", "max": limit})


async def _form(body: bytes) -> Form:
    content_type = request.headers.get("content-type", "")
    kind, _ = parse_options_header(content_type)
    if kind != "multipart/form-data":
        raise GatewayError(415, "unsupported_media_type", "upload the file as "
                           "multipart/form-data (a `purpose` field and a `file` part), not "
                           f"{kind or 'no content type'!r}")
    if len(body) > _DECODE_IN_THREAD:
        return await trio.to_thread.run_sync(decode_form, body, content_type)
    return decode_form(body, content_type)


def _expiry(form: Form, created: int, retention_s: int) -> int:
    """When the file expires: after `batch.retention_days`, or sooner if the upload asks."""
    anchor, seconds = form.value("expires_after[anchor]"), form.value("expires_after[seconds]")
    if anchor is None and seconds is None:
        return created + retention_s
    if anchor != "created_at":
        raise GatewayError(400, "invalid_value", "`expires_after[anchor]` is \"created_at\"",
                           param="expires_after.anchor")
    try:
        after = int(seconds or "")
    except ValueError:
        after = 0
    if not EXPIRY_S[0] <= after <= EXPIRY_S[1]:
        raise GatewayError(400, "invalid_value", f"`expires_after[seconds]` is {EXPIRY_S[0]} "
                           f"to {EXPIRY_S[1]}", param="expires_after.seconds")
    return created + min(after, retention_s)


@files.post(UPLOAD_PATH)
async def upload() -> Response:
    """Store a batch input file, checked line by line first."""
    caller = await inference_caller()
    config = gateway().config.batch
    body = await request.get_data(cache=False)
    assert isinstance(body, bytes)
    form = await _form(body)
    del body
    purpose = form.value("purpose")
    if not purpose:
        raise GatewayError(400, "missing_field", "the form needs a `purpose` field",
                           param="purpose")
    if purpose not in PURPOSES:
        raise GatewayError(400, "invalid_value", f"this gateway stores files for the Batch API "
                           f"only: `purpose` is {' or '.join(PURPOSES)}, not {purpose[:64]!r}",
                           param="purpose")
    part = form.file()
    if part is None:
        raise GatewayError(400, "missing_field", "the form needs a `file` part with a filename",
                           param="file")
    if len(part.data) > config.max_file_bytes:
        raise file_too_large(config.max_file_bytes)
    filename = part.filename or "upload.jsonl"
    if len(filename) > MAX_FILENAME:
        raise GatewayError(400, "invalid_value", f"the filename is longer than {MAX_FILENAME} "
                           "characters", param="file")
    created = int(time.time())
    expires_at = _expiry(form, created, config.retention_days * 86400)
    checked = await check_file(part.data, caller, max_lines=config.max_lines)
    if checked.problems:
        first = checked.problems[0]
        where = f"line {first.line}: " if first.line else ""
        raise GatewayError(
            400, "invalid_batch_file", f"the file is not a valid batch input file "
            f"({len(checked.problems)}{'+' if checked.truncated else ''} problems; "
            f"{where}{first.message})", param="file",
            details={"errors": [{"line": p.line, "code": p.code, "message": p.message,
                                 "param": p.param} for p in checked.problems],
                     "truncated": checked.truncated})
    meta = FileObject(id=new_file_id(), bytes=len(part.data), created_at=created,
                      filename=filename, purpose=purpose, expires_at=expires_at)
    await store().put(caller.org, meta, part.data)
    return json_response(meta)


def _limit(default: int, most: int) -> int:
    raw = request.args.get("limit")
    try:
        limit = default if raw is None else int(raw)
    except ValueError:
        limit = 0
    if not 1 <= limit <= most:
        raise GatewayError(400, "invalid_value", f"`limit` is 1 to {most}", param="limit")
    return limit


@files.get(UPLOAD_PATH)
async def list_files() -> Response:
    """The org's files, newest first unless `order=asc`."""
    caller = await inference_caller()
    limit = _limit(10000, 10000)
    order = request.args.get("order", "desc")
    if order not in ("asc", "desc"):
        raise GatewayError(400, "invalid_value", "`order` is asc or desc", param="order")
    purpose = request.args.get("purpose") or None
    found, more = await store().list(caller.org, purpose=purpose,
                                     after=request.args.get("after") or None, limit=limit,
                                     ascending=order == "asc")
    return json_response(FileList(data=found, first_id=found[0].id if found else None,
                                  last_id=found[-1].id if found else None, has_more=more))


async def _own(file_id: str) -> tuple[Identity, FileObject]:
    caller = await inference_caller()
    meta = await store().get(file_id, caller.org)
    if meta is None:
        raise not_found(file_id)
    return caller, meta


@files.get(UPLOAD_PATH + "/<file_id>")
async def retrieve_file(file_id: str) -> Response:
    return json_response((await _own(file_id))[1])


@files.get(UPLOAD_PATH + "/<file_id>/content")
async def file_content(file_id: str) -> Response:
    """The file's bytes as stored, sent a few MB at a time."""
    _, meta = await _own(file_id)
    chunks = store().chunks(meta)
    first = await anext(chunks)  # a file gone already is still a 404, not a short body

    async def body() -> AsyncIterator[bytes]:
        yield first
        async for chunk in chunks:
            yield chunk

    response = Response(body(), 200, content_type="application/octet-stream")
    response.headers["content-disposition"] = f'attachment; filename="{_quoted(meta.filename)}"'
    return response


def _quoted(name: str) -> str:
    return "".join(c for c in name if c.isprintable() and c not in '"\\').encode(
        "latin-1", "replace").decode("latin-1")


@files.delete(UPLOAD_PATH + "/<file_id>")
async def delete_file(file_id: str) -> Response:
    caller, meta = await _own(file_id)
    await store().delete(meta, caller.org)
    return json_response(FileDeleted(id=meta.id))
