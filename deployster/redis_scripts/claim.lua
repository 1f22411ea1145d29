-- claim: start the next queued job of a project if its lock is free.
-- KEYS: lock queue fence queues running dirty events current sigs job feed seq legacy durations notify outbox metrics
-- ARGV: job_prefix project now runner log_prefix now_ms byref_prefix
--   (see queue.lua; job is a placeholder, runner the claiming dispatcher)
-- Returns the job claimed (its runner must run it), else ''.
-- A claim whose reply was lost left its job running but never launched: the
-- retry finds the lock held by a job of the same runner and answers that job
-- again (the dispatcher launches a job once however often it hears of it).

local holder = lock_holder(K_LOCK)
if holder and RUNNER ~= '' then
  local st = redis.call('HMGET', JOB_PREFIX .. holder, 'status', 'runner')
  if st[1] == 'running' and st[2] == RUNNER then return holder end
end
return claim() or ''
