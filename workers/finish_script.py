"""The finish step's script: a job's outcome, metering, acknowledgement, the settling of
its reservation and its provider's health, as one Lua call (`Queue.finish` builds its
keys and arguments).

One script, so a crash cannot leave a job acknowledged without its outcome, or answered
but unmetered (DESIGN.md invariant 3), and one command on the hot path, not a MULTI.
"""

from __future__ import annotations

from schemas.reservations import RELEASE_LUA
from workers.health import HEALTHY_LUA

# Publish the outcome (or move the job to its next route), meter, acknowledge: one step.
# Returns {1, cool-down event, failures} (`provider_ok`'s, when ARGV[23] = '1' records the
# attempt's success), or {0, 0, 0} when this consumer no longer owned the entry (then
# nothing happened).
_FINISH = """
-- Ownership guard: finish only an entry this consumer (ARGV[10]) still owns. When another
-- worker reclaimed it (we were presumed dead, or frozen), that worker answers, meters and
-- acknowledges it; our late outcome must not be published, forwarded or metered again.
local owner = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #owner == 0 or owner[1][2] ~= ARGV[10] then
  return {0, 0, 0}
end
if ARGV[3] == 'publish' then
  -- Outcome retention: when the SPUBLISH reached nobody (the ingress was re-subscribing),
  -- keep the frame for ARGV[11] ms; the ingress reads it back once subscribed again. On a
  -- cluster the reply channel's slot is this script's (names.py's hash tag), so the count
  -- is that of the one shard whose subscribers it reaches.
  if redis.call('SPUBLISH', ARGV[4], ARGV[5]) == 0 then
    redis.call('SET', KEYS[6], ARGV[5], 'PX', ARGV[11])
  end
elseif ARGV[3] == 'forward' then
  redis.call('XADD', KEYS[3], '*', 'j', ARGV[5])
elseif redis.call('EXISTS', KEYS[11]) == 0 then
  -- A batch line whose batch is gone (its record expired): nothing to write it to.
elseif ARGV[3] == 'line' then
  -- A batch line's outcome (KEYS[11] its batch, KEYS[12] its output or error hash): written
  -- once per line index (ARGV[19]); the counters move only when this write was the first.
  if redis.call('HSETNX', KEYS[12], ARGV[19], ARGV[5]) == 1 then
    redis.call('EXPIRE', KEYS[12], ARGV[22])
    redis.call('HINCRBY', KEYS[11], 'queued', -1)
    if ARGV[18] ~= '' then redis.call('HINCRBY', KEYS[11], ARGV[18], 1) end
  end
elseif ARGV[3] == 'retry' then
  -- A batch line to run again later (KEYS[12] the retry set, due at ARGV[21]): still queued.
  redis.call('ZADD', KEYS[12], ARGV[21], ARGV[5])
elseif ARGV[3] == 'drop' then
  redis.call('HINCRBY', KEYS[11], 'queued', -1)  -- its batch was cancelled: no line
end
-- Meter a request that used tokens (ARGV[9] requests = 1) into the monthly counters of its
-- org (KEYS[2]), key (KEYS[9]) and, when it has one (ARGV[17]), project (KEYS[8]): the
-- same fields in each, since plans and budgets read them.
local function meter(key)
  redis.call('HINCRBY', key, 'tokens', ARGV[6])
  redis.call('HINCRBY', key, 'prompt_tokens', ARGV[7])
  redis.call('HINCRBY', key, 'completion_tokens', ARGV[8])
  redis.call('HINCRBY', key, 'requests', ARGV[9])
  -- Cost in integer micro-dollars (HINCRBY takes integers only), and the requests that had
  -- a price (the others are "unpriced"); neither field is written for unpriced requests.
  if tonumber(ARGV[12]) > 0 then
    redis.call('HINCRBY', key, 'cost_micro_usd', ARGV[12])
  end
  if tonumber(ARGV[13]) > 0 then
    redis.call('HINCRBY', key, 'priced_requests', ARGV[13])
  end
end
if tonumber(ARGV[9]) > 0 then
  meter(KEYS[2])
  meter(KEYS[9])
  if ARGV[17] == '1' then meter(KEYS[8]) end
end
-- The day's breakdown (KEYS[10], names.usage_day): every metric of this request under
-- `<metric>:<dimensions>` (ARGV[15]), errors (ARGV[14]) included, so a failure without
-- tokens counts too; zeros are not written. Expires at ARGV[16] (the retention).
if tonumber(ARGV[9]) > 0 or tonumber(ARGV[14]) > 0 then
  local counts = {requests = ARGV[9], prompt_tokens = ARGV[7], completion_tokens = ARGV[8],
                  cost_micro_usd = ARGV[12], priced_requests = ARGV[13], errors = ARGV[14]}
  for metric, amount in pairs(counts) do
    if tonumber(amount) > 0 then
      redis.call('HINCRBY', KEYS[10], metric .. ':' .. ARGV[15], amount)
    end
  end
  redis.call('EXPIREAT', KEYS[10], ARGV[16])
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
-- A finished job is never reclaimed: its output-began mark (names.began) can go.
redis.call('UNLINK', KEYS[7])
-- Settle the request's reservation (schemas/reservations.py) now that its usage is
-- metered (tokens-per-minute windows get its real tokens, ARGV[6], for their estimate); a
-- job moving to its next route keeps it until it ends there.
if ARGV[3] ~= 'forward' then release(KEYS[4], KEYS[5], ARGV[6]) end
-- The provider answered (KEYS[13..15] its health): this step is its success's record.
if ARGV[23] == '1' then
  local health = provider_ok(KEYS[13], KEYS[14], KEYS[15])
  return {1, health[1], health[2]}
end
return {1, 0, 0}
"""
# Defines release() and provider_ok(), which the settle and health blocks call.
FINISH_LUA = RELEASE_LUA + HEALTHY_LUA + _FINISH
# How long an outcome nobody heard is kept for the ingress to read back: longer than a
# re-subscription takes, short enough that unclaimed bodies do not pile up in memory.
OUTCOME_KEEP_MS = 10_000
USAGE_FIELDS = ("tokens", "prompt_tokens", "completion_tokens", "requests")  # ARGV[6..9]
COST_FIELDS = ("cost_micro_usd", "priced_requests")  # ARGV[12], ARGV[13]
