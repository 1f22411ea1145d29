-- status_read: the whole /status read, in one round trip. A job's status, the
-- output since its cursor and, while queued, its place in the queue, read
-- together, and the cursor moved past that output (see jobs.py).
-- KEYS: job log versions
-- ARGV: nonce job_id queue_prefix project job_prefix current_prefix durations_prefix now_ms version
--   job: the job's record (holds the cursor); log: its stream; versions: the
--   projects version key (bumped by every project change); version: the one a
--   project token was looked up at without a check ('' for none: admin, or
--   checked), see access.Principal.trusted; nonce: names
--   this read, the same for every retry of it; job_id: the job; queue_prefix,
--   current_prefix, durations_prefix: a project id after them is that
--   project's queue, current-job, durations key; project: the only project whose
--   jobs the caller may see ('' for any: the admin token); job_prefix: a job
--   id after it is its record's key; now_ms: epoch ms.
-- Returns -1 when version is set and the projects changed since (nothing
-- read or moved: the caller authenticates again, checked), false when the
-- job is unknown, 0 when it is another project's (the
-- cursor untouched: its owner's reads lose nothing), else {status, reason,
-- text, superseded_by, position, sql_from, typical_ms, remaining_ms}: position
-- 1-based while queued, else 0; typical_ms and remaining_ms: the queue's
-- wait_model (wait.lua) while queued, else '' and 0;
-- sql_from '' while the log is read here, else the log has left Redis
-- for SQL (log_in_sql, see settle.lua) and the caller reads it there from that
-- byte offset ('end': nothing is left), then moves the cursor with
-- status_sql.lua. A retry of a read whose reply was lost (same nonce) starts
-- again where that read started: the client never saw those lines, so they
-- are neither lost nor, later, repeated.
--
-- The cursor is kept twice: ``cursor``, the id of the last entry returned, and
-- ``cursor_end``, the byte offset after it (an entry's id is its byte offset,
-- docs/redis.md#the-log-stream), which still says where to go on once the
-- stream is gone.

if VERSION ~= '' and redis.call('GET', K_VERSIONS) ~= VERSION then return -1 end
local st = redis.call('HMGET', K_JOB, 'status', 'reason', 'cursor', 'superseded_by',
                      'cursor_nonce', 'cursor_before', 'project_id', 'cursor_end',
                      'cursor_end_before', 'log_in_sql')
if not st[1] then return false end
if PROJECT ~= '' and st[7] ~= PROJECT then return 0 end
local position = 0
local wait = {'', 0}
if st[1] == 'queued' and st[7] then
  position = (redis.call('ZRANK', QUEUE_PREFIX .. st[7], JOB_ID) or -1) + 1
  wait = wait_model(DURATIONS_PREFIX .. st[7], CURRENT_PREFIX .. st[7], JOB_PREFIX, NOW_MS)
end
local retry = st[5] == NONCE
local from_end = (retry and st[9]) or st[8] or '0'
if st[10] == '1' and redis.call('EXISTS', K_LOG) == 0 then
  return {st[1], st[2] or '', '', st[4] or '', position, from_end, wait[1], wait[2]}
end
local from = st[3] or '0-0'
if retry then from = st[6] or '0-0' end
local entries = redis.call('XRANGE', K_LOG, '(' .. from, '+')
local parts = {}
local last = from
local last_end = from_end
for i = 1, #entries do
  last = entries[i][1]
  local f = entries[i][2]
  for j = 1, #f, 2 do
    if f[j] == 'd' then parts[#parts + 1] = f[j + 1] end
  end
end
if #entries > 0 then last_end = tostring(entry_end(entries[#entries])) end
if last ~= (st[3] or '0-0') then
  redis.call('HSET', K_JOB, 'cursor', last, 'cursor_nonce', NONCE, 'cursor_before', from,
             'cursor_end', last_end, 'cursor_end_before', from_end)
end
return {st[1], st[2] or '', table.concat(parts), st[4] or '', position, '', wait[1], wait[2]}
