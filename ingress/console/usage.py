"""The console's Usage page: an org's tokens, requests and cost per day over a range of
UTC days, as a chart and tables, broken down by model, project, key and identity, with
CSV downloads.

Every figure comes from the admin API's own reads (`ingress.reports.read_usage`, which
calls `ingress.usage.usage_report`), the range from `checked_range`, the query from
`query_of(UsageQuery)`; the CSV is `csv_response`, the same body `/v1/admin/usage.csv`
answers. Nothing is summed twice: each table is one report grouped by its dimension.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlencode

import msgspec
from markupsafe import Markup
from quart import Response, request, url_for
from werkzeug.datastructures import MultiDict

from ingress.console.base import Viewer, chosen_org, console, dollars, page, secure_headers, signed_in
from ingress.console.chart import bar_chart
from ingress.reports import csv_response, query_of, read_usage
from ingress.respond import gateway
from ingress.usage import checked_range, today
from schemas.errors import GatewayError
from schemas.usage import MAX_RANGE_DAYS, Group, UsageQuery, UsageReport, UsageRow

Q = TypeVar("Q")
BREAKDOWNS: tuple[tuple[Group, str], ...] = (
    ("model", "Model"), ("project", "Project"), ("key", "Access key"), ("identity", "Identity"))
DATE_PARAMS = ("from", "to")


def console_query(shape: type[Q]) -> Q:
    """The page's query string as `shape` (the API's Struct, decoded by `query_of`), a GET
    form's blank fields left out; a date that is not one is a 422 that says how to write it."""
    given = MultiDict([(name, value) for name, value in request.args.items(multi=True)
                       if value.strip()])
    try:
        return query_of(shape, given)
    except GatewayError as error:
        if error.param in DATE_PARAMS:
            raise GatewayError(422, "validation_error",
                               f"“{given.get(error.param, '')}” is not a date: write the "
                               f"`{error.param}` day as YYYY-MM-DD, for example "
                               f"{today().isoformat()}",
                               param=error.param) from None
        raise


@dataclass(frozen=True, slots=True)
class Breakdown:
    """One table of the page: the report grouped by `group`, and its CSV link."""

    group: Group
    title: str
    report: UsageReport
    csv: str

    def value(self, row: UsageRow) -> str:
        """The row's group value (the report leaves out the fields it is not grouped by)."""
        found = getattr(row, self.group)
        return found if isinstance(found, str) else ""


async def _key_names(org: str) -> dict[str, str]:
    gw = gateway()
    return {record.key_id: record.name for record in await gw.redis_call(gw.keys.list(org))}


def _csv_link(viewer: Viewer, org: str, start: datetime.date, end: datetime.date,
              group: str) -> str:
    params = {"from": start.isoformat(), "to": end.isoformat(), "group_by": group}
    if viewer.role == "operator":
        params["org"] = org
    return url_for("console.usage_csv") + "?" + urlencode(params)


def _ranges(viewer: Viewer, org: str | None, shown: tuple[datetime.date, datetime.date]
            ) -> list[tuple[str, str, bool]]:
    """Links to the ranges people ask for most (this month, the last 7 and 30 days, last
    month), each with whether it is the range `shown`."""
    end = today()
    last_month_end = end.replace(day=1) - datetime.timedelta(days=1)
    spans = (("This month", end.replace(day=1), end),
             ("Last 7 days", end - datetime.timedelta(days=6), end),
             ("Last 30 days", end - datetime.timedelta(days=29), end),
             ("Last month", last_month_end.replace(day=1), last_month_end))
    links: list[tuple[str, str, bool]] = []
    for title, start, stop in spans:
        params = {"from": start.isoformat(), "to": stop.isoformat()}
        if viewer.role == "operator" and org:
            params["org"] = org
        links.append((title, url_for("console.usage") + "?" + urlencode(params),
                      (start, stop) == shown))
    return links


def _days(report: UsageReport, start: datetime.date, end: datetime.date) -> list[UsageRow]:
    """One row per day of the range (a day without usage has zeros), oldest first."""
    by_day = {row.day: row for row in report.data}
    span = (end - start).days + 1
    days = [(start + datetime.timedelta(days=n)).isoformat() for n in range(span)]
    return [by_day.get(day) or UsageRow(day=day) for day in days]


def _chart(days: list[UsageRow]) -> Markup:
    bars = [(datetime.date.fromisoformat(str(row.day)).strftime("%b %-d"),
             row.prompt_tokens + row.completion_tokens) for row in days]
    return bar_chart(bars, label="Tokens per day", unit="tokens")


@console.get("/usage")
async def usage() -> Response:
    """The Usage page of the org shown (an admin's own; the operator picks)."""
    viewer = await signed_in("admin")
    query = console_query(UsageQuery)
    start, end, _ = checked_range(query)
    org, orgs = await chosen_org(viewer)
    context: dict[str, Any] = {"org": org, "orgs": orgs, "start": start, "end": end,
                               "dollars": dollars, "max_days": MAX_RANGE_DAYS,
                               "ranges": _ranges(viewer, org, (start, end)), "title": "Usage"}
    if org is None:
        return await page("usage.html", viewer, "usage", **context)
    ranged = msgspec.structs.replace(query, from_=start, to=end, org=org)
    by_day = await read_usage(org, msgspec.structs.replace(ranged, group_by="day"))
    breakdowns = [
        Breakdown(group, title,
                  await read_usage(org, msgspec.structs.replace(ranged, group_by=group)),
                  _csv_link(viewer, org, start, end, group))
        for group, title in BREAKDOWNS]
    days = _days(by_day, start, end)
    return await page("usage.html", viewer, "usage", **context, report=by_day,
                      days=[row for row in days if row.requests or row.errors],
                      chart=_chart(days), breakdowns=breakdowns,
                      day_csv=_csv_link(viewer, org, start, end, "day"),
                      key_names=await _key_names(org))


@console.get("/usage.csv")
async def usage_csv() -> Response:
    """The org's usage as CSV, the same body as `/v1/admin/usage.csv` for the same query
    (`from`, `to`, `group_by`; the operator names the `org`)."""
    viewer = await signed_in("admin")
    query = console_query(UsageQuery)
    org, _ = await chosen_org(viewer)
    if org is None:
        raise GatewayError(404, "not_found", "there is no org yet: create a key for one first")
    response = csv_response(await read_usage(org, query))
    secure_headers(response)
    return response
