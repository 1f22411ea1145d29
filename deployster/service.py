"""The core, assembled: one object the server, the dashboard and the CLI share.

``Deployster.open(settings)`` connects Redis (starting the embedded one when no
URL is set) and the database (migrating it), and exposes the operations the
front ends need. It knows nothing about HTTP or terminals.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import Any

from databases import Database

from . import store
from .db import connect_database
from .errors import NotFound
from .ids import is_job_id, new_job_id
from .jobs import JobRecords, StatusRead
from .keys import Keys
from .lock import DeployLock
from .models import Job, JobStatus
from .projects import ProjectRegistry
from .queue import EnqueueResult, JobQueue
from .redis_conn import REDIS_DOWN, Redis, connect_redis
from .settings import Settings
from .validation import check_commands


@dataclass(frozen=True)
class DeployRequest:
    cd: str
    commands: list[str]
    commit_hash: str
    ref_name: str


class Deployster:
    def __init__(self, settings: Settings, redis: Redis, db: Database) -> None:
        self.settings = settings
        self.redis = redis
        self.db = db
        self.keys = Keys(settings.namespace)
        self.lock = DeployLock(redis, self.keys)
        self.queue = JobQueue(redis, self.keys)
        self.jobs = JobRecords(redis, self.keys)
        self.projects = ProjectRegistry(db, redis, self.keys, settings)
        # Identifies this process as the runner of the jobs it claims.
        self.runner_id = uuid.uuid4().hex[:12]
        # Per project: a job id is taken and queued as one step, so concurrent
        # requests reach the queue in id order (acceptance order == id order).
        self._submit_locks: dict[int, asyncio.Lock] = {}

    @classmethod
    async def open(cls, settings: Settings) -> Deployster:
        redis = await connect_redis(settings)
        try:
            db = await connect_database(settings.effective_database_url)
        except BaseException:
            await redis.aclose()
            raise
        return cls(settings, redis, db)

    async def close(self) -> None:
        await self.redis.aclose()
        await self.db.disconnect()

    # ----------------------------------------------------------------- deploy
    async def submit(
        self, request: DeployRequest, *, run_here: bool = True, started_by: str = "admin"
    ) -> EnqueueResult:
        """Validate and queue a deploy; with ``run_here`` a free lock starts it now.

        Nothing is stored unless every check passed. When the result's
        ``started`` is set the caller's dispatcher must run that job.
        """
        check_commands(request.commands)
        project = await self.projects.for_deploy(request.cd)
        stage = project.stage_for(request.ref_name)
        # Take the id and queue the job under the project's lock: ids are taken
        # in order, so without it a later id could reach the queue first.
        async with self._submit_locks.setdefault(project.id, asyncio.Lock()):
            job = Job(
                id=new_job_id(),
                project_id=project.id,
                project=project.name,
                cd=project.path,
                commands=list(request.commands),
                commit_hash=request.commit_hash,
                ref_name=request.ref_name,
                stage=stage.stage_name if stage else None,
                lock_ttl_ms=int(project.lock_ttl * 1000),
                timeout=project.timeout,
                started_by=started_by,
            )
            return await self.queue.enqueue(
                job, runner=self.runner_id if run_here else None, policy=project.queue_policy
            )

    # ----------------------------------------------------------------- reads
    async def job(self, job_id: str) -> Job | None:
        """The live record, or the history row once Redis has let it go."""
        if not is_job_id(job_id):
            return None
        job = await self.jobs.get(job_id)
        if job is None:
            job = await store.select_deployment(self.db, job_id)
        return job

    async def read_status(self, job_id: str) -> tuple[StatusRead, Job | None]:
        """The /status read: status plus output since the previous call."""
        if not is_job_id(job_id):
            raise NotFound(f"no job {job_id!r}")
        read = await self.jobs.read_status(job_id)
        if read is not None:
            job = await self.jobs.get(job_id) if read.status is JobStatus.QUEUED else None
            return read, job
        # Finished long ago: Redis let the record go, history has all of it.
        job = await store.select_deployment(self.db, job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}")
        log = await store.select_deployment_log(self.db, job_id) or ""
        return StatusRead(job.status, job.reason, log, job.superseded_by), job

    async def queue_position(self, job: Job) -> int | None:
        return await self.queue.position(job.project_id, job.id)

    # ----------------------------------------------------------------- health
    async def health(self) -> dict[str, Any]:
        async def redis_ok() -> str:
            try:
                await asyncio.wait_for(self.redis.ping(), 2)
                return "ok"
            except (*REDIS_DOWN, TimeoutError) as exc:
                return f"down: {type(exc).__name__}"

        async def db_ok() -> str:
            try:
                await asyncio.wait_for(self.db.fetch_val("SELECT 1"), 2)
                return "ok"
            except Exception as exc:  # any driver error means "down" here
                return f"down: {type(exc).__name__}"

        redis_state, db_state = await asyncio.gather(redis_ok(), db_ok())
        ok = redis_state == "ok" and db_state == "ok"
        return {"status": "ok" if ok else "degraded", "redis": redis_state, "database": db_state}
