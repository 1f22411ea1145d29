"""Nodes: several hosts' servers on one Redis and one PostgreSQL
(README.md#several-hosts).

Each ``deployster serve`` announces its node every couple of seconds, with its
runner key (``recovery.announce``): name, URL (``DEPLOYSTER_PUBLIC_URL``),
version, start time, last heartbeat and what storage it uses, in the ``nodes``
hash. A node is up while its heartbeat is younger than ``NODE_STALE_S``; the
hash keeps a node that went away, so the dashboard and ``deployster nodes`` can
say it is down.

The embedded Redis and SQLite are one node's: a server refuses to start beside
another live node when either of them uses one (``check_storage``), and a
node name in use on another host is refused too.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from . import __version__
from .clock import iso
from .db import dialect_of
from .errors import ConfigError, Conflict, NotFound
from .procinfo import hostname

if TYPE_CHECKING:
    from .service import Deployster

# Seconds without a heartbeat after which a node counts as down (its runner
# key's TTL: recovery.RUNNER_TTL).
NODE_STALE_S = 10.0


@dataclass(frozen=True)
class Node:
    """A node as it announced itself last: ``heartbeat_ms`` is epoch ms."""

    name: str
    url: str | None
    version: str
    started: str
    heartbeat_ms: int
    host: str
    redis: str  # "embedded" or "shared"
    database: str  # "sqlite" or "postgresql"

    def age(self, now_ms: int | None = None) -> float:
        """Seconds since its last heartbeat."""
        now = int(time.time() * 1000) if now_ms is None else now_ms
        return max(0.0, (now - self.heartbeat_ms) / 1000)

    def up(self, now_ms: int | None = None) -> bool:
        return self.age(now_ms) < NODE_STALE_S

    def to_dict(self, now_ms: int | None = None) -> dict[str, Any]:
        return {"name": self.name, "url": self.url, "version": self.version,
                "started": self.started, "host": self.host, "up": self.up(now_ms),
                "heartbeat_age": round(self.age(now_ms), 1), "redis": self.redis,
                "database": self.database}

    @classmethod
    def parse(cls, name: str, raw: str) -> Node | None:
        try:
            data = json.loads(raw)
            return cls(name, data.get("url"), str(data.get("version", "")),
                       str(data.get("started", "")), int(data["heartbeat_ms"]),
                       str(data.get("host", "")), str(data.get("redis", "")),
                       str(data.get("database", "")))
        except (ValueError, KeyError, TypeError, AttributeError):
            return None  # written by something else: not a node


_STARTED = iso()


def this_node(core: Deployster) -> Node:
    """This node as it announces itself now."""
    return Node(core.node, core.settings.public_url, __version__, _STARTED,
                int(time.time() * 1000), hostname(),
                "embedded" if core.settings.redis_url is None else "shared",
                dialect_of(core.db))


def announcement(core: Deployster) -> str:
    """This node's entry in the ``nodes`` hash, as of now (what ``Node.parse`` reads)."""
    me = this_node(core)
    return json.dumps({"url": me.url, "version": me.version, "started": me.started,
                       "heartbeat_ms": me.heartbeat_ms, "host": me.host, "redis": me.redis,
                       "database": me.database})


def _one_nodes_storage(node: Node, who: str) -> list[str]:
    """What ``node`` uses that only one node can: '<who> uses SQLite', …"""
    return ([f"{who} uses SQLite"] if node.database == "sqlite" else []) + (
        [f"{who} uses the embedded Redis"] if node.redis == "embedded" else [])


async def nodes(core: Deployster) -> list[Node]:
    """Every node that announced itself on this Redis, by name."""
    raw = cast(dict[str, str], await core.redis.hgetall(core.keys.nodes))
    found = (Node.parse(name, value) for name, value in sorted(raw.items()))
    return [n for n in found if n is not None]


async def check_storage(core: Deployster) -> None:
    """Refuse to serve as a second node on storage that is one node's.

    Raises ``ConfigError`` when another node is up on this Redis and either
    uses SQLite or the embedded Redis (each node would have its own history
    and project ids would collide), or when this node's name is up on another
    host (two hosts would each run the other's jobs)."""
    me = this_node(core)
    for node in await nodes(core):
        if not node.up():
            continue
        if node.name == me.name:
            if node.host != me.host:
                raise ConfigError(
                    f"node name {me.name!r} is in use by a live server on host "
                    f"{node.host!r}; give this host its own name (DEPLOYSTER_NODE)")
            continue
        one_node = (_one_nodes_storage(me, "this node")
                    + _one_nodes_storage(node, f"node {node.name!r}"))
        if one_node:
            raise ConfigError(
                f"node {node.name!r} (host {node.host!r}) is up on this Redis, and "
                f"{'; '.join(one_node)}: several nodes need one shared Redis/Valkey "
                "(DEPLOYSTER_REDIS_URL=redis://…) and one shared PostgreSQL "
                "(DEPLOYSTER_DATABASE_URL=postgresql://…); the embedded Redis and SQLite "
                "are one node's (README.md#several-hosts)")


async def forget(core: Deployster, name: str, *, projects: int) -> None:
    """Drop a node that went away for good from the ``nodes`` hash (it is
    listed, down, until then). Raises ``NotFound`` for a node never seen,
    ``Conflict`` while it is up or still has ``projects`` (remove or move them
    first: its queued jobs would wait for it for ever)."""
    raw = cast(str | None, await core.redis.hget(core.keys.nodes, name))
    node = Node.parse(name, raw) if raw is not None else None
    if node is None:
        raise NotFound(f"no node {name!r} has announced itself here; see 'deployster nodes'")
    if node.up():
        raise Conflict(f"node {name!r} is up (heartbeat {node.age():.0f}s ago); stop its "
                       "server first", code="node_up")
    if projects:
        raise Conflict(f"node {name!r} still has {projects} project(s); remove them first "
                       f"('deployster project list --node {name}')", code="node_has_projects")
    await core.redis.hdel(core.keys.nodes, name)
