-- append: add a batch of output to a job's log stream (see logstream.py).
-- KEYS: job log
-- ARGV: fence maxlen now_ms batch expect metrics_prefix *chunks
--   job: the job's record; log: its stream. fence: '' for none, else append
--   only while the job is running under this fence; maxlen: the stream's
--   approximate cap (entries); now_ms: epoch ms, each entry's 't'; batch: this
--   batch's id, unique to one batch of one writer ('' = no idempotence
--   check); expect: the log's byte length the writer last saw ('' when
--   unknown: only the last entry is checked); metrics_prefix: the job's
--   project id after it is that project's counters (metrics.lua: the bytes
--   appended are counted there); chunks: the rest of ARGV, each valid UTF-8 on
--   its own, one entry each.
-- Returns 0 when fenced out, else 1 + the log's length in bytes (afterwards,
-- or as it is when the batch was already in).
--
-- Every entry's id is '<offset>-1': the byte offset of its first byte in the
-- job's whole log (the concatenation of every entry's 'd', UTF-8), so an id is
-- also a cursor into the history copy of the log, byte for byte. (Sequence 1
-- because Redis refuses the id 0-0.) The offset is computed here, from the last
-- entry (log.lua's log_offset, which queue.lua's closing lines use too), so
-- any number of writers (the runner, the closing line of whoever ends the
-- job) continue one numbering without sharing state. Each entry also
-- carries 't', the epoch milliseconds it was written at, and 'b', the id of
-- the batch it came in.
--
-- With a fence, a stale runner (its job already ended by whoever took the lock
-- over) writes nothing.
--
-- Idempotence: a batch sent again (its first reply was lost, but the first call
-- may have run) is not appended again (log.lua's append_batch, which
-- finish.lua also uses for a job's last batch).

local project
if FENCE ~= '' then
  local st = redis.call('HMGET', K_JOB, 'status', 'fence', 'project_id')
  if st[1] ~= 'running' or st[2] ~= FENCE then return 0 end
  project = st[3]
else
  project = redis.call('HGET', K_JOB, 'project_id')
end
local offset, added = append_batch(K_LOG, BATCH, EXPECT, MAXLEN, NOW_MS, CHUNKS_FROM)
if project then count_log_bytes(METRICS_PREFIX .. project, added) end
return 1 + offset
