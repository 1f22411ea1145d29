-- wait: what a queued job's start estimate is made of (deployster/estimate.py
-- turns it into seconds for a place in the queue). A library.
--
-- A project's recent complete jobs' run times (ms, newest first) are a list,
-- durations:<project>, kept by end_job (queue.lua) and capped at
-- DURATIONS_KEPT. The typical run time is their median (one slow or quick
-- outlier does not move it); the running job's remaining time is that minus
-- how long it has run, never below 0 (an overdue job may end any moment).

local DURATIONS_KEPT = 10

-- {typical_ms, remaining_ms}: typical_ms '' when the project has no history;
-- remaining_ms 0 when no job of the project is running.
-- durations: the project's list; current: its current-job key; job_prefix: a
-- job id after it is its record's key; now_ms: epoch ms.
local function wait_model(durations, current, job_prefix, now_ms)
  local runs = redis.call('LRANGE', durations, 0, DURATIONS_KEPT - 1)
  if #runs == 0 then return {'', 0} end
  local ms = {}
  for i = 1, #runs do ms[i] = tonumber(runs[i]) or 0 end
  table.sort(ms)
  local mid = math.floor((#ms + 1) / 2)
  local typical = ms[mid]
  if #ms % 2 == 0 then typical = math.floor((ms[mid] + ms[mid + 1]) / 2) end
  local remaining = 0
  local id = redis.call('GET', current)
  if id then
    local st = redis.call('HMGET', job_prefix .. id, 'status', 'started_ms')
    if st[1] == 'running' and st[2] then
      remaining = math.max(typical - (tonumber(now_ms) - tonumber(st[2])), 0)
    end
  end
  return {typical, remaining}
end
