"""Operator controls shared by the HTTP API, the CLI and the dashboard.

Each control changes state through the queue's atomic scripts and records an
audit event, so the history says who did what to which job.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import cast

from . import events, store
from .access import Principal
from .errors import Conflict, NotFound
from .models import Job, JobStatus, Project, Reason
from .queue import EnqueueResult
from .recovery import end_orphan, runner_alive
from .service import Deployster


async def cancel_job(
    core: Deployster, job_id: str, *, actor: str = "admin", wait: float = 10.0,
    principal: Principal | None = None,
) -> Job:
    """Cancel a queued or running job; returns its record afterwards.

    A queued job leaves the queue at once. A running job's runner is told to end
    its process group (SIGTERM, then SIGKILL after the grace period); if that
    runner is gone (crashed server) the job is ended here. Waits up to ``wait``
    seconds for the end. A finished job raises ``Conflict`` (409). A job of a
    project ``principal`` may not see raises ``NotFound``, as an unknown one.
    """
    job = await core.visible_job(job_id, principal)
    if job is None:
        raise NotFound(f"no job {job_id!r}")
    if job.status.finished:
        raise _already_finished(job)
    before = await core.queue.cancel(job)
    if before == "":  # the live record expired between the two reads
        raise NotFound(f"no job {job_id!r}")
    if before not in (JobStatus.QUEUED, JobStatus.RUNNING):
        finished = await core.job(job_id)
        raise _already_finished(finished or job)
    await store.insert_audit_event(
        core.db, actor=actor, action="job.cancel", project_id=job.project_id, job_id=job.id,
        detail={"status_before": before, "project": job.project},
    )
    if before == JobStatus.RUNNING and not await runner_alive(core, job.extra.get("runner")):
        await end_orphan(core, job, Reason.CANCELLED, runner=None)
    deadline = time.monotonic() + wait
    while True:
        current = await core.job(job_id)
        if current is None or current.status.finished or time.monotonic() >= deadline:
            return current or job
        await asyncio.sleep(0.05)


def _already_finished(job: Job) -> Conflict:
    state = job.status.value + (f" ({job.reason})" if job.reason else "")
    return Conflict(f"job {job.id} has already finished: {state}; nothing to cancel",
                    code="job_finished")


async def release_lock(
    core: Deployster, project_id: int, owner: str, *, actor: str = "admin"
) -> bool:
    """Release a project's lock if ``owner`` (the holder the operator saw) still
    holds it: compare-and-set, so a newer lock is never deleted. Wakes the queue
    (dispatchers claim the next job at once; a job still marked running without
    the lock ends lock_lost). Records an audit event either way."""
    state = await core.lock.state(project_id)
    released = await core.lock.release(project_id, owner, actor=actor)
    await store.insert_audit_event(
        core.db, actor=actor, action="lock.release", project_id=project_id, job_id=owner,
        detail={"released": released, "ttl_ms": state.ttl_ms,
                "holder_now": state.owner if not released else None},
    )
    return released


# Seconds a stopped job's processes get to exit on top of DEPLOYSTER_KILL_GRACE
# (SIGTERM, the grace, SIGKILL, then seen gone) before a forced removal gives up.
STOP_MARGIN = 10.0
# Seconds a history drop waits for the history writer to copy the project's
# jobs that ended a moment ago: dropped first, they would be written back.
DRAIN_WAIT = 5.0
# Redis keys deleted per round trip when a history drop forgets job records.
DELETE_BATCH = 500


async def project_jobs(core: Deployster, project_id: int) -> tuple[list[Job], list[Job]]:
    """The project's queued jobs, in queue order, and its running ones (those
    in the running registry, and the lock's holder while its record says
    running)."""
    queued = [j for j in await core.jobs.get_many(await core.queue.queued_ids(project_id))
              if j.status is JobStatus.QUEUED]
    holder = (await core.lock.state(project_id)).owner
    candidates = dict.fromkeys([*await core.jobs.running(), *([holder] if holder else [])])
    running = [j for j in await core.jobs.get_many(list(candidates))
               if j.project_id == project_id and j.status is JobStatus.RUNNING]
    return queued, running


def _jobs_text(queued: list[Job], running: list[Job]) -> str:
    parts = []
    if queued:
        parts.append(f"{len(queued)} queued job{'s' if len(queued) != 1 else ''}")
    if running:
        parts.append(f"a running job ({', '.join(j.id for j in running)})")
    return " and ".join(parts)


async def _stop_jobs(
    core: Deployster, jobs: list[Job], *, actor: str, wait: float
) -> tuple[list[str], list[str]]:
    """Cancel ``jobs`` as ``cancel_job`` does (an audit event each), then wait
    up to ``wait`` seconds for the running ones to end. Returns (the ids
    cancelled, the ids still running). A job that ended meanwhile is skipped."""
    cancelled: list[str] = []
    for job in jobs:
        try:
            await cancel_job(core, job.id, actor=actor, wait=0)
        except (Conflict, NotFound):
            continue
        cancelled.append(job.id)
    pending = [j.id for j in jobs if j.status is JobStatus.RUNNING and j.id in cancelled]
    deadline = time.monotonic() + wait
    while pending and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        pending = [j.id for j in await core.jobs.get_many(pending) if not j.status.finished]
    return cancelled, pending


@dataclass(frozen=True)
class Removal:
    """What ``remove_project`` did."""

    project: Project
    cancelled: list[str] = field(default_factory=list)  # job ids it cancelled
    dropped: int | None = None  # deployments deleted from the history; None: kept


async def remove_project(
    core: Deployster, project: Project, *, force: bool = False, drop_history: bool = False,
    actor: str = "admin",
) -> Removal:
    """Remove a project: its row (its token stops working at once), its live
    state in Redis and, with ``drop_history``, its history; records an audit
    event (``project.remove``).

    A project with queued or running jobs raises ``Conflict``
    (``project_busy``), nothing changed, unless ``force``: then its queued
    jobs are cancelled and its running one stopped as ``cancel_job`` does
    (each an audit event), and the removal waits up to the kill grace plus
    ``STOP_MARGIN`` seconds for it to end; still running then, it raises
    ``Conflict`` and the project stays (its cancels stand).

    The history is kept by default: ``deployster job list`` still shows the
    project's deploys, under its name.
    """
    queued, running = await project_jobs(core, project.id)
    if (queued or running) and not force:
        raise Conflict(
            f"project {project.name!r} has {_jobs_text(queued, running)}; nothing was "
            "removed. Wait for its jobs to end or cancel them, or remove it with --force "
            "(which cancels them)", code="project_busy")
    wait = core.settings.kill_grace + STOP_MARGIN
    cancelled, still = await _stop_jobs(core, [*queued, *running], actor=actor, wait=wait)
    if still:
        raise Conflict(
            f"job {still[0]} of project {project.name!r} was told to stop but still runs "
            f"after {wait:g}s; the project was not removed (its queued jobs stay "
            "cancelled): run the removal again once the job has ended", code="project_busy")
    await core.projects.remove(project)
    # A deploy accepted meanwhile by a server whose cache still held the
    # project would only fail ``invalid``: it is cancelled now, and said so.
    late_queued, late_running = await project_jobs(core, project.id)
    late, _ = await _stop_jobs(core, [*late_queued, *late_running], actor=actor, wait=wait)
    cancelled += late
    holder = (await core.lock.state(project.id)).owner
    if holder is not None:  # a holder that no longer runs (a stale lock)
        await core.lock.release(project.id, holder)
    await core.queue.forget(project.id)
    dropped = await _drop_history(core, project.id) if drop_history else None
    await store.insert_audit_event(
        core.db, actor=actor, action="project.remove", project_id=project.id,
        detail={"name": project.name, "path": project.path, "cancelled": cancelled,
                "history": "kept" if dropped is None else "dropped",
                "deployments_dropped": dropped},
    )
    return Removal(project, cancelled, dropped)


async def _drop_history(core: Deployster, project_id: int) -> int:
    """Delete the project's deployments from the history and their live
    records and logs from Redis; returns how many jobs went.

    A job that ended a moment ago (a cancel above) is copied to SQL by the
    history writer of a running server within a second or so: deleted before
    that, its row would be written back. So this first waits, up to
    ``DRAIN_WAIT`` seconds, for the project's jobs to leave the ``dirty``
    hash, then takes what is left there out of the writer's hands."""
    deadline = time.monotonic() + DRAIN_WAIT
    while True:
        waiting = cast(list[str], await core.redis.hkeys(core.keys.dirty))
        pending = [j.id for j in await core.jobs.get_many(waiting) if j.project_id == project_id]
        if not pending or time.monotonic() >= deadline:
            break
        await asyncio.sleep(0.2)
    ids = sorted(set(await store.select_deployment_ids(core.db, project_id)) | set(pending))
    for start in range(0, len(ids), DELETE_BATCH):
        chunk = ids[start:start + DELETE_BATCH]
        async with core.redis.pipeline(transaction=False) as pipe:
            pipe.hdel(core.keys.dirty, *chunk)
            pipe.delete(*(key for i in chunk for key in (core.keys.job(i), core.keys.log(i))))
            await pipe.execute()
    await store.delete_deployments(core.db, project_id)
    if ids:  # a dashboard showing the history reads it again
        await core.redis.publish(core.keys.feed, events.encode(events.HISTORY))
    return len(ids)


def redeploy_refusal(job: Job) -> Conflict | None:
    """Why ``job`` cannot be redeployed, or None when it can.

    A command that held a secret (a stage value, the admin token, a project
    token) is stored with it masked and the text as sent is gone once the job
    ended: running it again would run ``***``. Decided by the flag stored with
    the job, never by ``***`` in the text (a command may print that itself).
    """
    if not job.commands_masked:
        return None
    return Conflict(
        f"job {job.id} cannot be redeployed: its commands held a secret (a stage "
        "value, the admin token or a project token), stored masked; move the value "
        f"into a stage variable of project {job.project!r} (commands read it as "
        "$NAME) and deploy again",
        code="secret_in_commands",
    )


async def redeploy(
    core: Deployster, job_id: str, *, actor: str = "admin",
    principal: Principal | None = None, run_here: bool = False,
) -> tuple[EnqueueResult, Job]:
    """Queue a past job again: its commands, its ref, and the very commit it
    deployed (``deployed_sha`` when its project pins commits), so with a git
    source this is a true rollback to that code. The stage's variables are the
    project's as of now. The new job goes through the queue and the lock like
    any deploy and records ``redeploy_of``. Returns (the queue's answer, the
    job redeployed).

    It is queued for the node of the job's project (README.md#several-hosts),
    whichever node this is: the same path on this node is another project.

    Raises ``NotFound`` (also for a job ``principal`` may not see), and
    ``Conflict`` (nothing queued) for a job whose commands held a secret
    (``redeploy_refusal``).
    """
    from .service import DeployRequest

    job = await core.visible_job(job_id, principal)
    if job is None:
        raise NotFound(f"no job {job_id!r}")
    if (refused := redeploy_refusal(job)) is not None:
        raise refused
    # The project's node as it is now (a job from before nodes names none).
    project = await core.projects.get(job.project_id)
    result = await core.submit(
        DeployRequest(cd=job.cd, commands=job.commands,
                      commit_hash=job.deployed_sha or job.commit_hash, ref_name=job.ref_name,
                      redeploy_of=job.id,
                      node=project.node if project is not None and project.node else job.node),
        run_here=run_here, started_by=actor, principal=principal,
    )
    await store.insert_audit_event(
        core.db, actor=actor, action="job.redeploy", project_id=job.project_id,
        job_id=result.job_id, detail={"from": job.id},
    )
    return result, job


def deployed_commit(job: Job) -> str:
    """The commit a job put in place: the one checked out, else the one asked for."""
    return job.deployed_sha or job.commit_hash


async def completed_jobs(core: Deployster, project_id: int, *, limit: int = 200) -> list[Job]:
    """The project's complete jobs, newest first: the SQL history, plus those
    that ended a moment ago and are not in it yet (the history writer copies a
    job shortly after its end)."""
    # The pending ids first: the writer clears one only once its row is in
    # SQL, so a job copied between the two reads is in one of them.
    pending = cast(list[str], await core.redis.hkeys(core.keys.dirty))
    jobs = {j.id: j for j in await store.select_deployments(
        core.db, project_id=project_id, limit=limit, status=JobStatus.COMPLETE.value)}
    for job in await core.jobs.get_many(list(pending)):
        if job.project_id == project_id:
            jobs[job.id] = job
    return sorted((j for j in jobs.values() if j.status is JobStatus.COMPLETE),
                  key=lambda j: j.id, reverse=True)


def rollback_target(project: Project, done: list[Job]) -> tuple[Job, Job]:
    """What a rollback without ``to`` does, from the project's complete jobs
    newest first (``completed_jobs``): (the job deployed now, the newest
    complete job of another commit, which it redeploys). Raises ``Conflict``
    ``nothing_to_roll_back`` when there is none. The dashboard asks with it
    before it acts, so that its confirmation names what ``rollback`` does."""
    current = deployed_commit(done[0]) if done else None
    earlier = [j for j in done if deployed_commit(j) != current]
    if not earlier:
        raise Conflict(
            f"project {project.name!r} has no complete deploy of another commit than "
            f"the one deployed now ({(current or 'none')[:12]}); nothing to roll back to",
            code="nothing_to_roll_back")
    return done[0], earlier[0]


async def rollback(
    core: Deployster, project: Project, *, to: str | None = None, actor: str = "admin",
    principal: Principal | None = None, run_here: bool = False,
) -> tuple[EnqueueResult, Job, str | None]:
    """Redeploy the newest complete job whose commit differs from the one
    deployed now (or job ``to``, which must be the project's). Returns (the
    queue's answer, the job redeployed, the commit deployed now or None).

    Raises ``NotFound`` for an unknown ``to`` or one of another project,
    ``Conflict`` when there is nothing earlier to go back to.
    """
    if principal is not None and not principal.can_see(project.id):
        raise NotFound(f"no project {project.name!r}")
    done = await completed_jobs(core, project.id)
    current = deployed_commit(done[0]) if done else None
    if to is not None:
        target = await core.visible_job(to, principal)
        if target is None or target.project_id != project.id:
            raise NotFound(f"no job {to!r} of project {project.name!r}")
    else:
        _, target = rollback_target(project, done)
    result, _ = await redeploy(core, target.id, actor=actor, principal=principal,
                               run_here=run_here)
    return result, target, current
