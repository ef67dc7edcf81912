"""OpenAI's Batch API: create a batch from an uploaded file, read, list and cancel batches.

    POST /v1/batches              `input_file_id`, `endpoint`, `completion_window` ("24h"),
                                  `metadata` (≤ 16 pairs)          → Batch, `validating`
    GET  /v1/batches/{id}         → Batch
    GET  /v1/batches              `after`, `limit` (1-100, 20), newest first → BatchList
    POST /v1/batches/{id}/cancel  → Batch, `cancelling` (an ended batch: 409)

Create reads the input file (the caller's org's, purpose `batch`), checks every line again
as the upload did (ingress/batchlines.py: the config may have changed since), then each
line's `url` against the batch's `endpoint` and its model against the catalog (the routes
`Gateway.submit` would use). A line that cannot run fails the whole batch at once:
`failed`, with the reasons in `errors.data` (`code`, `line` from 1, `message`, `param`),
as OpenAI does, and no line runs. Otherwise every line becomes a `Job` (`batch`,
`batch_line`, `custom_id`; no `reply_to`, not streamed, its deadline the batch's
`expires_at`), grouped by its first route's provider, and the batch is stored
(`BatchStore.create`) as `validating`: the workers take it from there (workers/batches/).
"""

from __future__ import annotations

import time
from collections import defaultdict

import coredis
import msgspec
import trio
from quart import Blueprint, Response, request

from ingress.batchlines import Line, check_file
from ingress.batchstore import PUSH_CHUNK, BatchStore
from ingress.bodies import decode_body
from ingress.files import inference_caller, store
from ingress.filestore import not_found as file_not_found
from ingress.filestore import sortable_id
from ingress.gateway import redis_error
from ingress.keys import Identity
from ingress.respond import gateway, json_response
from schemas.batch import (
    BATCH_PREFIX,
    BatchError,
    BatchList,
    BatchRecord,
    BatchState,
    CreateBatch,
)
from schemas.chat import raw_object_decoder
from schemas.envelopes import Job, job_encoder
from schemas.errors import GatewayError

batches = Blueprint("batches", __name__)
ENDPOINTS = ("/v1/chat/completions", "/v1/embeddings", "/v1/completions", "/v1/responses")
WINDOW_S = {"24h": 24 * 3600}
MAX_METADATA, MAX_KEY, MAX_VALUE = 16, 64, 512  # OpenAI's bounds of `metadata`
_create = msgspec.json.Decoder(CreateBatch)


def _not_found(batch_id: str) -> GatewayError:
    return GatewayError(404, "not_found", f"No batch found with id {batch_id[:128]!r}.")


def batch_store() -> BatchStore:
    return BatchStore(gateway().redis)


def _check(create: CreateBatch) -> None:
    if create.endpoint not in ENDPOINTS:
        raise GatewayError(400, "invalid_value", f"`endpoint` is one of {', '.join(ENDPOINTS)}",
                           param="endpoint")
    if create.completion_window not in WINDOW_S:
        raise GatewayError(400, "invalid_value", "`completion_window` is \"24h\"",
                           param="completion_window")
    metadata = create.metadata or {}
    if len(metadata) > MAX_METADATA:
        raise GatewayError(400, "invalid_value", f"`metadata` holds at most {MAX_METADATA} "
                           "pairs", param="metadata")
    for key, value in metadata.items():
        if len(key) > MAX_KEY or len(value) > MAX_VALUE:
            raise GatewayError(400, "invalid_value", f"`metadata` keys are at most {MAX_KEY} "
                               f"characters, values at most {MAX_VALUE}", param="metadata")


@batches.post("/v1/batches")
async def create_batch() -> Response:
    """A batch of the lines of an uploaded file: `validating`, or `failed` at once."""
    caller = await inference_caller()
    body = await request.get_data(cache=False)
    assert isinstance(body, bytes)
    await gateway().bounds.check_body(body)
    create = decode_body(_create, body)
    _check(create)
    meta = await store().get(create.input_file_id, caller.org)
    if meta is None:
        raise file_not_found(create.input_file_id, "input_file_id")
    if meta.purpose != "batch":
        raise GatewayError(400, "invalid_value", f"file {meta.id} has purpose {meta.purpose!r}; "
                           "a batch's input file is uploaded with purpose \"batch\"",
                           param="input_file_id")
    config = gateway().config.batch
    data = await store().read(meta)
    created = int(time.time())
    record = BatchRecord(id=sortable_id(BATCH_PREFIX), endpoint=create.endpoint,
                         input_file_id=meta.id, completion_window=create.completion_window,
                         created_at=created,
                         expires_at=created + WINDOW_S[create.completion_window],
                         metadata=create.metadata)
    jobs = _Jobs(caller, record)
    checked = await check_file(data, caller, max_lines=config.max_lines, on_line=jobs.add)
    del data
    state = BatchState(org=caller.org, project=caller.project, key_id=caller.key_id,
                       record=record, status="validating", total=checked.count)
    if checked.problems:  # no line runs: the batch fails with the reasons
        state = msgspec.structs.replace(state, status="failed", failed_at=created, total=0,
                                        errors=checked.problems)
        jobs.by_provider.clear()
    await _stored(state, dict(jobs.by_provider), config.retention_days * 86400)
    return json_response(state.public())


class _Jobs:
    """The jobs of a batch's lines, by their first route's provider, built as the lines
    are checked (encoded at once: 50,000 lines are 50,000 bytes objects, not Structs)."""

    def __init__(self, caller: Identity, record: BatchRecord) -> None:
        self.caller = caller
        self.record = record
        self.catalog = gateway().catalog
        self.by_provider: dict[str, list[bytes]] = defaultdict(list)

    def add(self, line: Line) -> BatchError | None:
        """Queue a line's job; the reason it cannot run, if it cannot."""
        record, caller, submission = self.record, self.caller, line.submission
        if line.url != record.endpoint:
            return BatchError(code="url_mismatch", message=f"The line's url {line.url} does "
                              f"not match the batch's endpoint {record.endpoint}.",
                              param="url", line=line.number)
        try:
            routes = self.catalog.routes(submission.model, endpoint=submission.endpoint)
        except GatewayError as exc:
            return BatchError(code=exc.code, message=exc.message,
                              param=f"body.{exc.param}" if exc.param else "body.model",
                              line=line.number)
        job = Job(request_id=line.request_id, org=caller.org, project=caller.project,
                  key_id=caller.key_id, model=submission.model, routes=routes,
                  body=submission.body, stream=False, include_usage=False,
                  endpoint=submission.endpoint, identity=submission.identity,
                  thread=submission.thread, reply_to="", deadline=float(record.expires_at),
                  batch=record.id, batch_line=line.index, custom_id=line.custom_id)
        self.by_provider[routes[0].provider].append(job_encoder.encode(job))
        return None


async def _stored(state: BatchState, jobs: dict[str, list[bytes]], ttl_s: int) -> None:
    """`BatchStore.create`, bounded: a Redis step for each chunk of line jobs."""
    steps = 2 + sum(len(j) // PUSH_CHUNK + 1 for j in jobs.values())
    try:
        with trio.fail_after(gateway().config.limits.redis_timeout_s * steps):
            await batch_store().create(state, jobs, ttl_s)
    except (trio.TooSlowError, coredis.exceptions.RedisError, OSError) as exc:
        raise redis_error() from exc


def _batch_id(batch_id: str) -> str:
    if not batch_id.startswith(BATCH_PREFIX) or len(batch_id) > 128:
        raise _not_found(batch_id)
    return batch_id


@batches.get("/v1/batches/<batch_id>")
async def retrieve_batch(batch_id: str) -> Response:
    caller = await inference_caller()
    state = await gateway().redis_call(batch_store().get(_batch_id(batch_id), caller.org))
    if state is None:
        raise _not_found(batch_id)
    return json_response(state.public())


@batches.get("/v1/batches")
async def list_batches() -> Response:
    """The org's batches, newest first, `limit` (1-100, 20) at a time after `after`."""
    caller = await inference_caller()
    raw = request.args.get("limit")
    try:
        limit = 20 if raw is None else int(raw)
    except ValueError:
        limit = 0
    if not 1 <= limit <= 100:
        raise GatewayError(400, "invalid_value", "`limit` is 1 to 100", param="limit")
    after = request.args.get("after") or None
    found, more = await gateway().redis_call(batch_store().list(caller.org, after=after,
                                                                limit=limit))
    data = [state.public() for state in found]
    return json_response(BatchList(data=data, first_id=data[0].id if data else None,
                                   last_id=data[-1].id if data else None, has_more=more))


@batches.post("/v1/batches/<batch_id>/cancel")
async def cancel_batch(batch_id: str) -> Response:
    """Stop a batch: `cancelling` until its lines in flight end, then `cancelled`."""
    caller = await inference_caller()
    body = await request.get_data(cache=False)
    assert isinstance(body, bytes)
    if body.strip():  # the SDKs send none; one that is there must be a JSON object
        await gateway().bounds.check_body(body)
        decode_body(raw_object_decoder, body)
    state = await gateway().redis_call(batch_store().cancel(_batch_id(batch_id), caller.org))
    if state is None:
        raise _not_found(batch_id)
    if state.status not in ("cancelling", "cancelled"):
        raise GatewayError(409, "batch_not_cancellable",
                           f"Cannot cancel a batch with status {state.status!r}.",
                           details={"status": state.status})
    return json_response(state.public())
