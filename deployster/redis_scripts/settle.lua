-- settle: after the history writer stored a job in SQL, clear its dirty entry
-- if its version did not move meanwhile (else it is copied again), and give a
-- finished job's Redis keys their expiry (see history.py); a record Redis let
-- go meanwhile is left gone.
-- KEYS: dirty job log
-- ARGV: job_id version retention_s log_grace_s finished
--   dirty: job id -> version not yet in SQL; job, log: the job's record and
--   stream; version: the dirty version that was stored; retention_s: seconds
--   the finished job's record lives on; log_grace_s: seconds its log stream
--   does (the log is in SQL: readers go there once it is gone); finished: '1'
--   when it has ended, else '0'.
-- Returns 1 when settled, 0 when the job changed since (kept dirty).

if redis.call('HGET', K_DIRTY, JOB_ID) == VERSION then
  redis.call('HDEL', K_DIRTY, JOB_ID)
  -- A record gone since the writer read it (expired, deleted) stays gone: the
  -- HSET below would make it again as a hash of log_in_sql alone, with no
  -- expiry, that no reader can parse (GET /jobs/<id> failed on it).
  if FINISHED == '1' and redis.call('EXISTS', K_JOB) == 1 then
    -- log_in_sql: the stream's absence now means "read SQL", never "no output".
    redis.call('EXPIRE', K_JOB, RETENTION_S)
    local cursor = redis.call('HMGET', K_JOB, 'cursor', 'cursor_end')
    if cursor[1] and not cursor[2] then
      -- A /status cursor of an older server keeps no byte offset: without the
      -- stream it could not go on, so the stream stays as long as the record.
      redis.call('EXPIRE', K_LOG, RETENTION_S)
    else
      redis.call('HSET', K_JOB, 'log_in_sql', '1')
      redis.call('EXPIRE', K_LOG, LOG_GRACE_S)
    end
  end
  return 1
end
return 0
