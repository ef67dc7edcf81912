"""The console's Requests page: an org's request log, newest first, filtered by status,
model, key, identity and thread (a GET form), a page at a time.

The page is the admin API's read (`ingress.reports.read_requests`, which calls
`ingress.requestlog.read_log`) of the query `query_of(RequestsQuery)` decodes; its "Older
requests" link carries the page's `next_cursor` and the same filters.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import msgspec
from quart import Response, request, url_for

from ingress.console.base import chosen_org, console, dollars, page, signed_in
from ingress.console.usage import console_query
from ingress.reports import read_requests
from ingress.respond import gateway
from schemas.requestlog import RequestRecord, RequestsQuery

PAGE_SIZE = 50
FILTERS = ("status", "model", "key", "identity", "thread")
STATUSES = (("2xx", "2xx (answered)"), ("4xx", "4xx (refused)"), ("5xx", "5xx (failed)"))


def status_class(record: RequestRecord) -> str:
    """The CSS class of a record's status: ok, client (4xx) or server (5xx)."""
    return {2: "status-ok", 4: "status-client", 5: "status-server"}.get(record.status // 100, "")


def when(record: RequestRecord) -> str:
    """A record's time as people read it: `2026-12-02 18:31:26` (UTC)."""
    return record.time.replace("T", " ").partition(".")[0]


@console.get("/requests")
async def requests() -> Response:
    """The Requests page of the org shown (an admin's own; the operator picks)."""
    viewer = await signed_in("admin")
    query = console_query(RequestsQuery)
    if "limit" not in request.args:
        query = msgspec.structs.replace(query, limit=PAGE_SIZE)
    org, orgs = await chosen_org(viewer)
    context: dict[str, Any] = {"org": org, "orgs": orgs, "query": query, "statuses": STATUSES,
                               "status_values": [value for value, _ in STATUSES],
               "dollars": dollars, "status_class": status_class, "when": when,
               "filtered": any(getattr(query, name) for name in FILTERS),
               "title": "Requests"}
    if org is None:
        return await page("requests.html", viewer, "requests", **context)
    found = await read_requests(org, msgspec.structs.replace(query, org=org))
    gw = gateway()
    keys = await gw.redis_call(gw.keys.list(org))
    older = None
    if found.next_cursor:
        params = {name: value for name, value in request.args.items() if value.strip()}
        params["cursor"] = found.next_cursor
        older = url_for("console.requests") + "?" + urlencode(params)
    first_page = url_for("console.requests") + "?" + urlencode(
        {name: value for name, value in request.args.items()
         if value.strip() and name != "cursor"}) if query.cursor else None
    return await page("requests.html", viewer, "requests", **context, records=found.data,
                      older=older, first_page=first_page,
                      keys=sorted(keys, key=lambda record: (record.name, record.key_id)),
                      key_names={record.key_id: record.name for record in keys},
                      models=sorted(model.slug for model in gw.config.models))
