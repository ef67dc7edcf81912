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

from schemas import names
from schemas.windows import WINDOW_LUA

# A Lua function `release(record_key, due_key, real)`: 1 if it released the record, 0 if it
# was already gone. Counters that fall to zero are deleted so an idle org leaves no keys.
# A window's field in the record is `<window key>|<bucket second>` (window keys start with
# `names.WINDOW_PREFIX`): its estimate is replaced by `real` (the request's real tokens,
# from the worker's finish) or taken out (nil: withdrawn, failed before any use, swept).
RELEASE_LUA = WINDOW_LUA + f"local WINDOW_PREFIX = '{names.WINDOW_PREFIX}'\n" + """
local function release(record, due, real)
  local held = redis.call('HGETALL', record)
  redis.call('ZREM', due, record)
  if #held == 0 then return 0 end
  redis.call('DEL', record)
  for i = 1, #held, 2 do
    local counter, amount = held[i], tonumber(held[i + 1])
    if string.sub(counter, 1, #WINDOW_PREFIX) == WINDOW_PREFIX then
      local window, bucket = string.match(counter, '^(.*)|(%d+)$')
      window_settle(window, bucket, (tonumber(real) or 0) - amount)
    elseif redis.call('DECRBY', counter, amount) <= 0 then
      redis.call('DEL', counter)
    end
  end
  return 1
end
"""


class Hold(Struct, frozen=True, kw_only=True):
    """One limit a request falls under, as admission checks and reserves it.

    Admitted only while `counter` (plus field `used_field` of the hash `used`, the
    metered usage, if given) is below `limit` and, with `fit`, while this request's own
    `amount` fits under it too; then `amount` is added to `counter`. A refusal names
    `code`, the error the client gets.

    `window`: `counter` is a rolling 60 s window (`schemas/windows.py`), not a plain
    counter; with `kept` its amount is never given back (requests per minute: a request
    counts once admitted), else the release replaces it with the real tokens. `scope`,
    `owner` and `name` say whose limit it is ("key", the key id, "rpm") for refusals
    and the x-ratelimit headers; the monthly plan and the queue share leave them empty.
    """

    counter: str
    amount: int
    limit: int
    code: str
    used: str = ""
    used_field: str = ""
    fit: bool = False
    window: bool = False
    kept: bool = False
    scope: str = ""
    owner: str = ""
    name: str = ""
