-- notify_expand: turn one outbox event into its deliveries, once.
-- KEYS: outbox due
-- ARGV: entry now_ms lane_prefix delivery_prefix *deliveries
--   outbox: the events stream (see outbox.lua); due: lane -> when its head is
--   tried next (epoch ms); entry: the event's stream id; now_ms: epoch ms;
--   lane_prefix, delivery_prefix: a lane id, a delivery id after them is its
--   list's, its hash's key; deliveries: triples (lane id, delivery id, the
--   delivery's fields as one JSON object), in the order they must be sent.
-- Returns 1, or 0 when the event was no longer in the stream (another
-- deliverer expanded it first: nothing is added twice).
-- A delivery joins the tail of its lane (one target, one job): a lane sends
-- its head only, so a job's later event never overtakes an earlier one still
-- being retried. A lane that was idle is due now; one already waiting keeps
-- its time (its head's backoff).

if redis.call('XDEL', K_OUTBOX, ENTRY) == 0 then return 0 end
for i = DELIVERIES_FROM, #ARGV, 3 do
  local lane, id = ARGV[i], ARGV[i + 1]
  local fields = {}
  for k, v in pairs(cjson.decode(ARGV[i + 2])) do
    fields[#fields + 1] = k
    fields[#fields + 1] = v
  end
  redis.call('HSET', DELIVERY_PREFIX .. id, unpack(fields))
  redis.call('RPUSH', LANE_PREFIX .. lane, id)
  redis.call('ZADD', K_DUE, 'NX', NOW_MS, lane)
end
return 1
