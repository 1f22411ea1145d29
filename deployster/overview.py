"""What the operator's dashboard shows, read through the core (issue #4).

One call builds every project's row from a single Redis pipeline (lock owner,
its TTL, queue length) plus the running jobs' records and one SQL query for
the last finished deployments, so a refresh costs a few round trips whatever
the number of projects.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, cast

from . import store
from .clock import parse_iso, utcnow
from .logstream import read_log
from .models import Job, JobStatus, Project
from .service import Deployster
from .watchdog import HEARTBEAT_INTERVAL

# A holder whose heartbeat is older than this many beats is shown STALE.
STALE_AFTER = 3 * HEARTBEAT_INTERVAL


@dataclass(frozen=True)
class ProjectRow:
    project: Project
    lock_owner: str | None
    lock_ttl_ms: int | None  # None when free, -1 when held without expiry
    running: Job | None  # the job holding the lock, if its record is live
    heartbeat_age: float | None  # seconds since the holder's last heartbeat
    queue_length: int
    last: Job | None  # the last finished deployment

    @property
    def stale(self) -> bool:
        """Held, but nobody is renewing it: the fact to know before unlocking."""
        if self.lock_owner is None:
            return False
        if self.running is None or self.running.status is not JobStatus.RUNNING:
            return True
        return self.heartbeat_age is None or self.heartbeat_age > STALE_AFTER

    @property
    def elapsed(self) -> float | None:
        if self.running is None or not self.running.started_at:
            return None
        started = parse_iso(self.running.started_at)
        return None if started is None else (utcnow() - started).total_seconds()


async def project_rows(core: Deployster) -> list[ProjectRow]:
    projects = await core.projects.all()
    if not projects:
        return []
    keys = core.keys
    async with core.redis.pipeline(transaction=False) as pipe:
        for p in projects:
            pipe.get(keys.lock(p.id))
            pipe.pttl(keys.lock(p.id))
            pipe.llen(keys.queue(p.id))
        raw = cast(list[Any], await pipe.execute())
    owners = [raw[i * 3] for i in range(len(projects))]
    jobs = {j.id: j for j in await core.jobs.get_many([o for o in owners if o])}
    last = await store.select_last_finished(core.db)
    now = time.time()
    rows = []
    for i, p in enumerate(projects):
        owner, ttl, qlen = raw[i * 3], raw[i * 3 + 1], raw[i * 3 + 2]
        job = jobs.get(owner) if owner else None
        beat = job.extra.get("heartbeat") if job else None
        rows.append(
            ProjectRow(
                project=p,
                lock_owner=owner,
                lock_ttl_ms=int(ttl) if owner else None,
                running=job,
                heartbeat_age=(now - float(beat)) if beat else None,
                queue_length=int(qlen),
                last=last.get(p.id),
            )
        )
    return rows


async def queued_jobs(core: Deployster, project_id: int) -> list[Job]:
    """The project's queue, in order."""
    return await core.jobs.get_many(await core.queue.queued_ids(project_id))


async def history(
    core: Deployster, project_id: int, *, before: str | None = None, limit: int = 50
) -> list[Job]:
    return await store.select_deployments(core.db, project_id=project_id, before=before,
                                          limit=limit)


async def log_tail(core: Deployster, job_id: str, *, max_bytes: int = 256 * 1024) -> str:
    """The end of a job's log: the live stream, else history."""
    parts: list[str] = []
    size = 0
    async for _, text in read_log(core.redis, core.keys, job_id):
        parts.append(text)
        size += len(text)
        while size > max_bytes and len(parts) > 1:
            size -= len(parts.pop(0))
    if parts:
        return "".join(parts)[-max_bytes:]
    return (await store.select_deployment_log(core.db, job_id) or "")[-max_bytes:]
