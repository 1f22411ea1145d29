"""What the operator's dashboard shows, read through the core (README.md#the-dashboard).

One call builds every project's row from a single Redis script (lock owner,
its TTL, queue length) plus the running jobs' records and one SQL query for
the last finished and last complete deployments (``store.select_last_deploys``),
so a refresh costs a few round trips whatever the number of projects or the
size of the history.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any, cast

from . import store
from .access import Principal
from .clock import parse_iso, utcnow
from .control import deployed_commit
from .estimate import StartEstimate
from .events import Event, decode
from .logstream import read_log
from .models import Job, JobStatus, Project
from .service import Deployster
from .store import LastDeploys
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
    # The last complete deployment: its commit is the one deployed now
    # (``control.deployed_commit``); None when no deploy ever completed.
    deployed: Job | None = None

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


async def project_rows(
    core: Deployster, *, last: dict[int, LastDeploys] | None = None
) -> list[ProjectRow]:
    """Every project's row. ``last`` (project id -> its last finished and last
    complete job, as the previous rows had them) skips the SQL query: a caller
    that knows the history has not moved since (no ``history`` event) saves
    most of a refresh's cost; ``last={}`` reads Redis only."""
    projects = await core.projects.all()
    if not projects:
        return []
    # Every lock and queue length in one command (redis_scripts/locks_and_queues.lua).
    raw = cast(list[Any], await core.scripts.locks_and_queues([p.id for p in projects]))
    owners = [raw[i * 3] for i in range(len(projects))]
    jobs = {j.id: j for j in await core.jobs.get_many([o for o in owners if o])}
    if last is None:
        last = await store.select_last_deploys(core.db)
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
                last=done.finished if (done := last.get(p.id)) else None,
                deployed=done.complete if done else None,
            )
        )
    return rows


def project_summary(row: ProjectRow) -> dict[str, Any]:
    """A project for an API reader: its settings, deploy steps and stages with
    the variables' names only (their values are secrets), its queue length,
    running job, and the commit deployed now (full, as ``deployed_commit``
    has it) with the job that deployed it (both None when nothing was)."""
    p = row.project
    deployed = row.deployed
    return {
        "id": p.id,
        "name": p.name,
        "node": p.node,
        "path": p.path,
        "lock_ttl": p.lock_ttl,
        "timeout": p.timeout,
        "queue_policy": p.queue_policy,
        **p.steps.to_dict(),
        "stages": [
            {"stage_name": s.stage_name, "git_branch": s.git_branch,
             "variables": [v.key for v in s.environment_variables]}
            for s in p.pipeline
        ],
        "queue_length": row.queue_length,
        "running_job": row.lock_owner,
        "deployed_commit": deployed_commit(deployed) if deployed else None,
        "deployed_job": deployed.id if deployed else None,
        **p.notify_dict(),
    }


async def deployed_jobs(core: Deployster) -> dict[int, Job]:
    """Each project's newest complete job (what is deployed now), as of now:
    the SQL history's, or a job that completed a moment ago and that the
    history writer has not copied yet (``control.completed_jobs`` counts those
    too). One SQL query (``store.select_last_deploys``) and two Redis round
    trips (the not-yet-copied ids, then their records).

    The not-yet-copied ids are read first: the writer clears an id only after
    its row is in SQL, so a job is never missed between the two reads."""
    pending = cast(list[str], await core.redis.hkeys(core.keys.dirty))
    found = {pid: d.complete for pid, d in (await store.select_last_deploys(core.db)).items()
             if d.complete is not None}
    for job in await core.jobs.get_many(pending):
        newest = found.get(job.project_id)
        if job.status is JobStatus.COMPLETE and (newest is None or job.id > newest.id):
            found[job.project_id] = job
    return found


async def project_summaries(
    core: Deployster, principal: Principal | None = None
) -> list[dict[str, Any]]:
    """Every project ``principal`` may see (all for the admin), as ``project_summary``."""
    rows = await project_rows(core, last={})  # locks and queues: Redis only
    deployed = await deployed_jobs(core)
    return [project_summary(replace(r, deployed=deployed.get(r.project.id))) for r in rows
            if principal is None or principal.can_see(r.project.id)]


# Queued jobs a project screen shows: the head of the queue, never all of it.
QUEUE_WINDOW = 50


@dataclass(frozen=True)
class QueueWindow:
    """The head of a project's queue, in order, and how many jobs are queued."""

    jobs: list[Job]
    total: int
    wait: StartEstimate  # what the queue waits for (estimate.py)


async def queued_jobs(core: Deployster, project_id: int, *,
                      limit: int = QUEUE_WINDOW) -> QueueWindow:
    """The first ``limit`` queued jobs of the project, the queue's length and
    its start estimate: three round trips and ``limit`` records, however long
    the queue."""
    (ids, total), wait = await asyncio.gather(core.queue.window(project_id, limit),
                                              core.queue.wait(project_id))
    return QueueWindow(await core.jobs.get_many(ids), total, wait)


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


@dataclass(frozen=True)
class LogChunk:
    """One stream entry's text and when it was written (epoch ms; None when the
    log came from history, which keeps the text only)."""

    text: str
    t: int | None


@dataclass(frozen=True)
class LogWindow:
    """The end of a job's log, bounded so a huge log never floods a reader."""

    chunks: list[LogChunk]
    last_id: str  # stream id to follow from ("0-0" when the stream is empty or gone)
    live: bool  # read from the live stream (else from history)
    truncated: bool  # older output was left out

    @property
    def text(self) -> str:
        return "".join(c.text for c in self.chunks)


def _chunk(fields: dict[str, str]) -> LogChunk:
    t = fields.get("t")
    return LogChunk(fields.get("d", ""), int(t) if t and t.isdigit() else None)


async def log_window(
    core: Deployster, job_id: str, *, max_bytes: int = 1024 * 1024, page: int = 500
) -> LogWindow:
    """The last ``max_bytes`` of a job's log, read newest-first from the stream
    (so a million-line log costs only the window), else from history."""
    key = core.keys.log(job_id)
    chunks: list[LogChunk] = []
    size = 0
    last_id: str | None = None
    upper = "+"
    truncated = False
    while size < max_bytes:
        entries = cast(
            list[tuple[str, dict[str, str]]],
            await core.redis.xrevrange(key, max=upper, min="-", count=page),
        )
        for entry_id, fields in entries:
            last_id = last_id or entry_id
            chunk = _chunk(fields)
            chunks.append(chunk)
            size += len(chunk.text)
            if size >= max_bytes:
                truncated = True
                break
        if len(entries) < page or truncated:
            break
        upper = f"({entries[-1][0]}"
    if last_id is not None:
        chunks.reverse()
        if size > max_bytes:  # cut the oldest chunk so the window holds max_bytes
            first = chunks[0]
            chunks[0] = LogChunk(first.text[size - max_bytes:], first.t)
        return LogWindow(chunks, last_id, True, truncated)
    full = await store.select_deployment_log(core.db, job_id) or ""
    return LogWindow([LogChunk(full[-max_bytes:], None)], "0-0", False, len(full) > max_bytes)


async def log_entries(
    core: Deployster, job_id: str, *, after: str = "0-0", page: int = 1000
) -> AsyncIterator[tuple[str, LogChunk]]:
    """(stream id, chunk) for every entry of a job's live log after ``after``:
    ``logstream.read_log`` with each entry's write time."""
    key = core.keys.log(job_id)
    start = f"({after}" if after != "0-0" else "-"
    while True:
        entries = cast(
            list[tuple[str, dict[str, str]]],
            await core.redis.xrange(key, min=start, max="+", count=page),
        )
        for entry_id, fields in entries:
            yield entry_id, _chunk(fields)
        if len(entries) < page:
            return
        start = f"({entries[-1][0]}"


async def watch_events(core: Deployster) -> AsyncIterator[dict[str, Any]]:
    """Decoded events (both channels), for as long as the caller reads.

    First comes ``{"type": "subscribed"}`` once both channels are listened to:
    whatever changed before that has no event, so the caller reads again."""
    pubsub = core.redis.pubsub()
    await pubsub.subscribe(core.keys.events, core.keys.feed)
    confirmations = 0
    try:
        async for message in pubsub.listen():
            kind = message.get("type")
            if kind == "message":
                yield decode(message["data"])
            elif kind == "subscribe":
                confirmations += 1
                if confirmations == 2:
                    yield {"type": Event.SUBSCRIBED}
    finally:
        await pubsub.aclose()
