"""Reservations: what admission holds for a request until it ends (invariant 9).

A request is admitted only if every limit it falls under has room; admission then adds
the request's estimate to one counter per limit (a `Hold`) and records the list of
counters it incremented under `names.reservation(request_id)`. When the job ends (the
worker's finish), fails, or is withdrawn, that record is deleted and the counters are
decremented by what it says: the deleter alone decrements, so settlement happens once
whoever gets there first. Real usage is metered separately (the usage hash), so a limit
sees `used + held` and overshoot is bounded by the estimates of requests in flight.

Records are also listed in `names.RESERVATIONS_DUE` by expiry time: admission sweeps the
expired ones, so a reservation whose every owner died does not hold a limit forever.

Both sides run `RELEASE_LUA` inside their own scripts (the ingress to withdraw and sweep,
the worker to settle), so the rule "delete, then decrement" is written once.
"""

from __future__ import annotations

from msgspec import Struct

# A Lua function `release(record_key, due_key)`: 1 if it released the record, 0 if it was
# already gone. Counters that fall to zero are deleted so an idle org leaves no keys.
RELEASE_LUA = """
local function release(record, due)
  local held = redis.call('HGETALL', record)
  redis.call('ZREM', due, record)
  if #held == 0 then return 0 end
  redis.call('DEL', record)
  for i = 1, #held, 2 do
    if redis.call('DECRBY', held[i], held[i + 1]) <= 0 then redis.call('DEL', held[i]) end
  end
  return 1
end
"""


class Hold(Struct, frozen=True, kw_only=True):
    """One limit a request falls under, as admission checks and reserves it.

    Admitted only while `counter` (plus field `used_field` of the hash `used`, the
    metered usage, if given) is below `limit`; then `amount` is added to `counter`. A
    refusal names `code`, the error the client gets. Rate limits and budgets (per org,
    project or key) are further Holds on their own counters.
    """

    counter: str
    amount: int
    limit: int
    code: str
    used: str = ""
    used_field: str = ""
