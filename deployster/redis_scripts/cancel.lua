-- cancel: a queued job leaves the queue and ends at once; a running one is
-- flagged (its watchdog sees the flag within a second) and its runner told.
-- KEYS: lock queue fence queues running dirty events current sigs job feed seq legacy durations notify outbox metrics
-- ARGV: job_prefix project now runner log_prefix now_ms byref_prefix job_id nonce
--   (all the KEYS and the first seven ARGV: see queue.lua) job_id: the job, whose
--   record is KEYS job; nonce: names this request, the same for every retry.
-- Returns the job's status before ('' when unknown); a retry with the same
-- nonce (its reply was lost) gets the first answer again, not "already finished".

local st = redis.call('HMGET', K_JOB, 'status', 'cancel_nonce', 'cancel_before')
local status = st[1]
if not status then return '' end
if st[2] == NONCE then return st[3] end
if status == 'queued' or status == 'running' then
  redis.call('HSET', K_JOB, 'cancel_nonce', NONCE, 'cancel_before', status)
end
if status == 'queued' then
  -- end_job takes it out of the queue (and its ref's set).
  end_job(JOB_ID, 'failed', 'cancelled', nil, 'job cancelled while queued')
elseif status == 'running' then
  redis.call('HSET', K_JOB, 'cancel_requested', '1')
  publish('cancel', JOB_ID, {runner=redis.call('HGET', K_JOB, 'runner')})
end
return status
