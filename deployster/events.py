"""Events: how dispatchers and the dashboard learn that something changed
without polling.

Each message is a JSON object with ``type`` (an ``Event``) and, where it
applies, ``project`` and ``job``. Lua scripts publish the same shape from inside
Redis (``redis_scripts/queue.lua``'s ``publish``: enqueued, started, finished,
cancel; ``tests/test_redis_scripts.py`` keeps their names members of ``Event``).
Dispatchers listen on the ``events`` channel only; what no dispatcher acts on
goes to ``feed`` (see ``Keys.feed``), and watchers read both.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any

from .keys import Keys
from .redis_conn import Redis


class Event(StrEnum):
    """An event's ``type``: every publisher and every reader names it from here."""

    ENQUEUED = "enqueued"
    STARTED = "started"
    FINISHED = "finished"
    RELEASED = "released"
    # A running job's cancel was asked for: its runner (``runner`` in the event) stops it.
    CANCEL = "cancel"
    PROJECTS = "projects"
    # Finished jobs reached the SQL history (on ``feed``): readers of the history
    # query it again now rather than guessing when the writer will be done.
    HISTORY = "history"
    # Not published: ``overview.watch_events`` says it once it listens, so a
    # watcher re-reads what changed before (no event will tell it).
    SUBSCRIBED = "subscribed"


# The same members by their old module-level names, for readers that import them.
ENQUEUED = Event.ENQUEUED
STARTED = Event.STARTED
FINISHED = Event.FINISHED
RELEASED = Event.RELEASED
CANCEL = Event.CANCEL
PROJECTS = Event.PROJECTS
HISTORY = Event.HISTORY
SUBSCRIBED = Event.SUBSCRIBED


def encode(kind: Event, project: int | None = None, job: str | None = None) -> str:
    data: dict[str, Any] = {"type": kind}
    if project is not None:
        data["project"] = project
    if job is not None:
        data["job"] = job
    return json.dumps(data)


def decode(message: str) -> dict[str, Any]:
    try:
        data = json.loads(message)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


async def publish(
    redis: Redis, keys: Keys, kind: Event, project: int | None = None, job: str | None = None
) -> None:
    await redis.publish(keys.events, encode(kind, project, job))
