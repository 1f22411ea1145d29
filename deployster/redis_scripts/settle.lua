-- settle: after the history writer stored a job in SQL, clear its dirty entry
-- if its version did not move meanwhile (else it is copied again), and give a
-- finished job's Redis keys their expiry (see history.py).
-- KEYS: dirty job log
-- ARGV: job_id version retention_s finished
--   dirty: job id -> version not yet in SQL; job, log: the job's record and
--   stream; version: the dirty version that was stored; retention_s: seconds
--   the finished job's keys live on; finished: '1' when it has ended, else '0'.
-- Returns 1 when settled, 0 when the job changed since (kept dirty).

if redis.call('HGET', K_DIRTY, JOB_ID) == VERSION then
  redis.call('HDEL', K_DIRTY, JOB_ID)
  if FINISHED == '1' then
    redis.call('EXPIRE', K_JOB, RETENTION_S)
    redis.call('EXPIRE', K_LOG, RETENTION_S)
  end
  return 1
end
return 0
