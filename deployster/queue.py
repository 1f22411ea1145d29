"""The per-project FIFO of jobs waiting for the lock, and the hand-off.

State changes that must not interleave (enqueue + maybe start, finish + release +
start the next) are single Lua scripts: Redis runs each atomically, so two
servers, or a server and the dashboard, can never start two jobs of a project or
start one job twice. A release publishes an event; whoever runs a dispatcher
claims the next job at once, no polling.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import cast

from .autopipe import ScriptBatcher
from .clock import iso, now_ms
from .errors import QueueFull
from .keys import Keys
from .models import Job, JobStatus
from .redis_conn import Redis

# Every script below gets the same KEYS and ARGV head:
#   KEYS: 1 lock, 2 queue, 3 fence, 4 queues, 5 running, 6 dirty, 7 events,
#         8 current (last job claimed), 9 sigs (signature -> queued job), 10 job,
#         11 feed (events no dispatcher needs)
#   ARGV: 1 job key prefix, 2 project id, 3 now (ISO UTC), 4 runner ('' = none),
#         5 log key prefix, 6 now (epoch ms)
_LIB = """
local K_LOCK, K_QUEUE, K_FENCE, K_QUEUES = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local K_RUNNING, K_DIRTY, K_EVENTS, K_CURRENT, K_SIGS = KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local K_FEED = KEYS[11]
local PREFIX, PROJECT, NOW, RUNNER = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local LOG_PREFIX, NOW_MS = ARGV[5], ARGV[6]

-- Events a dispatcher must act on go to K_EVENTS; the rest (a job started, a
-- job queued by a caller that already tried to start it) only to K_FEED, which
-- watchers such as the dashboard read besides K_EVENTS.
local function publish(kind, id, extra, feed_only)
  local event = {type=kind, project=tonumber(PROJECT), job=id}
  if extra then for k, v in pairs(extra) do event[k] = v end end
  redis.call('PUBLISH', feed_only and K_FEED or K_EVENTS, cjson.encode(event))
end

-- Append a line to a job's log after its last entry, continuing the byte-offset
-- entry ids that logstream.py's append script gives (an entry's id is
-- '<offset>-1'), on a line of its own.
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
        if string.sub(f[j + 1], -1) ~= '\\n' then text = '\\n' .. text end
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
  local jk = PREFIX .. id
  if closing and closing ~= '' then log_line(id, '[deployster] ' .. closing .. '\\n') end
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
  if RUNNER == '' or redis.call('EXISTS', K_LOCK) == 1 then return false end
  while true do
    local id = redis.call('LPOP', K_QUEUE)
    if not id then
      redis.call('SREM', K_QUEUES, PROJECT)
      return false
    end
    local jk = PREFIX .. id
    local st = redis.call('HMGET', jk, 'status', 'lock_ttl_ms', 'signature')
    if st[1] == 'queued' then
      local prev = redis.call('GET', K_CURRENT)
      if prev and redis.call('HGET', PREFIX .. prev, 'status') == 'running' then
        end_job(prev, 'failed', 'lock_lost', nil,
                'job ended: lock lost (it expired or was released); job ' .. id ..
                ' holds the lock now')
      end
      redis.call('SET', K_LOCK, id, 'PX', st[2])
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
"""

# ARGV 7: job id, 8: queue policy, 9: signature, 10: the job's fields as one JSON
# object (one argument to encode instead of ~40: a third of a request's cost),
# 11: queue cap (0: none).
# Returns {started id or '', position, job id answering the request}; position
# -1 (and no job id) when the queue is full and nothing was stored.
_ENQUEUE = _LIB + """
local id, policy, sig, cap = ARGV[7], ARGV[8], ARGV[9], tonumber(ARGV[11])
-- A retry of a call whose reply was lost (the job id is the request's own):
-- answer what the first call did and change nothing. Without this the retry
-- stored the job again as queued behind its own claim of the lock.
local seen = redis.call('HMGET', KEYS[10], 'status', 'runner')
if seen[1] then
  if seen[1] == 'queued' then
    local at = redis.call('LPOS', K_QUEUE, id)
    return {'', at and at + 1 or 0, id}
  end
  if seen[1] == 'running' and seen[2] == RUNNER then return {id, 0, id} end
  return {'', 0, id}
end
-- An identical request (same commit, ref, commands) still queued: that job answers.
local same = redis.call('HGET', K_SIGS, sig)
if same and redis.call('HGET', PREFIX .. same, 'status') == 'queued' then
  local pos = redis.call('LPOS', K_QUEUE, same)
  if pos then return {'', pos + 1, same} end
end
if cap > 0 and redis.call('LLEN', K_QUEUE) >= cap then return {'', -1, ''} end
local fields = {}
for k, v in pairs(cjson.decode(ARGV[10])) do
  fields[#fields + 1] = k
  fields[#fields + 1] = v
end
redis.call('HSET', KEYS[10], unpack(fields))
if policy == 'supersede' then
  -- Older still-queued requests for the same ref are replaced by this one.
  local ref = redis.call('HGET', KEYS[10], 'ref_name')
  for _, qid in ipairs(redis.call('LRANGE', K_QUEUE, 0, -1)) do
    local q = redis.call('HMGET', PREFIX .. qid, 'status', 'ref_name')
    if q[1] == 'queued' and q[2] == ref then
      redis.call('LREM', K_QUEUE, 0, qid)
      end_job(qid, 'failed', 'superseded', {'superseded_by', id},
              'job superseded by ' .. id .. ' before it started')
    end
  end
end
redis.call('RPUSH', K_QUEUE, id)
redis.call('HSET', K_SIGS, sig, id)
redis.call('SADD', K_QUEUES, PROJECT)
-- Not marked dirty: history takes a job when it starts or ends (Redis, with its
-- AOF, holds the queue; writing every queued request to SQL too doubled the
-- cost of a deploy request).
-- When this script tries the claim itself (RUNNER set), dispatchers need not.
publish('enqueued', id, nil, RUNNER ~= '')
local claimed = claim()
-- The job was pushed last and a claim pops from the head: unless it was the one
-- claimed, its place is the queue's length (O(1), where LPOS scans the list).
local pos = 0
if claimed ~= id then pos = redis.call('LLEN', K_QUEUE) end
return {claimed or '', pos, id}
"""

# A claim whose reply was lost left its job running but never launched: the
# retry finds the lock held by a job of the same runner and answers that job
# again (the dispatcher launches a job once however often it hears of it).
_CLAIM = _LIB + """
local holder = redis.call('GET', K_LOCK)
if holder and RUNNER ~= '' then
  local st = redis.call('HMGET', PREFIX .. holder, 'status', 'runner')
  if st[1] == 'running' and st[2] == RUNNER then return holder end
end
return claim() or ''
"""

# End a running job and hand the lock to the next one in one step.
# ARGV 7: job id, 8: fence, 9: status, 10: reason, 11: exit code, 12: closing
# line ('' when the runner wrote its own), 13: the caller's nonce for this finish.
# Returns {ended (0/1), next job id or ''}. A finish from a runner whose fence
# no longer matches the job (someone else ended it) changes nothing. A retry of
# a finish whose reply was lost (same nonce) gets the first call's answer again
# (the job it handed the lock to is kept in the record as 'handed_to'), so that
# job is launched, not stranded.
_FINISH = _LIB + """
local id = ARGV[7]
local st = redis.call('HMGET', KEYS[10], 'status', 'fence', 'handed_to', 'finish_nonce')
if st[1] ~= 'running' or st[2] ~= ARGV[8] then
  if st[4] and st[4] == ARGV[13] then return {1, st[3]} end
  return {0, ''}
end
local extra = nil
if ARGV[11] ~= '' then extra = {'exit_code', ARGV[11]} end
end_job(id, ARGV[9], ARGV[10], extra, ARGV[12])
if redis.call('GET', K_LOCK) == id then redis.call('DEL', K_LOCK) end
local nxt = claim() or ''
redis.call('HSET', KEYS[10], 'handed_to', nxt, 'finish_nonce', ARGV[13])
return {1, nxt}
"""

# Cancel: a queued job leaves the queue and ends at once; a running one is
# flagged (its watchdog sees the flag within a second) and its runner told.
# ARGV 7: job id, 8: the request's nonce. Returns the job's status before
# ('' when unknown); a retry with the same nonce (its reply was lost) gets the
# first answer again, not "already finished".
_CANCEL = _LIB + """
local id = ARGV[7]
local st = redis.call('HMGET', KEYS[10], 'status', 'cancel_nonce', 'cancel_before')
local status = st[1]
if not status then return '' end
if st[2] == ARGV[8] then return st[3] end
if status == 'queued' or status == 'running' then
  redis.call('HSET', KEYS[10], 'cancel_nonce', ARGV[8], 'cancel_before', status)
end
if status == 'queued' then
  redis.call('LREM', K_QUEUE, 0, id)
  if redis.call('LLEN', K_QUEUE) == 0 then redis.call('SREM', K_QUEUES, PROJECT) end
  end_job(id, 'failed', 'cancelled', nil, 'job cancelled while queued')
elseif status == 'running' then
  redis.call('HSET', KEYS[10], 'cancel_requested', '1')
  publish('cancel', id, {runner=redis.call('HGET', KEYS[10], 'runner')})
end
return status
"""


# Seconds a client is told to wait when a queue is full: about one short deploy.
QUEUE_FULL_RETRY_AFTER = 30


@dataclass(frozen=True)
class EnqueueResult:
    job_id: str  # the job answering the request (an identical queued one, if any)
    started: str | None  # the job this call started (may be an older queued one)
    position: int  # 1-based place in the queue; 0 once started
    duplicate: bool = False  # an identical request was already queued

    @property
    def queued(self) -> bool:
        return self.position > 0


@dataclass(frozen=True)
class FinishResult:
    ended: bool
    next_job: str | None


class JobQueue:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._enqueue = ScriptBatcher(redis, _ENQUEUE)
        self._claim = redis.register_script(_CLAIM)
        self._finish = redis.register_script(_FINISH)
        self._cancel = redis.register_script(_CANCEL)

    def _keys(self, project_id: int, job_id: str = "") -> list[str]:
        k = self.keys
        return [
            k.lock(project_id), k.queue(project_id), k.fence(project_id), k.queues,
            k.running, k.dirty, k.events, k.current(project_id), k.signatures(project_id),
            k.job(job_id) if job_id else k.job("-"), k.feed,
        ]

    def _args(self, project_id: int, runner: str | None) -> list[str | int]:
        return [self.keys.job_prefix, project_id, iso(), runner or "", self.keys.log_prefix,
                now_ms()]

    async def enqueue(
        self, job: Job, *, runner: str | None, policy: str = "fifo", cap: int = 0
    ) -> EnqueueResult:
        """Store ``job`` at the tail of its project's queue.

        With ``runner`` set and the lock free, the head of the queue is started
        in the same step (the caller must then run it); without, the job waits
        for a dispatcher. A request identical to a still-queued job (same
        commit, ref and commands) is answered with that job instead; with the
        ``supersede`` policy older queued jobs for the same ref are replaced.
        With ``cap`` jobs already waiting, ``QueueFull`` is raised and nothing stored.
        """
        job.status = JobStatus.QUEUED
        job.queued_at = job.queued_at or iso()
        signature = job.signature()
        # The commands as sent, if kept, come last (see Job.to_redis).
        fields = json.dumps({"signature": signature, **job.to_redis()})
        # Sent in call order (no await before this): see ScriptBatcher.
        claimed, position, answer = await self._enqueue.call(
            self._keys(job.project_id, job.id),
            [*self._args(job.project_id, runner), job.id, policy, signature, fields, cap],
        )
        if int(position) < 0:
            raise QueueFull(
                f"project {job.project!r} already has {cap} deploys waiting (the cap, "
                "DEPLOYSTER_MAX_QUEUE); nothing was queued, retry later",
                retry_after=QUEUE_FULL_RETRY_AFTER,
            )
        return EnqueueResult(answer, claimed or None, int(position), duplicate=answer != job.id)

    async def claim(self, project_id: int, runner: str) -> str | None:
        """Start the next queued job of ``project_id`` if its lock is free."""
        claimed = await self._claim(
            keys=self._keys(project_id), args=self._args(project_id, runner)
        )
        return claimed or None

    async def finish(
        self,
        job: Job,
        status: JobStatus,
        *,
        reason: str | None = None,
        exit_code: int | None = None,
        runner: str | None = None,
        closing: str = "",
        nonce: str | None = None,
    ) -> FinishResult:
        """Record the end of ``job``, release its lock, start the next job.

        ``closing``: the job's last log line (without ``[deployster] ``) for a
        caller that is not its runner; the runner writes its own. ``nonce``
        names this finish: a caller retrying after an outage passes the same
        one and gets the first call's answer if that call ran after all.
        """
        ended, nxt = await self._finish(
            keys=self._keys(job.project_id, job.id),
            args=[
                *self._args(job.project_id, runner), job.id, str(job.fence), status.value,
                reason or "", "" if exit_code is None else str(exit_code), closing,
                nonce or uuid.uuid4().hex,
            ],
        )
        return FinishResult(bool(ended), nxt or None)

    async def cancel(self, job: Job) -> str:
        """Cancel ``job``; returns its status before the call ('' if unknown).

        ``queued``: it left the queue and ended cancelled. ``running``: its runner
        was asked to stop (the caller may wait for the end). Anything else: it
        had already finished and nothing changed.
        """
        return cast(str, await self._cancel(
            keys=self._keys(job.project_id, job.id),
            args=[*self._args(job.project_id, None), job.id, uuid.uuid4().hex],
        ))

    async def queued_ids(self, project_id: int) -> list[str]:
        return [str(i) for i in await self.redis.lrange(self.keys.queue(project_id), 0, -1)]

    async def position(self, project_id: int, job_id: str) -> int | None:
        pos = await self.redis.lpos(self.keys.queue(project_id), job_id)
        return None if pos is None else cast(int, pos) + 1

    async def projects_with_queue(self) -> list[int]:
        return [int(p) for p in await self.redis.smembers(self.keys.queues)]

    async def length(self, project_id: int) -> int:
        return cast(int, await self.redis.llen(self.keys.queue(project_id)))

