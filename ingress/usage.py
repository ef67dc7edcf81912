"""The usage report: an org's metered usage over a range of days, grouped by dimension.

One function serves `GET /v1/admin/usage`, its CSV twin and `switchboard usage`: it reads
one breakdown hash per day (`names.usage_day`, in one pipeline) and sums the fields of
each group. Validation of the range and the groups happens here too, so the HTTP and the
command-line callers refuse the same things with the same words.
"""

from __future__ import annotations

import csv
import datetime
import io
from typing import cast

import trio

from schemas import names
from schemas.errors import GatewayError
from schemas.usage import (
    DIMENSIONS,
    GROUPS,
    MAX_RANGE_DAYS,
    ROW_FIELDS,
    Group,
    Sums,
    UsageQuery,
    UsageReport,
    UsageRow,
    decode_dimensions,
)
from workers.connection import RedisClient

DAYS_PER_READ = 7  # day hashes per pipeline: one reply stays small enough to parse at once


def today() -> datetime.date:
    """The current UTC day (usage days are UTC)."""
    return datetime.datetime.now(datetime.UTC).date()


def checked_range(query: UsageQuery) -> tuple[datetime.date, datetime.date, list[Group]]:
    """The days and groups a query asks for: 400 naming the parameter when they make no
    sense (a reversed or too long range, a group that does not exist)."""
    end = query.to or today()
    start = query.from_ or end.replace(day=1)
    if start > end:
        raise GatewayError(400, "invalid_parameter",
                           f"`from` ({start}) is after `to` ({end})", param="from")
    if (end - start).days + 1 > MAX_RANGE_DAYS:
        raise GatewayError(400, "invalid_parameter",
                           f"the range from {start} to {end} is over {MAX_RANGE_DAYS} days; "
                           "ask for it in parts", param="to",
                           details={"max_days": MAX_RANGE_DAYS})
    groups = [word.strip() for word in query.group_by.split(",") if word.strip()]
    for word in groups:
        if word not in GROUPS:
            raise GatewayError(400, "invalid_parameter",
                               f"cannot group by {word!r}; use any of {', '.join(GROUPS)}",
                               param="group_by", details={"allowed": list(GROUPS)})
    if len(set(groups)) != len(groups):
        raise GatewayError(400, "invalid_parameter", "`group_by` names a group twice",
                           param="group_by")
    return start, end, cast(list[Group], groups)


async def usage_report(redis: RedisClient, org: str, query: UsageQuery,
                       timeout_s: float = 30.0) -> UsageReport:
    """The org's usage from `query.from_` to `query.to` (UTC days, both included), one row
    per group in ascending order, and the totals.

    Days are read a week per pipeline and summed one at a time between checkpoints, so a
    big report never holds the event loop for long (an ingress relays streams meanwhile);
    each pipeline has `timeout_s`. Raises GatewayError (400) for a bad range or group.
    """
    start, end, groups = checked_range(query)
    days = [start + datetime.timedelta(days=n) for n in range((end - start).days + 1)]
    sums: dict[tuple[str, ...], Sums] = {}
    for first in range(0, len(days), DAYS_PER_READ):
        week = days[first:first + DAYS_PER_READ]
        with trio.fail_after(timeout_s):
            async with redis.pipeline(transaction=False) as pipe:
                pending = [pipe.hgetall(names.usage_day(org, day.isoformat())) for day in week]
            replies = [await reply for reply in pending]
        for day, reply in zip(week, replies, strict=True):
            _add_day(sums, groups, day.isoformat(), reply)
            await trio.lowlevel.checkpoint()
    totals = Sums()
    rows: list[UsageRow] = []
    for group in sorted(sums):
        totals.merge(sums[group])
        rows.append(sums[group].row(**dict(zip(groups, group, strict=True))))
    return UsageReport(org=org, from_=start.isoformat(), to=end.isoformat(), group_by=groups,
                       data=rows, totals=totals.row())


def _add_day(sums: dict[tuple[str, ...], Sums], groups: list[Group], day: str,
             fields: dict[bytes, bytes]) -> None:
    """Add one day's hash to the groups' sums. Each tuple's metrics are summed first, so
    its dimensions are decoded once per day, not once per field."""
    per_tuple: dict[bytes, dict[bytes, int]] = {}
    for raw_field, raw_amount in fields.items():
        metric, _, encoded = raw_field.partition(b":")
        counts = per_tuple.setdefault(encoded, {})
        counts[metric] = counts.get(metric, 0) + int(raw_amount)
    for encoded, counts in per_tuple.items():
        values = dict(zip(DIMENSIONS, decode_dimensions(encoded), strict=True), day=day)
        values["traffic"] = values["traffic"] or "interactive"  # batch lines say "batch"
        total = sums.setdefault(tuple(values[name] for name in groups), Sums())
        for metric, amount in counts.items():
            total.add(metric.decode(), amount)


def report_csv(report: UsageReport) -> str:
    """The report's rows as CSV: a header line, the group fields, then the sums
    (`cost_usd` with 6 decimals, exactly the micro-dollars metered). A group value a
    spreadsheet would run as a formula (an identity id is the client's text) starts with `'`."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*report.group_by, *ROW_FIELDS])
    for row in report.data:
        writer.writerow([*(_cell(getattr(row, name)) for name in report.group_by),
                         *(f"{row.cost_usd:.6f}" if name == "cost_usd" else getattr(row, name)
                           for name in ROW_FIELDS)])
    return out.getvalue()


def _cell(value: str) -> str:
    """OWASP's defence against CSV formula injection: `=`, `+`, `-`, `@`, tab and carriage
    return first make a spreadsheet evaluate the cell, so such a value is quoted with `'`."""
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def month_range(month: str) -> UsageQuery:
    """The query for one calendar month (`YYYY-MM`), this one up to today."""
    first = datetime.date.fromisoformat(month + "-01")
    following = (first + datetime.timedelta(days=32)).replace(day=1)
    return UsageQuery(from_=first, to=min(following - datetime.timedelta(days=1),
                                          max(today(), first)))

