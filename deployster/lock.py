"""The per-project deploy lock, ``lock:deploy:<projectId>`` = owning job id.

Acquired with ``SET NX PX``; release and extend are compare-and-set in Lua on the
owner, so nobody ever deletes or prolongs a lock that has meanwhile passed to a
newer job. (redis-py's ``Lock`` does the same but shares its token between
asyncio tasks by default and never renews itself; a deploy needs both fixed.)
The queue's claim script sets the same key atomically with popping the job.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from .keys import Keys
from .redis_conn import Redis

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', KEYS[2], ARGV[2])
  return 1
end
return 0
"""

_EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""


@dataclass(frozen=True)
class LockState:
    project_id: int
    owner: str | None
    ttl_ms: int | None  # None when free; -1 when held without expiry


class DeployLock:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._release = redis.register_script(_RELEASE)
        self._extend = redis.register_script(_EXTEND)

    async def acquire(self, project_id: int, owner: str, ttl_ms: int) -> bool:
        return bool(await self.redis.set(self.keys.lock(project_id), owner, nx=True, px=ttl_ms))

    async def release(self, project_id: int, owner: str) -> bool:
        """Delete the lock only if ``owner`` still holds it; wakes the queue."""
        event = json.dumps({"type": "released", "project": project_id, "job": owner})
        done = await self._release(
            keys=[self.keys.lock(project_id), self.keys.events], args=[owner, event]
        )
        return bool(done)

    async def extend(self, project_id: int, owner: str, ttl_ms: int) -> bool:
        """Reset the TTL only if ``owner`` still holds it (the watchdog's renewal)."""
        return bool(await self._extend(keys=[self.keys.lock(project_id)], args=[owner, ttl_ms]))

    async def state(self, project_id: int) -> LockState:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.get(self.keys.lock(project_id))
            pipe.pttl(self.keys.lock(project_id))
            owner, ttl = await pipe.execute()
        if owner is None:
            return LockState(project_id, None, None)
        return LockState(project_id, owner, int(ttl))
