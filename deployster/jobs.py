"""Live job records in Redis, and the seed's destructive-looking /status read.

The seed cleared each returned chunk from Redis. Here logs are stored once and
the /status call only moves a cursor kept in the job record, in one Lua script:
the status and the lines since the cursor are read together, so the reply that
first says ``complete``/``failed`` carries the last lines (the runner flushes
its output before it records the end), two concurrent calls never return the
same line, and every other reader sees the whole log.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, cast

from .keys import Keys
from .models import Job, JobStatus
from .redis_conn import Redis

# KEYS: job, job log. ARGV: the read's nonce. Returns false when the job is
# unknown, else {status, reason, text, superseded_by}. A retry of a read whose
# reply was lost (same nonce) starts again where that read started: the client
# never saw those lines, so they are neither lost nor, later, repeated.
_STATUS_READ = """
local st = redis.call('HMGET', KEYS[1], 'status', 'reason', 'cursor', 'superseded_by',
                      'cursor_nonce', 'cursor_before')
if not st[1] then return false end
local from = st[3] or '0-0'
if st[5] == ARGV[1] then from = st[6] or '0-0' end
local entries = redis.call('XRANGE', KEYS[2], '(' .. from, '+')
local parts = {}
local last = from
for i = 1, #entries do
  last = entries[i][1]
  local f = entries[i][2]
  for j = 1, #f, 2 do
    if f[j] == 'd' then parts[#parts + 1] = f[j + 1] end
  end
end
if last ~= (st[3] or '0-0') then
  redis.call('HSET', KEYS[1], 'cursor', last, 'cursor_nonce', ARGV[1], 'cursor_before', from)
end
return {st[1], st[2] or '', table.concat(parts), st[4] or ''}
"""


@dataclass(frozen=True)
class StatusRead:
    status: JobStatus
    reason: str | None
    logs: str
    superseded_by: str | None = None


class JobRecords:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._status_read = redis.register_script(_STATUS_READ)

    async def get(self, job_id: str, *, raw: bool = False) -> Job | None:
        """The live record; ``raw``: with the commands as sent (the runner only,
        see ``Job``), else with every secret in them masked."""
        data = cast(dict[str, str], await self.redis.hgetall(self.keys.job(job_id)))
        return Job.from_redis(data, raw=raw) if data else None

    async def get_many(self, job_ids: list[str]) -> list[Job]:
        if not job_ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hgetall(self.keys.job(job_id))
            rows = await pipe.execute()
        return [Job.from_redis(r) for r in rows if r]

    async def read_status(self, job_id: str) -> StatusRead | None:
        """Status plus the output since the previous call (moves the cursor)."""
        result = await self._status_read(keys=[self.keys.job(job_id), self.keys.log(job_id)],
                                         args=[uuid.uuid4().hex])
        if not result:
            return None
        status, reason, logs, superseded_by = result
        return StatusRead(JobStatus(status), reason or None, logs, superseded_by or None)

    async def running(self) -> dict[str, str]:
        """Running job id -> runner id."""
        return cast(dict[str, str], await self.redis.hgetall(self.keys.running))

    async def set_fields(self, job_id: str, **fields: Any) -> None:
        await self.redis.hset(self.keys.job(job_id), mapping=cast(Any, fields))
