-- queue: what the queue's scripts (enqueue, claim, finish, cancel, upgrade_queue)
-- share: the queue itself (byref, queue_push, queue_remove, queue_upgrade),
-- publish, log_line, end_job and claim. A library, after lock.lua, log.lua,
-- wait.lua, outbox.lua and metrics.lua.
-- Every queue script's KEYS and ARGV start with the same names:
-- KEYS: lock queue fence queues running dirty events current sigs job feed seq legacy durations notify outbox metrics
-- ARGV: job_prefix project now runner log_prefix now_ms byref_prefix
--   lock: the project's lock; queue: its queue, a sorted set of job ids scored
--   by seq; fence: its fencing counter; queues: projects whose queue may be
--   non-empty; running: running job id -> runner; dirty: job id -> version
--   not yet in SQL; events: the channel dispatchers act on; current: the
--   project's job that claimed the lock last; sigs: signature -> queued job;
--   job: the job record the call is about (a placeholder for claim); feed:
--   the channel for watchers only; seq: the queue's enqueue counter; legacy:
--   the queue as a list, as older versions kept it (moved over, then deleted);
--   durations: its recent complete jobs' run times (wait.lua); notify,
--   outbox: see outbox.lua (a start or an end is an event there); metrics:
--   its counters (metrics.lua).
--   job_prefix, log_prefix: a job id after them is its record's, its log's
--   key; project: the project id; now: ISO UTC, now_ms: epoch ms; runner: the
--   dispatcher that runs a job claimed here ('' = claim nothing);
--   byref_prefix: a ref after it is the key of the set of that ref's queued
--   job ids (what supersede replaces, without scanning the queue).
--
-- Nothing here is O(queue): a job enters with ZADD at the next seq, the head
-- leaves with ZPOPMIN, a position is a ZRANK, and the same-ref jobs are one
-- set. The queue and the per-ref sets change together, only through
-- queue_push and queue_remove (and claim's pop).

-- The set of the project's queued job ids of ``ref`` (a missing ref is '').
local function byref(ref)
  return BYREF_PREFIX .. (ref or '')
end

-- Job ``id``, of ref ``ref``, joins the queue at its tail.
local function queue_push(id, ref)
  redis.call('ZADD', K_QUEUE, redis.call('INCR', K_SEQ), id)
  redis.call('SADD', byref(ref), id)
end

-- Job ``id``, of ref ``ref``, leaves the queue (nothing when it is not in it).
local function queue_remove(id, ref)
  redis.call('ZREM', K_QUEUE, id)
  redis.call('SREM', byref(ref), id)
end

-- Move the legacy list (K_LEGACY) into the queue, in its order, behind what
-- the queue holds (a list still written after an upgrade was written by an
-- older server running beside a newer one: its jobs are the newer ones), and
-- delete it. Only jobs still queued move; one already in the queue is not
-- added twice, so running it again changes nothing. Returns how many moved.
local function queue_upgrade()
  local ids = redis.call('LRANGE', K_LEGACY, 0, -1)
  if #ids == 0 then return 0 end
  local moved = 0
  for _, id in ipairs(ids) do
    local st = redis.call('HMGET', JOB_PREFIX .. id, 'status', 'ref_name')
    if st[1] == 'queued' and not redis.call('ZSCORE', K_QUEUE, id) then
      queue_push(id, st[2])
      moved = moved + 1
    end
  end
  redis.call('DEL', K_LEGACY)
  if moved > 0 then redis.call('SADD', K_QUEUES, PROJECT) end
  return moved
end

-- Events a dispatcher must act on go to K_EVENTS; the rest (a job started, a
-- job queued by a caller that already tried to start it) only to K_FEED, which
-- watchers such as the dashboard read besides K_EVENTS.
local function publish(kind, id, extra, feed_only)
  local event = {type=kind, project=tonumber(PROJECT), job=id}
  if extra then for k, v in pairs(extra) do event[k] = v end end
  redis.call('PUBLISH', feed_only and K_FEED or K_EVENTS, cjson.encode(event))
end

-- Append a line to a job's log after its last entry, continuing the byte-offset
-- entry ids that append.lua gives (see log_offset), on a line of its own.
local function log_line(id, text)
  local key = LOG_PREFIX .. id
  local offset, last = log_offset(key)
  if last and string.sub(last, -1) ~= '\n' then text = '\n' .. text end
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
-- A queued job leaves the queue here (a project left with none leaves K_QUEUES).
-- Its outbox event: 'superseded' or 'cancelled' for those reasons, else its status.
-- Every end is counted here too (metrics.lua), with its duration if it ran.
local function end_job(id, status, reason, extra_fields, closing)
  local jk = JOB_PREFIX .. id
  local was = redis.call('HMGET', jk, 'status', 'ref_name', 'signature', 'started_ms')
  if was[1] == 'queued' then
    queue_remove(id, was[2])
    if redis.call('ZCARD', K_QUEUE) == 0 then redis.call('SREM', K_QUEUES, PROJECT) end
  end
  if closing and closing ~= '' then log_line(id, '[deployster] ' .. closing .. '\n') end
  redis.call('HSET', jk, 'status', status, 'finished_at', NOW)
  if status == 'complete' and was[4] then  -- what start estimates learn from (wait.lua)
    redis.call('LPUSH', K_DURATIONS, tonumber(NOW_MS) - tonumber(was[4]))
    redis.call('LTRIM', K_DURATIONS, 0, DURATIONS_KEPT - 1)
  end
  if reason ~= '' then redis.call('HSET', jk, 'reason', reason) end
  if extra_fields then redis.call('HSET', jk, unpack(extra_fields)) end
  redis.call('HDEL', K_RUNNING, id)
  redis.call('HINCRBY', K_DIRTY, id, 1)
  count_end(K_METRICS, was[1] == 'running' and was[4] or nil, NOW_MS, status, reason)
  local sig = was[3]
  if sig and redis.call('HGET', K_SIGS, sig) == id then redis.call('HDEL', K_SIGS, sig) end
  if redis.call('HDEL', jk, 'commands_raw') == 1 then redis.call('HDEL', jk, 'signature') end
  publish('finished', id)
  if reason == 'superseded' or reason == 'cancelled' then
    outbox_add(reason, id)
  else
    outbox_add(status, id)
  end
end

-- Claim the head of the queue if the lock is free: pop it (a legacy list moved
-- over first, see queue_upgrade: an older server may still push to one), take
-- the lock (value = job id, TTL from the job), bump the fencing counter, mark
-- it running. A job still marked running that no longer holds the lock (it
-- expired, or an operator released it) lost its lock: it ends lock_lost here,
-- and the fence makes whatever its runner still writes a no-op.
local function claim()
  queue_upgrade()
  if RUNNER == '' or lock_held(K_LOCK) then return false end
  while true do
    local id = redis.call('ZPOPMIN', K_QUEUE)[1]
    if not id then
      redis.call('SREM', K_QUEUES, PROJECT)
      return false
    end
    local jk = JOB_PREFIX .. id
    local st = redis.call('HMGET', jk, 'status', 'lock_ttl_ms', 'signature', 'ref_name')
    redis.call('SREM', byref(st[4]), id)
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
      redis.call('HSET', jk, 'status', 'running', 'started_at', NOW, 'started_ms', NOW_MS,
                 'fence', fence, 'runner', RUNNER)
      if st[3] and redis.call('HGET', K_SIGS, st[3]) == id then
        redis.call('HDEL', K_SIGS, st[3])
      end
      redis.call('HSET', K_RUNNING, id, RUNNER)
      redis.call('HINCRBY', K_DIRTY, id, 1)
      if redis.call('ZCARD', K_QUEUE) == 0 then redis.call('SREM', K_QUEUES, PROJECT) end
      publish('started', id, nil, true)
      outbox_add('started', id)
      return id
    end
  end
end
