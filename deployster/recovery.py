"""Crash recovery: jobs whose runner is gone end ``interrupted`` (issue #3).

Each dispatcher announces itself with a short-lived key holding its host, boot
id, pid and the pid's start time, refreshed every couple of seconds. A job in
the ``running`` registry whose runner's key expired — or names a process on
this machine that no longer exists — was orphaned by a crash: its process
group is ended (only after checking, through /proc, that the pgid still names
the process we started), it is recorded failed/interrupted, and the lock
passes to the next queued job. Server start-up runs this at once, so after a
``kill -9`` the queue moves within seconds, not after the lock TTL.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from typing import Any

from . import logstream
from .models import Job, JobStatus, Reason
from .procinfo import boot_id, hostname, pid_alive, process_identity
from .runner import kill_group
from .service import Deployster

log = logging.getLogger("deployster.recovery")

RUNNER_TTL = 10  # seconds a runner's announcement lives without a refresh
RUNNER_REFRESH = 2.0


def runner_announcement() -> str:
    pid = os.getpid()
    return json.dumps({"host": hostname(), "boot": boot_id(), "pid": pid,
                       "pid_start": process_identity(pid)})


async def announce(core: Deployster) -> None:
    await core.redis.set(core.keys.runner(core.runner_id), runner_announcement(), ex=RUNNER_TTL)


async def withdraw(core: Deployster) -> None:
    await core.redis.delete(core.keys.runner(core.runner_id))


def _alive(info: dict[str, Any]) -> bool:
    if info.get("host") != hostname():
        return True  # another machine's runner: its key's TTL is the only signal
    if info.get("boot") != boot_id():
        return False  # this machine rebooted since
    pid = info.get("pid")
    if not isinstance(pid, int):
        return True
    start = info.get("pid_start")
    return process_identity(pid) == start if start else pid_alive(pid)


async def runner_alive(core: Deployster, runner_id: str | None) -> bool:
    if not runner_id:
        return False
    if runner_id == core.runner_id:
        return True
    raw = await core.redis.get(core.keys.runner(runner_id))
    if raw is None:
        return False
    try:
        info = json.loads(raw)
    except ValueError:
        return True
    return _alive(info) if isinstance(info, dict) else True


async def end_process_group(job: Job, grace: float) -> bool:
    """SIGTERM, then SIGKILL, the job's process group if it is still ours."""
    pgid, ident = job.extra.get("pgid"), job.extra.get("pg_ident")
    if not pgid or not ident or job.extra.get("host") != hostname():
        return False
    if process_identity(int(pgid)) != ident:
        return False  # gone, or the pid now names another process
    kill_group(int(pgid), signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and process_identity(int(pgid)) == ident:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    kill_group(int(pgid), signal.SIGKILL)
    return True


async def end_orphan(core: Deployster, job: Job, reason: str, runner: str | None) -> str | None:
    """End a running job whose runner is gone; returns the job started next."""
    killed = await end_process_group(job, core.settings.kill_grace)
    notes = {Reason.INTERRUPTED.value: "the server running this job stopped",
             Reason.CANCELLED.value: "cancelled"}
    note = notes.get(str(reason), str(reason))
    await logstream.append(
        core.redis, core.keys, job.id,
        f"\n[deployster] job ended: {note}{' (its processes were stopped)' if killed else ''}\n",
    )
    result = await core.queue.finish(job, JobStatus.FAILED, reason=reason, runner=runner)
    if result.ended:
        log.warning("job %s ended %s: its runner is gone", job.id, reason)
    return result.next_job


async def recover(core: Deployster, *, runner: str | None) -> list[str]:
    """End every orphaned running job; returns the jobs claimed for ``runner``."""
    running = await core.jobs.running()
    verdicts: dict[str, bool] = {}
    started = []
    for job_id, owner in running.items():
        if owner not in verdicts:
            verdicts[owner] = await runner_alive(core, owner)
        if verdicts[owner]:
            continue
        job = await core.jobs.get(job_id)
        if job is None or job.status is not JobStatus.RUNNING:
            await core.redis.hdel(core.keys.running, job_id)
            continue
        nxt = await end_orphan(core, job, Reason.INTERRUPTED, runner)
        if nxt:
            started.append(nxt)
    return started
