-- notify_claim: take up to ``max`` lanes whose head is due, for ``lease_ms``.
-- KEYS: due
-- ARGV: now_ms lease_ms max lane_prefix delivery_prefix
--   due: lane -> when its head is tried next (epoch ms); lease_ms: how long
--   the taker has to settle the attempt before the lane is due again (a
--   deliverer killed mid-attempt: another, or its restart, tries again);
--   lane_prefix, delivery_prefix: see notify_expand.lua.
-- Returns {lane, delivery id, the delivery's fields as HGETALL gives them}
-- for each lane taken. Several deliverers on one Redis never take a lane at
-- the same time: the lease moves its time past now in the same step.

local taken = {}
local lease_until = tonumber(NOW_MS) + tonumber(LEASE_MS)
for _, lane in ipairs(redis.call('ZRANGEBYSCORE', K_DUE, '-inf', NOW_MS, 'LIMIT', 0, MAX)) do
  local head = redis.call('LINDEX', LANE_PREFIX .. lane, 0)
  if head then
    redis.call('ZADD', K_DUE, lease_until, lane)
    taken[#taken + 1] = {lane, head, redis.call('HGETALL', DELIVERY_PREFIX .. head)}
  else
    redis.call('ZREM', K_DUE, lane)
  end
end
return taken
