"""Batches written straight into Redis for the operator views' tests (CLI, metrics).

`make_batch` stores one through `BatchStore.create` (minimal msgpack line jobs), and
`advance` moves it along as the workers do: HINCRBY the counters, HSET the status and
its timestamp, and off the active list once it has finished.
"""

from __future__ import annotations

import time
from typing import Any

from ingress.batchstore import BatchStore
from schemas import names
from schemas.batch import ACTIVE, BatchRecord, BatchState, BatchStatus
from schemas.config import Route
from schemas.envelopes import Job, job_encoder

ENDPOINT = "/v1/chat/completions"


def line_job(batch_id: str, org: str, index: int, provider: str) -> bytes:
    """A batch line job as the ingress builds it (the body does not matter here)."""
    return job_encoder.encode(Job(
        request_id=f"{batch_id}-{index}", org=org, project="", key_id="key_x", model="m",
        routes=[Route(provider=provider, model="up-m")], body=b'{"model":"m","messages":[]}',
        stream=False, reply_to="", deadline=time.time() + 86_400, batch=batch_id,
        batch_line=index, custom_id=f"req-{index}"))


async def make_batch(redis: Any, batch_id: str, org: str, total: int, *,
                     created_at: int | None = None, provider: str = "up",
                     status: BatchStatus = "validating") -> BatchState:
    created = int(time.time()) if created_at is None else created_at
    state = BatchState(org=org, record=BatchRecord(
        id=batch_id, endpoint=ENDPOINT, input_file_id="file-in", completion_window="24h",
        created_at=created, expires_at=created + 86_400), status=status, total=total)
    lines = {provider: [line_job(batch_id, org, i, provider) for i in range(total)]}
    await BatchStore(redis).create(state, lines if total else {}, 3600)
    return state


async def advance(redis: Any, batch_id: str, *, completed: int = 0, failed: int = 0,
                  status: BatchStatus | None = None, **fields: str) -> None:
    """What the workers write: counters up, then a new status (with its timestamp)."""
    key = names.batch(batch_id)
    async with redis.pipeline(transaction=True) as pipe:  # one step: no half-moved reads
        if completed:
            pipe.hincrby(key, "completed", completed)
        if failed:
            pipe.hincrby(key, "failed", failed)
        if status is not None:
            fields = {"status": status, f"{status}_at": str(int(time.time())), **fields}
            if status not in ACTIVE:
                pipe.srem(names.BATCHES_ACTIVE, [batch_id])
        if fields:
            pipe.hset(key, fields)
