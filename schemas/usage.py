"""Usage by dimension: how the worker's finish encodes it, and the report's wire shapes.

Each finished request is counted in its org's hash of the day (`names.usage_day`) under
fields `<metric>:<dimensions>`, the dimensions a JSON array in `DIMENSIONS` order. JSON
makes the encoding unambiguous whatever characters a slug or an identity id holds (the
metric names contain no `:`, so the first `:` splits). Dimensions are only ever appended:
an older field's shorter array reads with "" for the new ones.
"""

from __future__ import annotations

import datetime
from typing import Annotated, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from schemas.pricing import MICRO_USD

DIMENSIONS = ("project", "key", "model", "provider", "identity", "thread", "traffic")
"""What a request is metered by besides its org and day (the hash's key)."""
GROUPS = ("day", *DIMENSIONS)
"""What a report may group by."""
METRICS = ("requests", "prompt_tokens", "completion_tokens", "cost_micro_usd",
           "priced_requests", "errors")
"""What is counted per dimension tuple (`requests`: requests that used tokens)."""
MAX_RANGE_DAYS = 366  # a report reads one hash per day: bound the work of one call

_encode = msgspec.json.Encoder().encode
_dims_decoder = msgspec.json.Decoder(list[str])


def encode_dimensions(project: str, key: str, model: str, provider: str, identity: str,
                      thread: str, traffic: str = "") -> str:
    """The dimension part of a breakdown field (the same bytes for the same request).

    `traffic`: "batch" for a batch line; "" (interactive) is left out, so interactive
    fields keep the bytes they had before batches existed."""
    values = [project, key, model, provider, identity, thread]
    return _encode([*values, traffic] if traffic else values).decode()


def decode_dimensions(encoded: bytes | str) -> tuple[str, ...]:
    """The dimensions of a field, padded with "" for dimensions added since it was written."""
    values = _dims_decoder.decode(encoded)
    return tuple(values[:len(DIMENSIONS)]) + ("",) * (len(DIMENSIONS) - len(values))


def day_expiry(day_start: int, retention_days: int) -> int:
    """The unix time a day's hash expires: `retention_days` after the day ended."""
    return day_start + (retention_days + 1) * 86_400


class UsageQuery(Struct, forbid_unknown_fields=True):
    """`GET /v1/admin/usage` parameters. `from`/`to` are UTC days, both included
    (default: this month so far); `group_by` a comma-separated list of `GROUPS`."""

    from_: datetime.date | None = msgspec.field(default=None, name="from")
    to: datetime.date | None = None
    group_by: Annotated[str, Meta(
        max_length=200, description="comma-separated, any of: " + ", ".join(GROUPS) +
        " (traffic: interactive or batch)")] = ""
    org: Annotated[str, Meta(max_length=256)] | None = None


Group = Literal["day", "project", "key", "model", "provider", "identity", "thread", "traffic"]


class UsageRow(Struct, kw_only=True):
    """One group of a report: the group's fields (only those grouped by), then the sums.

    `requests` counts requests that used tokens (a complete answer, or a stream cut short
    after output began); `errors` every request that ended in an error, with or without
    tokens. `unpriced_requests`: requests on routes without a price (costed at 0).
    """

    day: str | UnsetType = UNSET
    project: str | UnsetType = UNSET
    key: str | UnsetType = UNSET
    model: str | UnsetType = UNSET
    provider: str | UnsetType = UNSET
    identity: str | UnsetType = UNSET
    thread: str | UnsetType = UNSET
    traffic: str | UnsetType = UNSET  # "interactive" or "batch"
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    errors: int = 0
    unpriced_requests: int = 0


class UsageReport(Struct, kw_only=True):
    """The answer of `GET /v1/admin/usage`: groups in order, and the sums over all."""

    org: str
    from_: str = msgspec.field(name="from")
    to: str
    group_by: list[Group]
    data: list[UsageRow]
    totals: UsageRow


class Sums:
    """Running sums of the metrics of one group (micro-dollars until rendered)."""

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts = dict.fromkeys(METRICS, 0)

    def add(self, metric: str, amount: int) -> None:
        if metric in self.counts:  # a metric added by a newer worker is ignored, not fatal
            self.counts[metric] += amount

    def merge(self, other: Sums) -> None:
        for metric, amount in other.counts.items():
            self.counts[metric] += amount

    def row(self, **groups: str) -> UsageRow:
        c = self.counts
        # Exact: an integer of micro-dollars over 1e6 is the nearest float to the decimal.
        return UsageRow(**groups, requests=c["requests"], prompt_tokens=c["prompt_tokens"],
                        completion_tokens=c["completion_tokens"],
                        cost_usd=c["cost_micro_usd"] / MICRO_USD, errors=c["errors"],
                        unpriced_requests=max(c["requests"] - c["priced_requests"], 0))


ROW_FIELDS = ("requests", "prompt_tokens", "completion_tokens", "cost_usd", "errors",
              "unpriced_requests")
"""The sums of a row, in the order of the CSV columns (after the group fields)."""
