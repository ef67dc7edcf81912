"""Rate limits and budgets: what an org, a project or a key may use (each optional).

Stored as JSON in the `limits` field of the org's, the project's and the key's hash
(`names.org`, `names.project`, `names.key_by_hash`), read with the key at authentication
and cached with it. A request falls under the limits of its key, its key's project and
its org; the tightest applies because each is checked (a `Hold` each) and any refuses.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

Scope = Literal["org", "project", "key"]


class LimitSet(Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """`null` (None) means no limit. `rpm` / `tpm`: requests / tokens in any rolling 60 s;
    `max_concurrent`: requests in flight; `monthly_budget_usd`: cost per calendar month (UTC)."""

    rpm: Annotated[int, Meta(ge=0)] | None = None
    tpm: Annotated[int, Meta(ge=0)] | None = None
    max_concurrent: Annotated[int, Meta(ge=0)] | None = None
    monthly_budget_usd: Annotated[float, Meta(ge=0)] | None = None

    def any(self) -> bool:
        """Whether any limit is set."""
        return any(value is not None for value in
                   (self.rpm, self.tpm, self.max_concurrent, self.monthly_budget_usd))


class ScopedLimits(Struct, frozen=True, kw_only=True):
    """The limits of one scope a request falls under: `scope` "org" (id: the org),
    "project" (id: `org/project`) or "key" (id: the key id)."""

    scope: Scope
    id: str
    limits: LimitSet


NO_LIMITS = LimitSet()
limits_encoder = msgspec.json.Encoder()
limits_decoder = msgspec.json.Decoder(LimitSet)


def decode_limits(raw: bytes | None) -> LimitSet:
    """The limits stored in a hash field; none when absent or unreadable (written by a
    newer version, say): a limit this process cannot read is not enforced by it."""
    if not raw:
        return NO_LIMITS
    try:
        return limits_decoder.decode(raw)
    except msgspec.DecodeError:
        return NO_LIMITS
