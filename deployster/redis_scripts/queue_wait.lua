-- queue_wait: what a start estimate for a project's queued jobs is made of,
-- for readers that have the position already (GET /jobs/<id>, the stream, the
-- dashboard); status_read.lua makes the same read for /status.
-- KEYS: durations current
-- ARGV: job_prefix now_ms
--   durations: the project's recent complete run times; current: its
--   current-job key; job_prefix: a job id after it is its record's key;
--   now_ms: epoch ms.
-- Returns {typical_ms ('' without history), remaining_ms} (wait.lua).

return wait_model(K_DURATIONS, K_CURRENT, JOB_PREFIX, NOW_MS)
