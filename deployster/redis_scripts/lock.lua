-- lock: every operation on a project's deploy lock, lock:deploy:<projectId>,
-- whose value is the owning job's id and whose TTL is the job's lock_ttl_ms.
-- A library: the scripts that touch the lock key do it through these functions
-- and nothing else. deployster/lock.py maps the lock's life (which script
-- takes, renews, releases it, and how a job learns it lost it).

-- The job holding the lock, false when it is free.
local function lock_holder(key)
  return redis.call('GET', key)
end

-- Whether anyone holds the lock.
local function lock_held(key)
  return redis.call('EXISTS', key) == 1
end

-- The lock's TTL in ms: -2 when free, -1 when held without expiry.
local function lock_ttl(key)
  return redis.call('PTTL', key)
end

-- Take the lock for job ``id`` for ``ttl_ms``: the claim, whose caller saw it free.
local function lock_take(key, id, ttl_ms)
  redis.call('SET', key, id, 'PX', ttl_ms)
end

-- Compare-and-renew: true while job ``id`` holds the lock, and then, unless
-- ``ttl_ms`` is '', its TTL starts again from now. Never prolongs, nor
-- re-creates, a lock that has meanwhile expired or passed to a newer job.
local function lock_renew(key, id, ttl_ms)
  if redis.call('GET', key) ~= id then return false end
  if ttl_ms ~= '' then redis.call('PEXPIRE', key, ttl_ms) end
  return true
end

-- Compare-and-delete: free the lock only if job ``id`` still holds it; true if it did.
local function lock_release(key, id)
  if redis.call('GET', key) ~= id then return false end
  redis.call('DEL', key)
  return true
end
