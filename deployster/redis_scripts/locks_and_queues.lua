-- locks_and_queues: every project's lock holder, its TTL and queue length in
-- one round trip, for the dashboard (see overview.py): one command, not three
-- per project (with hundreds of projects the client-side cost of a pipeline
-- dominates a refresh).
-- KEYS: *locks_then_queues
-- ARGV: (none)
--   n lock keys, then the same n projects' queue keys.
-- Returns {holder or false, TTL ms, queue length} for each project, flat.

local n = #KEYS / 2
local out = {}
for i = 1, n do
  out[#out + 1] = lock_holder(KEYS[i])
  out[#out + 1] = lock_ttl(KEYS[i])
  out[#out + 1] = redis.call('ZCARD', KEYS[n + i])
end
return out
