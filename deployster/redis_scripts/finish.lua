-- finish: end a running job and hand the lock to the next one, in one step.
-- KEYS: lock queue fence queues running dirty events current sigs job feed seq legacy durations notify outbox metrics
-- ARGV: job_prefix project now runner log_prefix now_ms byref_prefix job_id fence status reason exit_code closing nonce batch expect maxlen *chunks
--   (all the KEYS and the first seven ARGV: see queue.lua; runner '' claims
--   nothing) job_id: the job, whose record is KEYS job; fence: the fence its
--   runner got at the claim; status, reason ('' for none), exit_code ('' for
--   none): its end; closing: its last log line ('' when the runner wrote its
--   own); nonce: names this finish, the same for every retry of it; batch,
--   expect, maxlen, chunks: the runner's last batch of output (logstream.py;
--   batch '' for none), appended first, as append.lua would: the job's log is
--   whole when its end is recorded, and the hand-off takes one round trip.
-- Returns {ended (0/1), next job id or '', the next job's record as HGETALL
-- gives it (empty without one)}: its runner starts it without reading it
-- again, a round trip less on every hand-off. A finish from a runner whose fence
-- no longer matches the job (someone else ended it) changes nothing. A retry of
-- a finish whose reply was lost (same nonce) gets the first call's answer again
-- (the job it handed the lock to is kept in the record as 'handed_to'; its
-- record is then read apart), so that job is launched, not stranded.

local st = redis.call('HMGET', K_JOB, 'status', 'fence', 'handed_to', 'finish_nonce')
if st[1] ~= 'running' or st[2] ~= FENCE then
  if st[4] and st[4] == NONCE then return {1, st[3], {}} end
  return {0, '', {}}
end
if BATCH ~= '' then
  local _, added = append_batch(LOG_PREFIX .. JOB_ID, BATCH, EXPECT, MAXLEN, NOW_MS, CHUNKS_FROM)
  count_log_bytes(K_METRICS, added)
end
local extra = nil
if EXIT_CODE ~= '' then extra = {'exit_code', EXIT_CODE} end
end_job(JOB_ID, STATUS, REASON, extra, CLOSING)
lock_release(K_LOCK, JOB_ID)
local nxt = claim() or ''
redis.call('HSET', K_JOB, 'handed_to', nxt, 'finish_nonce', NONCE)
if nxt == '' then return {1, '', {}} end
return {1, nxt, redis.call('HGETALL', JOB_PREFIX .. nxt)}
