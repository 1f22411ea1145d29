-- metrics_read: what GET /metrics shows (deployster/metrics.py), read in one
-- step for a batch of projects: their counters, locks, queues and running
-- jobs, and with server_wide the server-wide counters and the runners too. No
-- read grows with the history: a project costs a fixed handful of commands.
-- KEYS: metrics deliveries runners nodes *projects
-- ARGV: job_prefix runner_prefix since_ms server_wide
--   metrics: the server-wide counters; deliveries: notification attempts by
--   kind and outcome; runners: runner id -> announcement expiry; nodes: node name -> its
--   last announcement (deployster/fleet.py); projects: four keys per
--   project, its lock, queue, current (the job that claimed the lock last)
--   and counters. job_prefix, runner_prefix: a job id after the first is its
--   record's key, a runner id after the second its announcement's; since_ms:
--   runners listed with an expiry before it are not read; server_wide: '1' to
--   read metrics, deliveries, runners and nodes, else '0'.
-- Returns, as one JSON text (one string to parse, not thousands of RESP
-- items: at 500 projects that parse was most of a scrape's cost),
-- [metrics, deliveries, runners, nodes, project...]: metrics, deliveries and nodes
-- as HGETALL (flat), runners as [id, announcement or false, ...] (false each
-- when not server_wide); then per project [lock holder or false, lock TTL ms (-2 when
-- free), queue length, head job id or false, current job's status or false,
-- its started_ms or false, the holder's started_ms or false, counters (flat)].
-- An empty list comes out as {} (cjson cannot tell it from an empty object).

local out = {false, false, false, false}
if SERVER_WIDE == '1' then
  out[1] = redis.call('HGETALL', K_METRICS)
  out[2] = redis.call('HGETALL', K_DELIVERIES)
  local runners = {}
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', K_RUNNERS, SINCE_MS, '+inf')) do
    runners[#runners + 1] = id
    runners[#runners + 1] = redis.call('GET', RUNNER_PREFIX .. id)
  end
  out[3] = runners
  out[4] = redis.call('HGETALL', K_NODES)
end
for i = K_PROJECTS_FROM, #KEYS, 4 do
  local lock, queue, current, counters = KEYS[i], KEYS[i + 1], KEYS[i + 2], KEYS[i + 3]
  local holder = lock_holder(lock)
  local cur = redis.call('GET', current)
  local cur_state = {false, false}
  if cur then cur_state = redis.call('HMGET', JOB_PREFIX .. cur, 'status', 'started_ms') end
  local holder_started = false
  if holder then
    if holder == cur then
      holder_started = cur_state[2]
    else
      holder_started = redis.call('HGET', JOB_PREFIX .. holder, 'started_ms')
    end
  end
  out[#out + 1] = {holder, lock_ttl(lock), redis.call('ZCARD', queue),
                   redis.call('ZRANGE', queue, 0, 0)[1] or false, cur_state[1], cur_state[2],
                   holder_started, redis.call('HGETALL', counters)}
end
return cjson.encode(out)
