-- status_read: the whole /status read, in one round trip. A job's status, the
-- output since its cursor and, while queued, its place in the queue, read
-- together, and the cursor moved past that output (see jobs.py).
-- KEYS: job log
-- ARGV: nonce job_id queue_prefix project
--   job: the job's record (holds the cursor); log: its stream; nonce: names
--   this read, the same for every retry of it; job_id: the job; queue_prefix: a project id
--   after it is that project's queue key; project: the only project whose
--   jobs the caller may see ('' for any: the admin token).
-- Returns false when the job is unknown, 0 when it is another project's (the
-- cursor untouched: its owner's reads lose nothing), else {status, reason,
-- text, superseded_by, position}: position 1-based while queued, else 0. A
-- retry of a read whose reply was lost (same nonce) starts again where that
-- read started: the client never saw those lines, so they are neither lost
-- nor, later, repeated.

local st = redis.call('HMGET', K_JOB, 'status', 'reason', 'cursor', 'superseded_by',
                      'cursor_nonce', 'cursor_before', 'project_id')
if not st[1] then return false end
if PROJECT ~= '' and st[7] ~= PROJECT then return 0 end
local from = st[3] or '0-0'
if st[5] == NONCE then from = st[6] or '0-0' end
local entries = redis.call('XRANGE', K_LOG, '(' .. from, '+')
local parts = {}
local last = from
for i = 1, #entries do
  last = entries[i][1]
  local f = entries[i][2]
  for j = 1, #f, 2 do
    if f[j] == 'd' then parts[#parts + 1] = f[j + 1] end
  end
end
if last ~= (st[3] or '0-0') then
  redis.call('HSET', K_JOB, 'cursor', last, 'cursor_nonce', NONCE, 'cursor_before', from)
end
local position = 0
if st[1] == 'queued' and st[7] then
  position = (redis.call('ZRANK', QUEUE_PREFIX .. st[7], JOB_ID) or -1) + 1
end
return {st[1], st[2] or '', table.concat(parts), st[4] or '', position}
