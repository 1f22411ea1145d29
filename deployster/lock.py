"""The per-project deploy lock, ``lock:deploy:<projectId>`` = owning job id.

Only the job holding it runs; its TTL (the project's ``lock_ttl``) frees it if
nobody renews it. Every change to the key, and every script's read of it, is a
function of one Lua library, ``redis_scripts/lock.lua``, which the scripts below
include; this module is the Python side (the operator's release, the lock's
state) and this map its life:

1. **claim** (take): the queue's ``claim()`` (``redis_scripts/queue.lua``, run by
   ``enqueue.lua``, ``claim.lua`` and ``finish.lua``) pops the head of the queue
   and, in the same step, takes the free lock for it (``lock_take``: ``SET``
   with the job's TTL), bumps the project's fence and marks the job running.
2. **renew**: the job's watchdog (``watchdog.py``) runs ``beat.lua`` every
   second; every TTL/3 it renews the lock (``lock_renew``: compare-and-
   ``PEXPIRE``, only while the job still holds it).
3. **release**: the job's end, ``finish.lua`` (``JobQueue.finish``), deletes the
   lock if the job still holds it (``lock_release``: compare-and-delete) and
   claims the next job in the same step; or an operator frees it,
   ``release.lua`` (``DeployLock.release``: the same compare-and-delete, then a
   ``released`` event that makes dispatchers claim the next job).
   **expire**: nobody renewed it (its process paused or its server died) for a
   TTL: Redis deletes it, and the next claim may take it.
4. **lost**: a job still running whose lock was released or expired. Its next
   beat finds the lock not its own (``lock_renew`` fails) and the watchdog stops
   it with ``lock_lost``; the next claim (``claim()``: the project's ``current``
   job still running) ends it ``lock_lost`` too, and the fence makes whatever its
   runner still writes a no-op. A job whose renewals stop (its server stalls)
   has its processes ended by the lease guard (``leaseguard.py``) before the
   TTL of its last renewal runs out, so none still runs once the lock can expire.

Readers: ``DeployLock.state`` and the dashboard's ``locks_and_queues.lua``
(``lock_holder``, ``lock_ttl``). Every write is compare-and-set on the owner, so
nobody deletes or prolongs a lock that has meanwhile passed to a newer job.
(redis-py's ``Lock`` does the same but shares its token between asyncio tasks
by default and never renews itself; a deploy needs both fixed.)
"""

from __future__ import annotations

from dataclasses import dataclass

from .events import Event, encode
from .keys import Keys
from .redis_conn import Redis
from .redis_scripts import Scripts


@dataclass(frozen=True)
class LockState:
    project_id: int
    owner: str | None
    ttl_ms: int | None  # None when free; -1 when held without expiry


class DeployLock:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self.scripts = Scripts.of(redis, keys)

    async def release(self, project_id: int, owner: str, *, actor: str = "") -> bool:
        """Delete the lock only if ``owner`` still holds it; wakes the queue
        (a ``released`` event). False when ``owner`` no longer held it.
        ``actor``: the operator who released it, for the project's
        notifications (``lock_released``); '' for a release that is no
        operator's act on the lock (a project's removal)."""
        event = encode(Event.RELEASED, project_id, owner)
        done = await self.scripts.release(project_id=project_id, owner=owner, event=event,
                                          actor=actor)
        return bool(done)

    async def state(self, project_id: int) -> LockState:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.get(self.keys.lock(project_id))
            pipe.pttl(self.keys.lock(project_id))
            owner, ttl = await pipe.execute()
        if owner is None:
            return LockState(project_id, None, None)
        return LockState(project_id, owner, int(ttl))
