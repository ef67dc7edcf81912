"""The console's Batches page: an org's batches, newest first, with status and progress.

    GET  /console/batches                     the page (`?org=` the operator's pick,
                                              `after`, `limit` 1-100 as the API pages)
    POST /console/batches/<batch_id>/cancel   stop a batch (as POST /v1/batches/{id}/cancel)

Batches are read with `BatchStore.list`, the operation `GET /v1/batches` calls, and shown
in the API's shape (`BatchState.public()`); cancel calls `BatchStore.cancel` as the API does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from quart import Response, request, url_for

from ingress.batches import batch_store
from ingress.console.base import checked_form, chosen_org, console, page, see_other, signed_in
from ingress.respond import gateway
from schemas.batch import BATCH_PREFIX, Batch
from schemas.errors import GatewayError

PAGE = 20
CANCELLABLE = ("validating", "in_progress")


@dataclass(frozen=True, slots=True)
class BatchRow:
    """A batch as a table row: the API's Batch, its progress in percent (completed and
    failed lines of the total) and whether it may still be cancelled."""

    batch: Batch
    done: int
    percent: int
    cancellable: bool

    @property
    def created(self) -> str:
        """When the batch was created, in UTC."""
        return when(self.batch.created_at)


def when(unix: int | None) -> str:
    """A unix time as "2026-12-02 18:32 UTC" ("" for none)."""
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(unix)) if unix else ""


def batch_row(batch: Batch) -> BatchRow:
    """A row for `batch`."""
    counts = batch.request_counts
    done = counts.completed + counts.failed
    if counts.total:
        percent = min(100, done * 100 // counts.total)
    else:
        percent = 100 if batch.status == "completed" else 0
    return BatchRow(batch, done, percent, batch.status in CANCELLABLE)


def page_size(raw: str | None) -> int:
    """`limit` as the API reads it: 1-100, 20 when absent; 400 in words otherwise."""
    try:
        limit = PAGE if raw is None or raw == "" else int(raw)
    except ValueError:
        limit = 0
    if not 1 <= limit <= 100:
        raise GatewayError(400, "invalid_value", "The page size (limit) is 1 to 100",
                           param="limit")
    return limit


@console.get("/batches")
async def batches() -> Response:
    """The org's batches, `limit` at a time after the batch `after`."""
    viewer = await signed_in("admin")
    org, orgs = await chosen_org(viewer)
    limit = page_size(request.args.get("limit"))
    after = request.args.get("after") or None
    rows: list[BatchRow] = []
    more = False
    if org is not None:
        found, more = await gateway().redis_call(batch_store().list(org, after=after,
                                                                    limit=limit))
        rows = [batch_row(state.public()) for state in found]
    newer = url_for("console.batches", org=org, limit=request.args.get("limit")) if after else None
    older = (url_for("console.batches", org=org, after=rows[-1].batch.id,
                     limit=request.args.get("limit")) if more and rows else None)
    return await page("batches.html", viewer, "batches", title="Batches", org=org, orgs=orgs,
                      rows=rows, after=after, newer=newer, older=older,
                      base_url=request.host_url.rstrip("/") + "/v1",
                      limit=request.args.get("limit"), cancelled=request.args.get("cancelled"))


@console.post("/batches/<batch_id>/cancel")
async def cancel_batch(batch_id: str) -> Response:
    """Stop a batch: `cancelling` until its lines in flight end (409 in words for a batch
    that has ended, 404 for one the org does not have)."""
    viewer = await signed_in("admin")
    fields = await checked_form(viewer)
    org = viewer.org(fields.get("org"))
    missing = GatewayError(404, "not_found", f"No batch found with id {batch_id[:128]!r}.")
    if not batch_id.startswith(BATCH_PREFIX) or len(batch_id) > 128:
        raise missing
    state = await gateway().redis_call(batch_store().cancel(batch_id, org))
    if state is None:
        raise missing
    if state.status not in ("cancelling", "cancelled"):
        raise GatewayError(409, "batch_not_cancellable",
                           f"Cannot cancel a batch with status {state.status!r}.",
                           details={"status": state.status})
    return see_other(url_for("console.batches", org=org, after=fields.get("after") or None,
                             limit=fields.get("limit") or None, cancelled=batch_id))
