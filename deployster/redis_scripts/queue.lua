-- queue: what the queue's scripts (enqueue, claim, finish, cancel) share:
-- publish, log_line, end_job and claim. A library, after lock.lua.
-- Every queue script's KEYS and ARGV start with the same names:
-- KEYS: lock queue fence queues running dirty events current sigs job feed
-- ARGV: job_prefix project now runner log_prefix now_ms
--   lock: the project's lock; queue: its FIFO of job ids; fence: its fencing
--   counter; queues: projects whose queue may be non-empty; running: running
--   job id -> runner; dirty: job id -> version not yet in SQL; events: the
--   channel dispatchers act on; current: the project's job that claimed the
--   lock last; sigs: signature -> queued job; job: the job record the call is
--   about (a placeholder for claim); feed: the channel for watchers only.
--   job_prefix, log_prefix: a job id after them is its record's, its log's
--   key; project: the project id; now: ISO UTC, now_ms: epoch ms; runner: the
--   dispatcher that runs a job claimed here ('' = claim nothing).

-- Events a dispatcher must act on go to K_EVENTS; the rest (a job started, a
-- job queued by a caller that already tried to start it) only to K_FEED, which
-- watchers such as the dashboard read besides K_EVENTS.
local function publish(kind, id, extra, feed_only)
  local event = {type=kind, project=tonumber(PROJECT), job=id}
  if extra then for k, v in pairs(extra) do event[k] = v end end
  redis.call('PUBLISH', feed_only and K_FEED or K_EVENTS, cjson.encode(event))
end

-- Append a line to a job's log after its last entry, continuing the byte-offset
-- entry ids that append.lua gives (an entry's id is '<offset>-1'), on a line
-- of its own.
local function log_line(id, text)
  local key = LOG_PREFIX .. id
  local offset = 0
  local last = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)[1]
  if last then
    offset = tonumber(string.match(last[1], '^(%d+)'))
    local f = last[2]
    for j = 1, #f, 2 do
      if f[j] == 'd' then
        offset = offset + #f[j + 1]
        if string.sub(f[j + 1], -1) ~= '\n' then text = '\n' .. text end
      end
    end
  end
  redis.call('XADD', key, string.format('%d-1', offset), 'd', text, 't', NOW_MS)
end

-- End a job that is queued or running: status, reason, bookkeeping, event.
-- ``closing`` (when not nil or ''): the job's last log line, '[deployster] ...',
-- for an end its runner does not write itself (a takeover, a cancel while
-- queued, a superseded request, recovery): every ended job's log ends saying how.
-- Every end comes here, so here the commands as sent (a secret in them, see
-- models.Job) leave Redis, in the same step: no ended job keeps them. Its
-- signature goes with them: a hash of those commands, which would let anyone
-- reading Redis test guesses of the secret against the masked commands.
local function end_job(id, status, reason, extra_fields, closing)
  local jk = JOB_PREFIX .. id
  if closing and closing ~= '' then log_line(id, '[deployster] ' .. closing .. '\n') end
  redis.call('HSET', jk, 'status', status, 'finished_at', NOW)
  if reason ~= '' then redis.call('HSET', jk, 'reason', reason) end
  if extra_fields then redis.call('HSET', jk, unpack(extra_fields)) end
  redis.call('HDEL', K_RUNNING, id)
  redis.call('HINCRBY', K_DIRTY, id, 1)
  local sig = redis.call('HGET', jk, 'signature')
  if sig and redis.call('HGET', K_SIGS, sig) == id then redis.call('HDEL', K_SIGS, sig) end
  if redis.call('HDEL', jk, 'commands_raw') == 1 then redis.call('HDEL', jk, 'signature') end
  publish('finished', id)
end

-- Claim the head of the queue if the lock is free: pop it, take the lock
-- (value = job id, TTL from the job), bump the fencing counter, mark it
-- running. A job still marked running that no longer holds the lock (it
-- expired, or an operator released it) lost its lock: it ends lock_lost here,
-- and the fence makes whatever its runner still writes a no-op.
local function claim()
  if RUNNER == '' or lock_held(K_LOCK) then return false end
  while true do
    local id = redis.call('LPOP', K_QUEUE)
    if not id then
      redis.call('SREM', K_QUEUES, PROJECT)
      return false
    end
    local jk = JOB_PREFIX .. id
    local st = redis.call('HMGET', jk, 'status', 'lock_ttl_ms', 'signature')
    if st[1] == 'queued' then
      local prev = redis.call('GET', K_CURRENT)
      if prev and redis.call('HGET', JOB_PREFIX .. prev, 'status') == 'running' then
        end_job(prev, 'failed', 'lock_lost', nil,
                'job ended: lock lost (it expired or was released); job ' .. id ..
                ' holds the lock now')
      end
      lock_take(K_LOCK, id, st[2])
      redis.call('SET', K_CURRENT, id)
      local fence = redis.call('INCR', K_FENCE)
      redis.call('HSET', jk, 'status', 'running', 'started_at', NOW, 'fence', fence,
                 'runner', RUNNER)
      if st[3] and redis.call('HGET', K_SIGS, st[3]) == id then
        redis.call('HDEL', K_SIGS, st[3])
      end
      redis.call('HSET', K_RUNNING, id, RUNNER)
      redis.call('HINCRBY', K_DIRTY, id, 1)
      if redis.call('LLEN', K_QUEUE) == 0 then redis.call('SREM', K_QUEUES, PROJECT) end
      publish('started', id, nil, true)
      return id
    end
  end
end
