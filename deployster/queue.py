"""The per-project FIFO of jobs waiting for the lock, and the hand-off.

State changes that must not interleave (enqueue + maybe start, finish + release +
start the next) are single Lua scripts: Redis runs each atomically, so two
servers, or a server and the dashboard, can never start two jobs of a project or
start one job twice. A release publishes an event; whoever runs a dispatcher
claims the next job at once, no polling.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from .clock import iso
from .keys import Keys
from .models import Job, JobStatus
from .redis_conn import Redis

# Claim the head of a project's queue if its lock is free: pop it, take the lock
# (value = job id, TTL from the job), bump the fencing counter, mark it running.
# Ids whose job is no longer queued (cancelled meanwhile) are skipped.
_CLAIM_FN = """
local function claim(lock_key, queue_key, fence_key, queues_key, running_key, dirty_key,
                     events_key, job_prefix, project_id, now, runner)
  if redis.call('EXISTS', lock_key) == 1 then return false end
  while true do
    local id = redis.call('LPOP', queue_key)
    if not id then
      redis.call('SREM', queues_key, project_id)
      return false
    end
    local jk = job_prefix .. id
    local st = redis.call('HMGET', jk, 'status', 'lock_ttl_ms')
    if st[1] == 'queued' then
      redis.call('SET', lock_key, id, 'PX', st[2])
      local fence = redis.call('INCR', fence_key)
      redis.call('HSET', jk, 'status', 'running', 'started_at', now, 'fence', fence,
                 'runner', runner)
      redis.call('HSET', running_key, id, runner)
      redis.call('HINCRBY', dirty_key, id, 1)
      if redis.call('LLEN', queue_key) == 0 then redis.call('SREM', queues_key, project_id) end
      redis.call('PUBLISH', events_key,
        cjson.encode({type='started', project=tonumber(project_id), job=id}))
      return id
    end
  end
end
"""

# KEYS: lock queue fence queues running dirty events job
# ARGV: job_prefix project_id now runner job_id field value ...
_ENQUEUE = _CLAIM_FN + """
local id = ARGV[5]
local fields = {}
for i = 6, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[8], unpack(fields))
redis.call('RPUSH', KEYS[2], id)
redis.call('SADD', KEYS[4], ARGV[2])
redis.call('HINCRBY', KEYS[6], id, 1)
-- claim_attempted: this script tries the claim itself (a runner was given), so
-- dispatchers need not try again on this event.
redis.call('PUBLISH', KEYS[7],
  cjson.encode({type='enqueued', project=tonumber(ARGV[2]), job=id,
                claim_attempted=(ARGV[4] ~= '')}))
local claimed = false
if ARGV[4] ~= '' then
  claimed = claim(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7],
                  ARGV[1], ARGV[2], ARGV[3], ARGV[4])
end
-- The job was pushed last and a claim pops from the head: unless it was the one
-- claimed, its place is the queue's length (O(1), where LPOS scans the list).
local pos = 0
if claimed ~= id then pos = redis.call('LLEN', KEYS[2]) end
return {claimed or '', pos}
"""

# KEYS: lock queue fence queues running dirty events
# ARGV: job_prefix project_id now runner
_CLAIM = _CLAIM_FN + """
return claim(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7],
             ARGV[1], ARGV[2], ARGV[3], ARGV[4]) or ''
"""

# End a running job and hand the lock to the next one in one step.
# KEYS: lock queue fence queues running dirty events job
# ARGV: job_prefix project_id now runner job_id fence status reason exit_code
# Returns {ended (0/1), next job id or ''}. A finish from a runner whose fence
# no longer matches the job (it was ended by someone else) changes nothing.
_FINISH = _CLAIM_FN + """
local id = ARGV[5]
local st = redis.call('HMGET', KEYS[8], 'status', 'fence')
if st[1] ~= 'running' or st[2] ~= ARGV[6] then
  return {0, ''}
end
redis.call('HSET', KEYS[8], 'status', ARGV[7], 'finished_at', ARGV[3])
if ARGV[8] ~= '' then redis.call('HSET', KEYS[8], 'reason', ARGV[8]) end
if ARGV[9] ~= '' then redis.call('HSET', KEYS[8], 'exit_code', ARGV[9]) end
redis.call('HDEL', KEYS[5], id)
redis.call('HINCRBY', KEYS[6], id, 1)
if redis.call('GET', KEYS[1]) == id then redis.call('DEL', KEYS[1]) end
redis.call('PUBLISH', KEYS[7],
  cjson.encode({type='finished', project=tonumber(ARGV[2]), job=id}))
local nxt = false
if ARGV[4] ~= '' then
  nxt = claim(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7],
              ARGV[1], ARGV[2], ARGV[3], ARGV[4])
end
return {1, nxt or ''}
"""


@dataclass(frozen=True)
class EnqueueResult:
    job_id: str
    started: str | None  # the job this call started (may be an older queued one)
    position: int  # 1-based place in the queue; 0 once started

    @property
    def queued(self) -> bool:
        return self.started != self.job_id


@dataclass(frozen=True)
class FinishResult:
    ended: bool
    next_job: str | None


class JobQueue:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._enqueue = redis.register_script(_ENQUEUE)
        self._claim = redis.register_script(_CLAIM)
        self._finish = redis.register_script(_FINISH)

    def _project_keys(self, project_id: int) -> list[str]:
        k = self.keys
        return [
            k.lock(project_id), k.queue(project_id), k.fence(project_id), k.queues,
            k.running, k.dirty, k.events,
        ]

    async def enqueue(self, job: Job, *, runner: str | None) -> EnqueueResult:
        """Store ``job`` at the tail of its project's queue.

        With ``runner`` set and the lock free, the head of the queue is started
        in the same step (the caller must then run it); without, the job waits
        for a dispatcher.
        """
        job.status = JobStatus.QUEUED
        job.queued_at = job.queued_at or iso()
        flat: list[str] = []
        for key, value in job.to_redis().items():
            flat += [key, value]
        claimed, position = await self._enqueue(
            keys=[*self._project_keys(job.project_id), self.keys.job(job.id)],
            args=[self.keys.job_prefix, job.project_id, iso(), runner or "", job.id, *flat],
        )
        return EnqueueResult(job.id, claimed or None, int(position))

    async def claim(self, project_id: int, runner: str) -> str | None:
        """Start the next queued job of ``project_id`` if its lock is free."""
        claimed = await self._claim(
            keys=self._project_keys(project_id),
            args=[self.keys.job_prefix, project_id, iso(), runner],
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
    ) -> FinishResult:
        """Record the end of ``job``, release its lock, start the next job."""
        ended, nxt = await self._finish(
            keys=[*self._project_keys(job.project_id), self.keys.job(job.id)],
            args=[
                self.keys.job_prefix, job.project_id, iso(), runner or "", job.id,
                str(job.fence), status.value, reason or "",
                "" if exit_code is None else str(exit_code),
            ],
        )
        return FinishResult(bool(ended), nxt or None)

    async def queued_ids(self, project_id: int) -> list[str]:
        return [str(i) for i in await self.redis.lrange(self.keys.queue(project_id), 0, -1)]

    async def position(self, project_id: int, job_id: str) -> int | None:
        pos = await self.redis.lpos(self.keys.queue(project_id), job_id)
        return None if pos is None else cast(int, pos) + 1

    async def projects_with_queue(self) -> list[int]:
        return [int(p) for p in await self.redis.smembers(self.keys.queues)]

    async def length(self, project_id: int) -> int:
        return cast(int, await self.redis.llen(self.keys.queue(project_id)))

