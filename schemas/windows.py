"""Rolling 60 s windows (requests or tokens per minute), as Lua functions for scripts.

A window is a hash {unix second: amount} (`names.window`): what was admitted in each
second. Its level is the sum of the buckets of the last `WINDOW_S` + 1 seconds, so an
amount counts for 60 to 61 s after it was admitted: never more than a limit in ANY
rolling 60 s (a fixed minute would allow twice the limit around its turn), at the cost
of refusing up to 1 s early. Older buckets are deleted whenever the window is read, and
the hash expires when its newest bucket leaves the window, so an idle scope leaves nothing.

The functions take the time from the caller (Redis's own `TIME` in production: one clock
for every ingress, so replicas cannot disagree about what has aged out). Any script
may include `WINDOW_LUA`: admission checks and adds, the reservation release settles
(`schemas/reservations.py`), and per-provider limits can reuse the same primitive.

    window_level(key, sec)           -> level, buckets {{second, amount}, ...}
    window_add(key, sec, amount)     add to the bucket of second `sec`
    window_settle(key, bucket, delta)  correct a bucket (an estimate replaced by the real
                                       amount), only while it is still counted
    window_room_ms(buckets, level, amount, limit, now_ms)
                                     ms until `amount` fits under `limit` (-1: never)
    window_empty_ms(buckets, now_ms) ms until every bucket has left the window
"""

from __future__ import annotations

WINDOW_S = 60  # seconds in a window; buckets of WINDOW_S + 1 seconds are counted

WINDOW_LUA = f"local WINDOW_S = {WINDOW_S}\n" + """
local function window_level(key, sec)
  local raw = redis.call('HGETALL', key)
  local level, buckets, old = 0, {}, {}
  for i = 1, #raw, 2 do
    local b = tonumber(raw[i])
    if b < sec - WINDOW_S then
      table.insert(old, raw[i])
    else
      local amount = tonumber(raw[i + 1])
      level = level + amount
      table.insert(buckets, {b, amount})
    end
  end
  if #old > 0 then redis.call('HDEL', key, unpack(old)) end
  table.sort(buckets, function(x, y) return x[1] < y[1] end)
  return level, buckets
end
local function window_add(key, sec, amount)
  if amount > 0 then redis.call('HINCRBY', key, sec, amount) end
  -- Kept while its newest bucket counts (a bucket of second b counts until b + WINDOW_S + 1).
  if redis.call('EXISTS', key) == 1 then redis.call('EXPIREAT', key, sec + WINDOW_S + 2) end
end
local function window_settle(key, bucket, delta)
  if delta == 0 or redis.call('HEXISTS', key, bucket) == 0 then return end
  if redis.call('HINCRBY', key, bucket, delta) <= 0 then redis.call('HDEL', key, bucket) end
end
local function window_room_ms(buckets, level, amount, limit, now_ms)
  if amount > limit or limit <= 0 then return -1 end
  local need = level + amount - limit
  if need <= 0 and level < limit then return 0 end
  local freed = 0
  for _, bucket in ipairs(buckets) do
    freed = freed + bucket[2]
    if freed >= need and level - freed < limit then
      return math.max((bucket[1] + WINDOW_S + 1) * 1000 - now_ms, 1)
    end
  end
  return -1
end
local function window_empty_ms(buckets, now_ms)
  if #buckets == 0 then return 0 end
  return math.max((buckets[#buckets][1] + WINDOW_S + 1) * 1000 - now_ms, 0)
end
"""
