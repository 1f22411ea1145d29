-- metrics: the counters GET /metrics reads (deployster/metrics.py), kept in
-- Redis by the scripts that make the change they count, in the same step: so
-- every server process reports the same totals, and a restart loses none.
-- A library; each function takes the project's counters hash (KEYS metrics of
-- the queue scripts, see queue.lua) and adds at most two HINCRBYs to its caller.
--
-- Fields of deployster:metrics:<project>:
--   ended:<status>:<reason>:<bucket>  jobs ended so; <bucket> the upper bound,
--       in ms, of the duration bucket of a job that ran ('inf' past the last),
--       '-' for one that never started (cancelled or superseded while queued)
--   duration_ms:<status>  the summed durations (ms) of the jobs that ran
--   log_bytes             bytes appended to its jobs' logs (append.lua)

-- The duration buckets' upper bounds, ms: metrics.DURATION_BUCKETS (seconds)
-- in deployster/metrics.py, which tests/test_metrics.py keeps equal.
local DURATION_BOUNDS_MS = {1000, 2500, 5000, 10000, 30000, 60000, 120000, 300000,
                            600000, 1200000, 1800000, 3600000}

-- Count a job's end: ``started_ms`` its claim's time (nil: it never ran),
-- ``now_ms`` the end's; ``reason`` '' for none.
local function count_end(key, started_ms, now_ms, status, reason)
  local bucket = '-'
  local started = tonumber(started_ms)
  if started then
    local ms = math.max(0, tonumber(now_ms) - started)
    bucket = 'inf'
    for _, bound in ipairs(DURATION_BOUNDS_MS) do
      if ms <= bound then
        bucket = bound
        break
      end
    end
    redis.call('HINCRBY', key, 'duration_ms:' .. status, ms)
  end
  redis.call('HINCRBY', key, 'ended:' .. status .. ':' .. reason .. ':' .. bucket, 1)
end

-- Count ``n`` bytes appended to a log of the project whose counters are ``key``.
local function count_log_bytes(key, n)
  if n > 0 then redis.call('HINCRBY', key, 'log_bytes', n) end
end
