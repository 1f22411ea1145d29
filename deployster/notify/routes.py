"""Which events each project wants, where the queue scripts look it up.

The queue's Lua scripts write a job event to the outbox only when the
project's targets (or its GitHub link) want it (``redis_scripts/outbox.lua``):
the hash ``Keys.notify_routes`` maps a project id to those events as
``,complete,failed,`` (``,`` for none), and ``*`` to the events of the
server-wide targets, for every project without an entry of its own. So a
project without targets costs its deploys one HMGET and no write.

The entries follow the projects table: ``sync_project`` after each change
(``ProjectRegistry``), ``sync_all`` when a notifier starts and whenever the
projects' version moves (a change whose own write did not reach Redis).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

from ..keys import Keys
from ..models import NOTIFY_EVENTS, NotifyTarget, Project
from ..redis_conn import Redis
from .targets import GITHUB_EVENTS

STAR = "*"


def encode(events: Iterable[str]) -> str:
    wanted = set(events)
    return ",".join(["", *(e for e in NOTIFY_EVENTS if e in wanted), ""]) or ","


def wanted(project: Project, defaults: tuple[NotifyTarget, ...]) -> str | None:
    """The project's entry, or None when it has none of its own (the ``*``
    entry, the server-wide targets' events, applies)."""
    if project.notify is None and project.github_repo is None:
        return None
    targets = defaults if project.notify is None else project.notify
    events = {e for t in targets for e in t.events}
    if project.github_repo is not None:
        events |= GITHUB_EVENTS
    return encode(events)


def star(defaults: tuple[NotifyTarget, ...]) -> str | None:
    """The ``*`` entry: the server-wide targets' events (None: there are none)."""
    return encode({e for t in defaults for e in t.events}) if defaults else None


async def sync_project(redis: Redis, keys: Keys, project: Project,
                       defaults: tuple[NotifyTarget, ...]) -> None:
    entry = wanted(project, defaults)
    if entry is None:
        await redis.hdel(keys.notify_routes, str(project.id))
    else:
        await redis.hset(keys.notify_routes, str(project.id), entry)


async def forget_project(redis: Redis, keys: Keys, project_id: int) -> None:
    await redis.hdel(keys.notify_routes, str(project_id))


async def sync_all(redis: Redis, keys: Keys, projects: Iterable[Project],
                   defaults: tuple[NotifyTarget, ...]) -> dict[str, str]:
    """Replace every entry with those of ``projects`` and ``defaults``, in
    one step; returns them."""
    entries: dict[Any, Any] = {str(p.id): e for p in projects
                               if (e := wanted(p, defaults)) is not None}
    if (all_projects := star(defaults)) is not None:
        entries[STAR] = all_projects
    async with redis.pipeline(transaction=True) as pipe:
        pipe.delete(keys.notify_routes)
        if entries:
            pipe.hset(keys.notify_routes, mapping=entries)
        await pipe.execute()
    return cast(dict[str, str], entries)
