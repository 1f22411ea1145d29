-- status_read: the /status read. A job's status and the output since its
-- cursor, read together, and the cursor moved past them (see jobs.py).
-- KEYS: job log
-- ARGV: nonce
--   job: the job's record (holds the cursor); log: its stream; nonce: names
--   this read, the same for every retry of it.
-- Returns false when the job is unknown, else {status, reason, text,
-- superseded_by}. A retry of a read whose reply was lost (same nonce) starts
-- again where that read started: the client never saw those lines, so they
-- are neither lost nor, later, repeated.

local st = redis.call('HMGET', K_JOB, 'status', 'reason', 'cursor', 'superseded_by',
                      'cursor_nonce', 'cursor_before')
if not st[1] then return false end
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
return {st[1], st[2] or '', table.concat(parts), st[4] or ''}
