"""The core, assembled: one object the server, the dashboard and the CLI share.

``Deployster.open(settings)`` connects Redis (starting the embedded one when no
URL is set) and the database (migrating it), and exposes the operations the
front ends need. It knows nothing about HTTP or terminals.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from databases import Database

from . import store, tokens
from .access import Principal
from .admin_token import AdminToken
from .clock import iso
from .db import connect_database, latest_version, schema_version
from .errors import DeploysterError, Forbidden, NotFound, Unreachable
from .ids import is_job_id, new_job_id
from .jobs import JobRecords, StatusRead
from .keys import Keys
from .lock import DeployLock
from .logformat import job_log
from .logstream import stream_end
from .masking import secret_mask
from .models import Job, JobStatus, Project
from .node import node_name
from .outages import classify, describe
from .projects import ProjectRegistry
from .queue import EnqueueResult, JobQueue
from .redis_conn import Redis, connect_redis
from .redis_scripts import Scripts
from .settings import Settings
from .validation import check_commands, check_text_fields

# The health check's write probe expires after this long (one key per namespace).
HEALTH_PROBE_TTL_MS = 60_000
# While the server starts, seconds between tries of a service that does not answer.
ANSWER_RETRY = 0.5

T = TypeVar("T")


async def _answering(attempt: Callable[[], Awaitable[T]], deadline: float, named: str) -> T:
    """``attempt()``'s result, tried again while it fails with an outage until
    ``deadline`` (``time.monotonic()``). Raises ``Unreachable``: "<named> does
    not answer: <why>" past the deadline, "<named> cannot be used: <why>" at
    once for any other failure (a refused login); a ``DeploysterError`` (an
    unsupported URL) goes through as it is."""
    while True:
        left = deadline - time.monotonic()
        try:
            return await asyncio.wait_for(attempt(), max(left, ANSWER_RETRY))
        except DeploysterError:
            raise
        except Exception as exc:
            why = " ".join((str(exc) or type(exc).__name__).split())
            if classify(exc) is None and not isinstance(exc, TimeoutError):
                raise Unreachable(f"{named} cannot be used: {why}") from None
            if time.monotonic() + ANSWER_RETRY >= deadline:
                raise Unreachable(f"{named} does not answer: {why}") from None
        await asyncio.sleep(ANSWER_RETRY)


@dataclass(frozen=True)
class DeployRequest:
    cd: str
    commands: list[str]
    commit_hash: str = ""
    ref_name: str = ""
    # The job this request redeploys (control.redeploy): never from a request body.
    redeploy_of: str | None = None
    # The node whose project this is (README.md#several-hosts); None: the receiving node.
    node: str | None = None


class Deployster:
    def __init__(self, settings: Settings, redis: Redis, db: Database) -> None:
        self.settings = settings
        self.redis = redis
        self.db = db
        self.keys = Keys(settings.namespace)
        self.lock = DeployLock(redis, self.keys)
        self.queue = JobQueue(redis, self.keys)
        self.jobs = JobRecords(redis, self.keys)
        # This host's node (deployster/node.py): its projects' jobs run here.
        self.node = node_name(settings)
        self.projects = ProjectRegistry(db, redis, self.keys, settings, self.node)
        # DEPLOYSTER_TOKEN, or the one kept in the data dir (followed as it rotates).
        self.admin_token = AdminToken(settings)
        # Identifies this process as the runner of the jobs it claims.
        self.runner_id = uuid.uuid4().hex[:12]

    @property
    def scripts(self) -> Scripts:
        """Every Lua script, registered once per Redis client (``lock``,
        ``queue`` and ``jobs`` share them); looked up at each use, so it follows
        ``redis`` when that is replaced."""
        return Scripts.of(self.redis, self.keys)

    @classmethod
    async def open(cls, settings: Settings) -> Deployster:
        redis = await connect_redis(settings)
        try:
            db = await connect_database(settings.effective_database_url)
        except BaseException:
            await redis.aclose()
            raise
        return cls(settings, redis, db)

    @classmethod
    async def open_answering(cls, settings: Settings, within: float) -> Deployster:
        """``open``, once Redis answers PING and the database connects, each
        given until ``within`` seconds from now (a service started beside
        this one may still be coming up). Raises ``Unreachable`` naming the
        first that does not answer, its URL's password masked, or at once for
        a failure that is no outage (a URL Redis cannot parse, a login the
        database refuses)."""
        deadline = time.monotonic() + within
        redis_named = f"Redis at {settings.redis_shown}" + (
            " (DEPLOYSTER_REDIS_URL)" if settings.redis_url else "")
        try:
            redis = await connect_redis(settings)
        except ValueError as exc:  # redis-py's word for a URL it cannot use
            raise Unreachable(f"{redis_named} cannot be used: {exc}") from None
        try:
            await _answering(redis.ping, deadline, redis_named)
            db = await _answering(
                lambda: connect_database(settings.effective_database_url), deadline,
                f"the database at {settings.database_shown}"
                + (" (DEPLOYSTER_DATABASE_URL)" if settings.database_url else ""))
        except BaseException:
            await redis.aclose()
            raise
        return cls(settings, redis, db)

    async def close(self) -> None:
        await self.redis.aclose()
        await self.db.disconnect()

    # ------------------------------------------------------------------- auth
    async def authenticate(self, sent: str | None, *, check: bool = True) -> Principal | None:
        """Who a request's token authenticates as (admin or one project); None:
        nobody. ``check`` False: see ``tokens.resolve``."""
        return await tokens.resolve(sent, admin_token=self.admin_token.current(),
                                    registry=self.projects, check=check)

    async def _check_scope(self, principal: Principal, cd: str) -> Project:
        """A project token deploys only to its own project's directory; returns
        that project.

        Checked before the project lookup, so a path that would self-register
        under DEPLOYSTER_ALLOWED_ROOTS is refused as well, and nothing is stored.
        The caller deploys to the project returned, never to ``cd`` resolved a
        second time: a symlink in ``cd`` swapped between two resolutions (the
        token's own commands can do that) must not land the job elsewhere.
        """
        assert principal.project_id is not None
        own = await self.projects.get(principal.project_id)
        named = await self.projects.match(cd, own.node if own is not None else None)
        if own is None or named is None or named.id != own.id:
            raise Forbidden(
                f"this token deploys only to project {principal.project!r}; "
                "use that project's directory as 'cd' (nothing was queued)",
                code="token_scope",
            )
        return own

    # ----------------------------------------------------------------- deploy
    async def submit(
        self,
        request: DeployRequest,
        *,
        run_here: bool = True,
        started_by: str | None = None,
        principal: Principal | None = None,
    ) -> EnqueueResult:
        """Validate and queue a deploy; with ``run_here`` a free lock starts it now.

        Nothing is stored unless every check passed. When the result's
        ``started`` is set the caller's dispatcher must run that job.
        ``principal`` (the caller) limits a project token to its own project;
        ``started_by`` defaults to its label ("admin" without one).
        """
        check_text_fields(cd=request.cd, commit_hash=request.commit_hash,
                          ref_name=request.ref_name)
        own: Project | None = None
        if principal is not None and not principal.is_admin:
            own = await self._check_scope(principal, request.cd)
        if started_by is None:
            started_by = principal.label if principal is not None else "admin"
        check_commands(
            request.commands,
            max_commands=self.settings.max_commands,
            max_command_bytes=self.settings.max_command_bytes,
        )
        if own is not None and request.node is not None and request.node != own.node:
            raise Forbidden(f"this token deploys only to project {own.name!r} on node "
                            f"{own.node!r} (nothing was queued)", code="token_scope")
        project = own if own is not None else await self.projects.for_deploy(
            request.cd, request.node)
        stage = project.stage_for(request.ref_name)
        # Stored and shown masked; the commands as sent are kept beside them
        # only when that changed something (see Job), for the runner alone.
        commands = list(request.commands)
        shown = secret_mask(project, self.admin_token.current()).commands(commands)
        masked = shown != commands
        # No await between taking the id and queue.enqueue sending it: enqueues
        # reach Redis in call order (see autopipe), so ids join a project's queue
        # in id order and acceptance order == id order.
        job = Job(
            id=new_job_id(),
            project_id=project.id,
            project=project.name,
            cd=project.path,
            commands=shown,
            raw_commands=commands if masked else None,
            commands_masked=masked,
            commit_hash=request.commit_hash,
            ref_name=request.ref_name,
            stage=stage.stage_name if stage else None,
            lock_ttl_ms=int(project.lock_ttl * 1000),
            timeout=project.timeout,
            started_by=started_by,
            redeploy_of=request.redeploy_of,
            node=project.node,
        )
        # Another node's job is queued, never claimed here: its node runs it
        # (the enqueued event wakes its dispatcher).
        here = run_here and project.node == self.node
        result = await self.queue.enqueue(
            job, runner=self.runner_id if here else None, policy=project.queue_policy,
            cap=self.settings.max_queue,
        )
        if not result.duplicate:
            job_log.info("job %s queued for %s (%s at %s)", result.job_id, project.name,
                         job.ref_name or "no ref", job.commit_hash or "no commit",
                         extra={"fields": {"event": "queued", "project": project.name,
                                           "job_id": result.job_id,
                                           "position": result.position}})
        return replace(result, project=project.name)

    # ----------------------------------------------------------------- reads
    async def job(self, job_id: str) -> Job | None:
        """The live record, or the history row once Redis has let it go."""
        if not is_job_id(job_id):
            return None
        job = await self.jobs.get(job_id)
        if job is None:
            job = await store.select_deployment(self.db, job_id)
        return job

    async def visible_job(self, job_id: str, principal: Principal | None) -> Job | None:
        """The job if it exists and ``principal`` may see it, else None: to a
        project token another project's job and an unknown id look the same."""
        job = await self.job(job_id)
        if job is None or (principal is not None and not principal.can_see(job.project_id)):
            return None
        return job

    async def find_job(self, job_id: str, principal: Principal | None = None) -> Job:
        """``visible_job``, raising NotFound ("no job <id>") instead of None:
        the 404 of ``GET /jobs/<id>``, its ``/logs`` and ``/stream``, the same
        for an unknown job and one ``principal`` may not see."""
        job = await self.visible_job(job_id, principal)
        if job is None:
            raise NotFound(f"no job {job_id}")
        return job

    async def job_record(
        self, job_id: str, principal: Principal | None = None
    ) -> dict[str, Any]:
        """``GET /jobs/<id>`` and ``deployster job show``: the record, with the
        queue position while queued and the log's size in bytes (``log_bytes``,
        the cursor of its end; None when unknown). Raises NotFound. The fields:
        docs/api.md#endpoints, ``GET /jobs/<job_id>``."""
        job = await self.find_job(job_id, principal)
        record = job.to_dict()
        # A command may hold a secret (CI expanded one into it): stored masked
        # (``submit``). Masked again here for rows stored before that, and for
        # a secret set since: a stage value added later is hidden too.
        project = await self.projects.get(job.project_id)
        admin = self.admin_token.current()
        record["commands"] = secret_mask(project, admin).commands(job.commands)
        record["commands_masked"] = job.commands_masked
        if job.status is JobStatus.QUEUED:
            record["position"], record["estimated_start_in"] = await self.queue_place(job)
        record["log_bytes"] = await self._log_bytes(job)
        return record

    async def _log_bytes(self, job: Job) -> int | None:
        """The log's length in bytes (its end cursor), None when unknown: the
        live stream's end, 0 before any output, else the history copy's size."""
        end = await stream_end(self.redis, self.keys, job.id)
        if end is not None:
            return end
        if not job.status.finished:
            return 0
        return await store.select_deployment_log_bytes(self.db, job.id)

    async def read_status(self, job_id: str, *, principal: Principal | None = None) -> StatusRead:
        """The /status read: status plus output since the previous call, and
        the queue position while queued; one Redis round trip (``status_read.lua``).

        A job ``principal`` may not see is reported exactly like an unknown one
        (``NotFound``), and its cursor is left where it was (the owner's reads
        lose nothing).
        """
        if not is_job_id(job_id):
            raise NotFound(f"no job {job_id!r}")
        visible = None if principal is None else principal.project_id
        trusted = None if principal is None else principal.trusted
        read = await self.jobs.read_status(job_id, visible=visible, trusted=trusted)
        if read is not None and read.sql_from is not None:
            # The finished job's log has left Redis (DEPLOYSTER_LOG_GRACE): the
            # rest comes from SQL, from the same byte on (docs/redis.md).
            log = ""
            if read.sql_from != "end":
                log = await store.select_deployment_log(self.db, job_id) or ""
            text = await self.jobs.sql_read(job_id, read, log.encode("utf-8"))
            return replace(read, logs=text)
        if read is not None:
            return read
        # Finished long ago: Redis let the record go, history has all of it.
        job = await store.select_deployment(self.db, job_id)
        if job is None or (principal is not None and not principal.can_see(job.project_id)):
            raise NotFound(f"no job {job_id!r}")
        log = await store.select_deployment_log(self.db, job_id) or ""
        return StatusRead(job.status, job.reason, log, job.superseded_by)

    async def queue_place(self, job: Job) -> tuple[int | None, float | None]:
        """A queued ``job``'s 1-based place in its project's queue and the
        seconds until it should start (``deployster/estimate.py``); each None
        when unknown (not in the queue; no history)."""
        position = await self.queue.position(job.project_id, job.id)
        if position is None:
            return None, None
        return position, (await self.queue.wait(job.project_id)).starts_in(position)

    # ----------------------------------------------------------------- health
    async def health(self) -> dict[str, Any]:
        async def redis_ok() -> str:
            # A write, not a PING: a Redis refusing writes (OOM answers PING)
            # cannot take a deploy, so it is down for this check.
            try:
                await asyncio.wait_for(
                    self.redis.set(self.keys.health, iso(), px=HEALTH_PROBE_TTL_MS), 2)
                return "ok"
            except Exception as exc:  # any error means "down" here, as for the database
                return f"down: {describe(exc)}"

        async def db_ok() -> str:
            # The schema too, not only a connection: a database dropped and
            # created again empty answers SELECT 1 and stores nothing.
            try:
                version = await asyncio.wait_for(schema_version(self.db), 2)
            except Exception as exc:  # any driver error means "down" here
                return f"down: {describe(exc)}"
            if version < latest_version():
                return f"down: schema at version {version}, this deployster needs " \
                       f"{latest_version()}; restart it to migrate"
            return "ok"

        redis_state, db_state = await asyncio.gather(redis_ok(), db_ok())
        ok = redis_state == "ok" and db_state == "ok"
        return {"status": "ok" if ok else "degraded", "redis": redis_state, "database": db_state}
