"""Several nodes on this machine (README.md#several-hosts): ``deployster serve``
processes each with its own node name and data dir, sharing the test's Redis
namespace and a PostgreSQL database (the ``pg_url`` fixture); how a test
registers a project on one of them, deploys for a node through any, and a
command that stamps which node ran it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from deployster.service import Deployster
from deployster.settings import Settings
from tests.helpers.deploys import deploy_body
from tests.helpers.server import LiveServer, start_server


@dataclass
class Fleet:
    settings: dict[str, Settings]  # node -> its settings
    servers: dict[str, LiveServer]
    tmp: Path

    def start(self, node: str) -> LiveServer:
        live = start_server(self.settings[node], self.tmp / f"{node}.log")
        self.servers[node] = live
        return live

    async def register(self, node: str, path: Path, **options: Any) -> int:
        """``deployster project add`` on ``node``'s host: a core with its settings."""
        core = await Deployster.open(self.settings[node])
        try:
            return (await core.projects.add(str(path), **options)).id
        finally:
            await core.close()


def node_settings(base: Settings, pg_url: str, tmp: Path, node: str) -> Settings:
    return base.model_copy(update={"node": node, "database_url": pg_url,
                                   "data_dir": tmp / node / "data"})


@contextlib.contextmanager
def running_fleet(base: Settings, pg_url: str, tmp: Path,
                  nodes: Iterable[str]) -> Iterator[Fleet]:
    """A server per node, started in order; each one still running is stopped after."""
    names = list(nodes)
    fleet = Fleet({n: node_settings(base, pg_url, tmp, n) for n in names}, {}, tmp)
    try:
        for node in names:
            fleet.start(node)
        yield fleet
    finally:
        for live in fleet.servers.values():
            if live.process.poll() is None:
                live.stop()


def app_dir(tmp: Path, name: str) -> Path:
    path = tmp / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def stamp(path: Path, label: str) -> str:
    """A command that records which node ran it (the job's $DEPLOYSTER_NODE)."""
    return f'echo "{label} $DEPLOYSTER_NODE" >> {path / "ran"}'


async def deploy(client: httpx.AsyncClient, cd: Path, *commands: str,
                 node: str | None = None, commit: str = "abc1234") -> dict[str, Any]:
    """``POST /deploy`` of ``commands`` in ``cd``, for ``node``'s project (the
    body's ``node``; None: the receiving node's); its 200 answer."""
    body = deploy_body(cd, *commands, commit=commit)
    if node is not None:
        body["node"] = node
    reply = await client.post("/deploy", json=body)
    assert reply.status_code == 200, reply.text
    data: dict[str, Any] = reply.json()
    return data
