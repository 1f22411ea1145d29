-- enqueue: store a job at the tail of its project's queue; with a runner, claim
-- the head of the queue in the same step if the lock is free.
-- KEYS: lock queue fence queues running dirty events current sigs job feed seq legacy durations notify outbox metrics
-- ARGV: job_prefix project now runner log_prefix now_ms byref_prefix job_id policy signature fields cap
--   (all the KEYS and the first seven ARGV: see queue.lua) job_id: the new job,
--   whose record is KEYS job; policy: the project's queue policy ('fifo',
--   'supersede'); signature: the request's identity (models.Job.signature);
--   fields: the job's fields as one JSON object (one argument to encode
--   instead of ~40: a third of a request's cost); cap: the queue cap (0: none).
-- Returns {started id or '', position, job id answering the request}; position
-- -1 (and no job id) when the queue is full and nothing was stored.

queue_upgrade()  -- an older server's list, before any position is read
local cap = tonumber(CAP)
-- A retry of a call whose reply was lost (the job id is the request's own):
-- answer what the first call did and change nothing. Without this the retry
-- stored the job again as queued behind its own claim of the lock.
local seen = redis.call('HMGET', K_JOB, 'status', 'runner')
if seen[1] then
  if seen[1] == 'queued' then
    local at = redis.call('ZRANK', K_QUEUE, JOB_ID)
    return {'', at and at + 1 or 0, JOB_ID}
  end
  if seen[1] == 'running' and seen[2] == RUNNER then return {JOB_ID, 0, JOB_ID} end
  return {'', 0, JOB_ID}
end
-- An identical request (same commit, ref, commands) still queued: that job answers.
local same = redis.call('HGET', K_SIGS, SIGNATURE)
if same and redis.call('HGET', JOB_PREFIX .. same, 'status') == 'queued' then
  local pos = redis.call('ZRANK', K_QUEUE, same)
  if pos then return {'', pos + 1, same} end
end
if cap > 0 and redis.call('ZCARD', K_QUEUE) >= cap then return {'', -1, ''} end
local fields = {}
for k, v in pairs(cjson.decode(FIELDS)) do
  fields[#fields + 1] = k
  fields[#fields + 1] = v
end
redis.call('HSET', K_JOB, unpack(fields))
local ref = redis.call('HGET', K_JOB, 'ref_name')
if POLICY == 'supersede' then
  -- Older still-queued requests for the same ref are replaced by this one:
  -- the ref's own set, never a scan of the queue (end_job takes each out of
  -- the queue and the set; an id there no longer queued just leaves).
  for _, qid in ipairs(redis.call('SMEMBERS', byref(ref))) do
    if redis.call('HGET', JOB_PREFIX .. qid, 'status') == 'queued' then
      end_job(qid, 'failed', 'superseded', {'superseded_by', JOB_ID},
              'job superseded by ' .. JOB_ID .. ' before it started')
    else
      queue_remove(qid, ref)
    end
  end
end
queue_push(JOB_ID, ref)
redis.call('HSET', K_SIGS, SIGNATURE, JOB_ID)
redis.call('SADD', K_QUEUES, PROJECT)
-- Not marked dirty: history takes a job when it starts or ends (Redis, with its
-- AOF, holds the queue; writing every queued request to SQL too doubled the
-- cost of a deploy request).
-- When this script tries the claim itself (RUNNER set), dispatchers need not.
publish('enqueued', JOB_ID, nil, RUNNER ~= '')
local claimed = claim()
-- The job was pushed last and a claim pops from the head: unless it was the one
-- claimed, its place is the queue's length. Only a job that waits is 'queued'
-- in the outbox; one claimed here is 'started' there (claim wrote it).
local pos = 0
if claimed ~= JOB_ID then
  pos = redis.call('ZCARD', K_QUEUE)
  outbox_add('queued', JOB_ID)
end
return {claimed or '', pos, JOB_ID}
