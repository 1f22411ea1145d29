-- notify_settle: after an attempt at a lane's head: done (sent, or given up),
-- or to be tried again at ``next_ms``.
-- KEYS: due counts
-- ARGV: lane delivery next_ms now_ms counted lane_prefix delivery_prefix
--   due, lane_prefix, delivery_prefix: see notify_expand.lua; counts: the
--   deliveries' counters of GET /metrics (deployster/metrics.py); delivery:
--   the head that was tried; next_ms: epoch ms of its next attempt, '' when it
--   is done (it leaves the lane, and the next one is due now); counted: the
--   counter this attempt adds one to ('<kind>:delivered' or '<kind>:failed'),
--   '' for none. Counted here, with the settle, so an attempt counts once.
-- Returns 1, or 0 when ``delivery`` is no longer the lane's head (a deliverer
-- whose lease ran out while it was sending: the one that took the lane over
-- settles it).
-- The delivery keeps its tries and the epoch ms its first attempt ended
-- ('first': what the retry window counts from).

local lane_key = LANE_PREFIX .. LANE
if redis.call('LINDEX', lane_key, 0) ~= DELIVERY then return 0 end
if COUNTED ~= '' then redis.call('HINCRBY', K_COUNTS, COUNTED, 1) end
local delivery_key = DELIVERY_PREFIX .. DELIVERY
if NEXT_MS == '' then
  redis.call('LPOP', lane_key)
  redis.call('DEL', delivery_key)
  if redis.call('LLEN', lane_key) > 0 then
    redis.call('ZADD', K_DUE, NOW_MS, LANE)
  else
    redis.call('ZREM', K_DUE, LANE)
  end
else
  redis.call('HINCRBY', delivery_key, 'tries', 1)
  redis.call('HSETNX', delivery_key, 'first', NOW_MS)
  redis.call('ZADD', K_DUE, NEXT_MS, LANE)
end
return 1
