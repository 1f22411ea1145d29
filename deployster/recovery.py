"""Crash recovery: jobs whose runner is gone end ``interrupted``
(docs/runner.md#crash-recovery).

Each dispatcher announces itself with a short-lived key holding its host, boot
id, pid and the pid's start time, refreshed every couple of seconds, and
lists itself in a registry of runners (``Keys.runners``), through which a
reader such as the dashboard finds the live ones (``live_runners``). A job in
the ``running`` registry whose runner's key expired — or names a process on
this machine that no longer exists — was orphaned by a crash: its process
group is ended (only after checking, through /proc, that the pgid still names
the process we started), it is recorded failed/interrupted, and the lock
passes to the next queued job. Server start-up runs this at once, so after a
``kill -9`` the queue moves within seconds, not after the lock TTL.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, cast

from . import fleet, procgroups
from .models import Job, JobStatus, Reason
from .procinfo import boot_id, hostname, pid_alive, process_identity
from .service import Deployster

log = logging.getLogger("deployster.recovery")

RUNNER_TTL = 10  # seconds a runner's announcement lives without a refresh
RUNNER_REFRESH = 2.0
# Milliseconds a runner stays in the registry after its announcement expired:
# its expiry is a hint written with another machine's clock (the key's TTL
# decides), and a runner gone for longer is forgotten.
FORGET_AFTER_MS = 60_000


def runner_announcement(node: str = "") -> str:
    pid = os.getpid()
    return json.dumps({"host": hostname(), "boot": boot_id(), "pid": pid,
                       "pid_start": process_identity(pid), "node": node})


async def announce(core: Deployster) -> None:
    """This runner's key and registry entry, and its node's heartbeat
    (``fleet.announcement``), in one round trip."""
    now_ms = int(time.time() * 1000)
    async with core.redis.pipeline(transaction=False) as pipe:
        pipe.set(core.keys.runner(core.runner_id), runner_announcement(core.node), ex=RUNNER_TTL)
        pipe.hset(core.keys.nodes, core.node, fleet.announcement(core))
        pipe.zadd(core.keys.runners, {core.runner_id: now_ms + RUNNER_TTL * 1000})
        pipe.zremrangebyscore(core.keys.runners, "-inf", now_ms - FORGET_AFTER_MS)
        await pipe.execute()


async def withdraw(core: Deployster) -> None:
    async with core.redis.pipeline(transaction=False) as pipe:
        pipe.delete(core.keys.runner(core.runner_id))
        pipe.zrem(core.keys.runners, core.runner_id)
        await pipe.execute()


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
    return raw is not None and announced_alive(raw)


def announced_alive(raw: str | bytes) -> bool:
    """Whether the runner whose announcement is ``raw`` still runs, as far as
    this machine can tell (an announcement it cannot read counts as alive)."""
    try:
        info = json.loads(raw)
    except ValueError:
        return True
    return _alive(info) if isinstance(info, dict) else True


async def live_runners(core: Deployster) -> list[str]:
    """The ids of the dispatchers running now, on any machine: listed in the
    registry, their announcement still there, and on this machine their
    process still the one that announced. Two round trips, however big Redis
    is (no scan)."""
    since = int(time.time() * 1000) - FORGET_AFTER_MS
    ids = cast(list[str], await core.redis.zrangebyscore(core.keys.runners, since, "+inf"))
    if not ids:
        return []
    raws = cast(list[str | None], await core.redis.mget([core.keys.runner(i) for i in ids]))
    return [i for i, raw in zip(ids, raws, strict=True)
            if raw is not None and announced_alive(raw)]


def on_another_host(job: Job) -> bool:
    """The job's processes run on another machine (its record says which)."""
    host = job.extra.get("host")
    return bool(host) and host != hostname()


async def end_processes(job: Job, grace: float) -> bool:
    """End every process of ``job`` on this machine, as a cancel does (SIGTERM,
    up to ``grace`` seconds for all of them to exit, SIGKILL, then seen gone);
    True if there were any.

    Its recorded process group counts only while the group's leader is still
    the process we started (a pid alone may name something else by now); and
    any group holding a process whose environment names the job counts too,
    so a group started just before a crash, before it was recorded, or left
    behind by an earlier command, is found all the same.
    """
    groups = procgroups.job_groups(job.id)
    pgid, ident = job.extra.get("pgid"), job.extra.get("pg_ident")
    if pgid and ident and process_identity(int(pgid)) == ident:
        groups.add(int(pgid))
    if not groups:
        return False
    return bool((await procgroups.stop_groups(groups, grace)).signalled)


async def end_orphan(core: Deployster, job: Job, reason: str, runner: str | None) -> str | None:
    """End a running job whose runner is gone; returns the job started next.

    Its processes are seen gone before the lock is freed. Another node's job
    (a fleet, README.md#several-hosts) is ended without touching its processes, which
    run on that node's host: the node's own recovery stops them when it
    comes back (``end_leftovers``); its next job is left queued for it. A
    job of no node whose processes run on another machine is left alone:
    that machine's lease guard ends them before the lock expires (see
    ``leaseguard.py``); the next claim then ends the job.
    """
    elsewhere = bool(job.node) and job.node != core.node
    if not elsewhere and on_another_host(job):
        return None
    if elsewhere or not await core.projects.owns(job.project_id):
        runner = None  # its node claims the next job, not this one
    killed = False if elsewhere else await end_processes(job, core.settings.kill_grace)
    notes = {Reason.INTERRUPTED.value: f"the server running this job (node {job.node}) stopped"
             if elsewhere else "the server running this job stopped",
             Reason.CANCELLED.value: "cancelled"}
    note = notes.get(str(reason), str(reason))
    result = await core.queue.finish(
        job, JobStatus.FAILED, reason=reason, runner=runner,
        closing=f"job ended: {note}{' (its processes were stopped)' if killed else ''}",
    )
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


async def end_leftovers(core: Deployster) -> int:
    """At start-up: stop this node's job processes that outlived their job.

    A job of this node whose server died (``kill -9``) may have been ended by
    another node meanwhile (``end_orphan``), which cannot reach this host's
    processes: they are found here by their environment (the job's id and this
    node's name, ``runner.child_env``) and stopped as a cancel would, unless
    their job still runs under a live runner. Returns how many jobs had some."""
    found = procgroups.node_job_groups(core.node)
    if not found:
        return 0
    ended = 0
    running = await core.jobs.running()
    for job_id, groups in found.items():
        job = await core.jobs.get(job_id)
        if job is None or job.node not in (None, core.node):
            continue  # another deployster's (namespace) or another node's job
        if job.status is JobStatus.RUNNING and await runner_alive(core, running.get(job_id)):
            continue
        if (await procgroups.stop_groups(groups, core.settings.kill_grace)).signalled:
            ended += 1
            log.warning("job %s (%s) left processes running on this host; stopped them",
                        job_id, job.status.value)
    return ended
