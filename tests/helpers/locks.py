"""A project's deploy lock held by someone deployster did not start.

deployster takes the lock only in its claim (``redis_scripts/queue.lua``), for a
job it pops from the queue. A test that needs the lock held by a stranger (a
process that crashed with its record gone, a tool written against the seed's
``lock:deploy:<id>``) writes the key as that stranger would: ``SET NX PX``.
"""

from __future__ import annotations

from deployster.service import Deployster


async def hold_lock(core: Deployster, project_id: int, owner: str, ttl_ms: int) -> bool:
    """Make ``owner`` hold the lock of ``project_id`` for ``ttl_ms`` unless
    someone already does; True if it took it."""
    return bool(await core.redis.set(core.keys.lock(project_id), owner, nx=True, px=ttl_ms))
