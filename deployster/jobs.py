"""Live job records in Redis, and the seed's destructive-looking /status read.

The seed cleared each returned chunk from Redis. Here logs are stored once and
the /status call only moves a cursor kept in the job record, in one Lua script
(``redis_scripts/status_read.lua``): the status and the lines since the cursor
are read together, so the reply that first says ``complete``/``failed`` carries
the last lines (the runner flushes its output before it records the end), two
concurrent calls never return the same line, and every other reader sees the
whole log. The same script checks the caller may see the job and reads a
queued job's position: a poll is one Redis round trip.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, cast

from .errors import NotFound, StaleCredentials
from .estimate import StartEstimate
from .keys import Keys
from .models import Job, JobStatus
from .redis_conn import Redis
from .redis_scripts import Scripts


@dataclass(frozen=True)
class StatusRead:
    status: JobStatus
    reason: str | None
    logs: str
    superseded_by: str | None = None
    position: int | None = None  # 1-based place in the queue, while queued
    # The log has left Redis for SQL: the byte offset to read it from there
    # ('end': nothing left), and the read's nonce for ``JobRecords.sql_read``.
    sql_from: str | None = None
    nonce: str = ""
    # Seconds until a queued job should start (deployster/estimate.py); None
    # when not queued or the project has no history.
    starts_in: float | None = None


class JobRecords:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self.scripts = Scripts.of(redis, keys)

    async def get(self, job_id: str, *, raw: bool = False) -> Job | None:
        """The live record; ``raw``: with the commands as sent (the runner only,
        see ``Job``), else with every secret in them masked."""
        data = cast(dict[str, str], await self.redis.hgetall(self.keys.job(job_id)))
        return _job(data, raw=raw)

    async def get_many(self, job_ids: list[str]) -> list[Job]:
        if not job_ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hgetall(self.keys.job(job_id))
            rows = await pipe.execute()
        return [job for job in map(_job, rows) if job is not None]

    async def read_status(self, job_id: str, *, visible: int | None = None,
                          trusted: str | None = None) -> StatusRead | None:
        """Status plus the output since the previous call (moves the cursor),
        and the position while queued; None when Redis has no such job.

        ``visible``: the only project whose jobs the caller may see (None: any).
        Another project's job raises ``NotFound``, exactly as an unknown one
        would, and its cursor stays where it was (its owner's reads lose nothing).
        ``trusted``: the projects version a project token was taken from the
        cache at (``Principal.trusted``); a project changed since raises
        ``StaleCredentials``, nothing read or moved.
        """
        nonce = uuid.uuid4().hex
        result = await self.scripts.status_read(
            job_id=job_id, nonce=nonce, project="" if visible is None else visible,
            version=trusted or "")
        if result is None:
            return None
        if result == 0:
            raise NotFound(f"no job {job_id!r}")
        if result == -1:
            raise StaleCredentials("a project changed since the token was looked up")
        status, reason, logs, superseded_by, position, sql_from, typical, remaining = result
        position = int(position) or None
        starts_in = StartEstimate.from_reply(typical, remaining).starts_in(position)
        return StatusRead(JobStatus(status), reason or None, logs, superseded_by or None,
                          position, sql_from or None, nonce, starts_in)

    async def sql_read(self, job_id: str, read: StatusRead, log: bytes) -> str:
        """The rest of a /status read whose log has left Redis (``read.sql_from``
        set): the bytes of ``log`` (the SQL copy) from the cursor on, and the
        cursor moved to the end (``status_sql.lua``); '' when another read took
        them first or nothing was left."""
        if read.sql_from in (None, "end"):
            return ""
        if not await self.scripts.status_sql(job_id=job_id, nonce=read.nonce,
                                             from_end=read.sql_from or "0"):
            return ""
        return log[int(read.sql_from or 0):].decode("utf-8", "replace")

    async def running(self) -> dict[str, str]:
        """Running job id -> runner id."""
        return cast(dict[str, str], await self.redis.hgetall(self.keys.running))

    async def set_fields(self, job_id: str, **fields: Any) -> None:
        await self.redis.hset(self.keys.job(job_id), mapping=cast(Any, fields))


def _job(data: dict[str, str], *, raw: bool = False) -> Job | None:
    """The job of a record's hash; None for no record, and for a hash that is
    no whole record (a field written after Redis let the record go makes a new
    hash of that field alone): readers then go to the history, as for a
    record that is gone, instead of failing on it."""
    if not data or "id" not in data or "project_id" not in data:
        return None
    return Job.from_redis(data, raw=raw)
