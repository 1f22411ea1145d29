"""The watchdog that guards a running job (docs/runner.md#the-watchdog).

Every second it checks, in one Lua call (``redis_scripts/beat.lua``), that the
job is still the one the lock names: it records a heartbeat (the dashboard shows
its age), renews the lock's TTL every TTL/3 (the lock's life: ``lock.py``), and
sees a cancel request. If the lock is no longer the job's (it expired while the
process was paused, or an operator released it) the job is stopped with
``lock_lost``; if someone else already ended the job (its fence moved on), the
runner is stale and stops without writing anything.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable

from .keys import Keys
from .models import Job, Reason
from .redis_conn import REDIS_DOWN, Redis
from .redis_scripts import Scripts
from .runner import Runner

log = logging.getLogger("deployster.watchdog")

HEARTBEAT_INTERVAL = 1.0

# What a beat answers (beat.lua).
OK, CANCEL_REQUESTED, LOCK_LOST, STALE = 1, 2, 0, -1


def _being_cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class Watchdog:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self.scripts = Scripts.of(redis, keys)

    async def beat(self, job: Job, *, renew: bool) -> int:
        """One check (``OK``, ``CANCEL_REQUESTED``, ``LOCK_LOST`` or ``STALE``);
        with ``renew`` the lock's TTL starts again from now if it is the job's."""
        return int(await self.scripts.beat(
            project_id=job.project_id, job_id=job.id, fence=job.fence,
            heartbeat=f"{time.time():.3f}", ttl_ms=job.lock_ttl_ms if renew else "",
        ))

    async def guard(
        self, job: Job, runner: Runner, on_renewed: Callable[[float], None] | None = None
    ) -> None:
        """Run beside ``runner`` until cancelled; stops it when it must stop.

        The first beat renews the lease, then every TTL/3; ``on_renewed`` gets
        the ``time.monotonic()`` at which each successful renewal was sent (the
        lease then lasts at least the TTL from there: see ``leaseguard.py``).
        After a cancel or a timeout the lease is still renewed while the job's
        processes get their grace to exit; a lost lock ends the guard.
        """
        renew_every = max(job.lock_ttl_ms / 3000.0, 0.05)
        started = time.monotonic()
        deadline = started + job.timeout
        next_renew = started
        while True:
            now = time.monotonic()
            if now >= deadline:
                runner.stop(Reason.TIMED_OUT)
                deadline = math.inf
            renew = now >= next_renew
            try:
                state = await self.beat(job, renew=renew)
            except REDIS_DOWN as exc:
                # A cancel can surface as redis-py's TimeoutError (its read
                # timeout converts it): never mistake our own stop for an outage.
                # A Redis refusing writes (MISCONF, OOM) lands here too.
                if _being_cancelled():
                    raise asyncio.CancelledError from exc
                # Keep running: the lock's TTL covers a short outage, and the
                # next beat after it renews or finds the lock lost. (Past the
                # TTL the lease guard has ended the job's processes.)
                log.warning("watchdog for %s: Redis unavailable (%s)", job.id, exc)
                state = OK
            else:
                if renew:
                    next_renew = now + renew_every
                    if state in (OK, CANCEL_REQUESTED) and on_renewed is not None:
                        on_renewed(now)
            if state == CANCEL_REQUESTED:
                runner.stop(Reason.CANCELLED)
            elif state == LOCK_LOST:
                runner.stop(Reason.LOCK_LOST)
                return
            elif state == STALE:
                runner.stale = True
                runner.stop(Reason.LOCK_LOST)
                return
            pause = min(HEARTBEAT_INTERVAL, next_renew - time.monotonic(),
                        deadline - time.monotonic())
            await asyncio.sleep(max(0.01, pause))
