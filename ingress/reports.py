"""`/v1/admin/usage`, `/v1/admin/usage.csv` and `/v1/admin/requests`: what an org used.

Each handler authenticates, checks the caller may manage the org (ingress/access.py),
decodes its query string into a Struct once, and calls the same function the command
line calls (ingress/usage.py, ingress/requestlog.py). `read_usage`, `read_requests` and
`csv_response` are what the console's Usage and Requests pages call too.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable
from typing import Any, TypeVar

import coredis
import msgspec
import trio
from quart import Blueprint, Response, request
from werkzeug.datastructures import MultiDict

from ingress.access import managing_org, require_manager
from ingress.gateway import redis_error
from ingress.requestlog import read_log
from ingress.respond import gateway, identity, json_response
from ingress.usage import report_csv, usage_report
from schemas.errors import GatewayError
from schemas.requestlog import RequestPage, RequestsQuery
from schemas.usage import UsageQuery, UsageReport

reports = Blueprint("reports", __name__)
Q = TypeVar("Q")
T = TypeVar("T")
# Each Redis read of a report (a week of day hashes, a page of the log) gets this long: an
# admin's read, off the inference path, may take longer than `redis_timeout_s` allows a
# request, and a Redis that is away still answers 503 well within a request's timeout.
READ_TIMEOUT_S = 30.0


def query_of(shape: type[Q], given: MultiDict[str, str] | None = None) -> Q:
    """The query string (or `given`, parameters already picked from it) as a Struct: 422
    naming the parameter for a bad value or an unknown one. Repeated `group_by`
    parameters add up."""
    source = request.args if given is None else given
    args: dict[str, str] = source.to_dict()
    if len(groups := source.getlist("group_by")) > 1:
        args["group_by"] = ",".join(groups)
    try:
        return msgspec.convert(args, shape, strict=False)
    except msgspec.ValidationError as exc:
        message = str(exc)
        reason, _, where = message.partition(" - at `")
        param = where.rstrip("`").removeprefix("$.") or None
        if param is None and "unknown field `" in message:
            param = message.split("`")[1]
        raise GatewayError(422, "validation_error", f"invalid query parameter: {message}",
                           param=param, details={"reason": reason}) from None


async def read_usage(org: str, query: UsageQuery) -> UsageReport:
    """The org's usage report, as the API and the console read it (Redis trouble: 503)."""
    return await _reading(usage_report(gateway().redis, org, query, READ_TIMEOUT_S))


async def read_requests(org: str, query: RequestsQuery) -> RequestPage:
    """A page of the org's request log, as the API and the console read it: 400 for a
    reversed range, 503 for Redis trouble."""
    if query.from_ and query.to and query.from_ > query.to:
        raise GatewayError(400, "invalid_parameter",
                           f"`from` ({query.from_}) is after `to` ({query.to})", param="from")
    return await _reading(read_log(gateway().redis, org, query,
                                   gateway().config.usage.request_log_days, READ_TIMEOUT_S))


def csv_response(report: UsageReport) -> Response:
    """The report as a CSV download named after its org and range."""
    org = re.sub(r"[^A-Za-z0-9_.-]", "_", report.org)  # a header value, whatever the org
    name = f"usage-{org}-{report.from_}-{report.to}.csv"
    return Response(report_csv(report), 200, content_type="text/csv; charset=utf-8",
                    headers={"content-disposition": f'attachment; filename="{name}"'})


async def _report() -> UsageReport:
    caller = await identity()
    require_manager(caller)  # a member hears 403 before anything about its parameters
    query = query_of(UsageQuery)
    return await read_usage(managing_org(caller, query.org), query)


@reports.get("/v1/admin/usage")
async def usage() -> Response:
    """The org's usage over a range of UTC days, grouped, with totals."""
    return json_response(await _report())


@reports.get("/v1/admin/usage.csv")
async def usage_csv() -> Response:
    """The same rows as `/v1/admin/usage`, as CSV."""
    return csv_response(await _report())


@reports.get("/v1/admin/requests")
async def requests() -> Response:
    """The org's request log, newest first, filtered, a page at a time."""
    caller = await identity()
    require_manager(caller)
    query = query_of(RequestsQuery)
    return json_response(await read_requests(managing_org(caller, query.org), query))


async def _reading(awaitable: Awaitable[T]) -> T:
    """A report's reads: Redis trouble is a 503, as on the request path (invariant 7)."""
    try:
        return await awaitable
    except (trio.TooSlowError, coredis.exceptions.RedisError, OSError) as exc:
        raise redis_error() from exc


REPORT_TYPES = (UsageReport, RequestPage)


def _parameters(shape: type[Any]) -> list[dict[str, Any]]:
    """A query Struct's fields as OpenAPI query parameters (the schema msgspec derives)."""
    schema = msgspec.json.schema(shape)
    fields = schema["$defs"][shape.__name__]["properties"]
    return [{"name": name, "in": "query", "required": False, "schema": spec}
            for name, spec in fields.items()]


def report_paths(ref: str, errors: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI paths of this blueprint (`ref`: the components reference template)."""
    secured: list[dict[str, list[str]]] = [{"bearer": []}]

    def get(summary: str, shape: type[Any], content: dict[str, Any]) -> dict[str, Any]:
        return {"get": {"summary": summary, "security": secured,
                        "parameters": _parameters(shape),
                        "responses": {"200": {"description": "ok", "content": content},
                                      **errors}}}

    def json_of(name: str) -> dict[str, Any]:
        return {"application/json": {"schema": {"$ref": ref.format(name=name)}}}

    return {
        "/v1/admin/usage": get("An org's usage over UTC days, grouped by any of day, project, "
                               "key, model, provider, identity, thread, traffic (interactive "
                               "or batch), with totals",
                               UsageQuery, json_of("UsageReport")),
        "/v1/admin/usage.csv": get("The rows of /v1/admin/usage as CSV (a header line first)",
                                   UsageQuery, {"text/csv": {"schema": {"type": "string"}}}),
        "/v1/admin/requests": get("An org's request log (metadata only), newest first",
                                  RequestsQuery, json_of("RequestPage")),
    }
