-- append: add a batch of output to a job's log stream (see logstream.py).
-- KEYS: job log
-- ARGV: fence maxlen now_ms batch expect *chunks
--   job: the job's record; log: its stream. fence: '' for none, else append
--   only while the job is running under this fence; maxlen: the stream's
--   approximate cap (entries); now_ms: epoch ms, each entry's 't'; batch: this
--   batch's id, unique to one batch of one writer ('' = no idempotence
--   check); expect: the log's byte length the writer last saw ('' when
--   unknown: only the last entry is checked); chunks: the rest of ARGV, each
--   valid UTF-8 on its own, one entry each.
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
-- may have run) is not appended again. A batch id is unique to one batch of one
-- writer, so the batch is in when an entry carries its id. Which entries to look
-- at: the last one (free: it is read for the offset anyway); and, when the log
-- is no longer where the writer's last acknowledged append left it (expect),
-- every entry from there on: its earlier try may be followed by someone else's
-- line (a closing line). In the usual case the log is where the writer expects
-- it and nothing more is read. Someone else's append in between does not
-- block the writer: a batch not found goes in at the end, as ever.

if FENCE ~= '' then
  local st = redis.call('HMGET', K_JOB, 'status', 'fence')
  if st[1] ~= 'running' or st[2] ~= FENCE then return 0 end
end
local function has_batch(f)
  for j = 1, #f, 2 do
    if f[j] == 'b' and f[j + 1] == BATCH then return true end
  end
  return false
end
local offset, _, f = log_offset(K_LOG)
if f then
  if BATCH ~= '' and has_batch(f) then return 1 + offset end
  local expect = tonumber(EXPECT)
  if BATCH ~= '' and expect and expect ~= offset then
    for _, entry in ipairs(redis.call('XRANGE', K_LOG, string.format('%d-0', expect), '+')) do
      if has_batch(entry[2]) then return 1 + offset end
    end
  end
end
for i = CHUNKS_FROM, #ARGV do
  local chunk = ARGV[i]
  if #chunk > 0 then
    redis.call('XADD', K_LOG, 'MAXLEN', '~', MAXLEN, string.format('%d-1', offset),
               'd', chunk, 't', NOW_MS, 'b', BATCH)
    offset = offset + #chunk
  end
end
return 1 + offset
