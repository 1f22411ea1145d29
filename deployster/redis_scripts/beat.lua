-- beat: the watchdog's check of a running job, every second: is the job still
-- the one its record and the lock name? Records a heartbeat (the dashboard
-- shows its age), renews the lock when asked, reports a cancel request.
-- KEYS: job lock
-- ARGV: job_id fence heartbeat ttl_ms
--   job: the job's record; lock: its project's lock; fence: the fence its
--   runner got at the claim; heartbeat: epoch seconds; ttl_ms: the TTL to
--   renew the lock to ('' = check only, no renewal).
-- Returns 1 (OK), 2 (OK, a cancel was requested), 0 (the lock is no longer the
-- job's: lost) or -1 (the job was ended by someone else: its runner is stale);
-- see watchdog.py.

local st = redis.call('HMGET', K_JOB, 'status', 'fence', 'cancel_requested')
if st[1] ~= 'running' or st[2] ~= FENCE then return -1 end
if not lock_renew(K_LOCK, JOB_ID, TTL_MS) then return 0 end
redis.call('HSET', K_JOB, 'heartbeat', HEARTBEAT)
if st[3] == '1' then return 2 end
return 1
