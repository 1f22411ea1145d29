"""The dashboard's one way to the core: ``Reader``, and ``Overview``, what one
fetch of every project's row found.

The app makes one reader and hands it to each screen and widget in its
constructor, so none of them reaches into the app or calls the core on its
own: every read the dashboard makes is a method here, one call of
``deployster.overview`` or of the core each. The overview itself is fetched by
the app's refresh loop only, and reaches the screens in their constructor and
in ``DataRefreshed`` messages (``messages.py``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any

from deployster import fleet, overview, recovery
from deployster.fleet import Node
from deployster.models import Job, JobStatus
from deployster.overview import LogChunk, LogWindow, ProjectRow, QueueWindow
from deployster.service import Deployster
from deployster.settings import Settings
from deployster.store import LastDeploys

STARTING = {"redis": "…", "database": "…"}  # health before the first fetch answered
UP = {"redis": "ok", "database": "ok"}


@dataclass(frozen=True)
class Overview:
    """Every project's row as one fetch found it.

    ``health`` maps "redis" and "database" to "ok", "…" (not asked yet) or what
    is wrong; after a failed fetch it says what is down while ``rows`` and
    ``fetched_at`` stay those of the last fetch that worked. ``fetched_at`` is
    in seconds of the reader's ``monotonic`` clock (``Reader.since``)."""

    rows: list[ProjectRow]
    health: dict[str, str]
    fetched_at: float
    # Events the app had heard by this fetch, by project (None: events that
    # name no project, and reconnections: whatever was missed).
    events: Mapping[int | None, int] = field(default_factory=dict)
    # The ids of the deploy servers (runners) alive for this data; None: not
    # known (no fetch answered yet).
    runners: frozenset[str] | None = None
    # Every node that announced itself on this Redis, by name (fleet.nodes);
    # None: not known. Up or down is worked out against the reader's wall
    # clock when shown (``Node.up``), so a node's age ticks between fetches.
    nodes: tuple[Node, ...] | None = None

    def row(self, project_id: int) -> ProjectRow | None:
        return next((r for r in self.rows if r.project.id == project_id), None)

    @cached_property
    def project_nodes(self) -> tuple[str, ...]:
        """The nodes the projects belong to, sorted (once an overview)."""
        return tuple(sorted({r.project.node for r in self.rows}))

    @property
    def fleet(self) -> bool:
        """The projects span more than one node (README.md#several-hosts): the
        screens then name each project's node (as ``deployster project list``
        shows its NODE column)."""
        return len(self.project_nodes) > 1

    def node(self, name: str) -> Node | None:
        """The node ``name`` as it announced itself last, if it did."""
        return next((n for n in self.nodes or () if n.name == name), None)

    @property
    def no_runner(self) -> bool:
        """Known to have no deploy server alive: nothing runs the queues."""
        return self.runners is not None and not self.runners

    def runner_gone(self, job: Job | None) -> bool:
        """Whether ``job`` is marked running but its runner is not alive (it
        crashed, or it was stopped: no one will end the job but recovery)."""
        return (job is not None and job.status is JobStatus.RUNNING
                and self.runners is not None and job.extra.get("runner") not in self.runners)

    def changes(self, project_id: int) -> int:
        """A count that moved if an event may have changed the project since
        an earlier overview (its queue, its history): read it again then."""
        return self.events.get(project_id, 0) + self.events.get(None, 0)


def row_facts(row: ProjectRow) -> tuple[object, ...]:
    """What a row shows, less the clocks: when it changes, redraw the row now."""
    running = row.running
    return (row.project, row.lock_owner, row.stale, row.queue_length,
            row.last.id if row.last else None, row.deployed.id if row.deployed else None,
            (running.id, running.status) if running else None)


class Reader:
    """What the dashboard reads, and what its controls act with.

    - ``core``: read here only; the screens' controls (unlock, cancel,
      redeploy: ``screens/base.py``) act on it through ``deployster.control``,
      as ``actor`` (recorded in the audit events);
    - ``monotonic`` and ``wall_clock``: the clocks ages and the header's time
      come from (fixed in snapshots, moved by ``bench/tui.py``);
    - ``live`` False: demo data with no core behind it (``demo.py``): nothing
      is read, screens show what they were given;
    - ``settings``: the settings the data is read with, as the screens name
      them (the core's; given for demo data).
    """

    def __init__(
        self, core: Deployster, *, actor: str, live: bool = True,
        monotonic: Callable[[], float], wall_clock: Callable[[], datetime],
        settings: Settings | None = None,
    ) -> None:
        self.core = core
        self.actor = actor
        self.live = live
        self.monotonic = monotonic
        self.wall_clock = wall_clock
        self._settings = settings

    @property
    def settings(self) -> Settings | None:
        return self._settings or (self.core.settings if self.live else None)

    @property
    def node(self) -> str | None:
        """The node this dashboard runs on (``Deployster.node``); None for demo data."""
        return self.core.node if self.live else None

    def since(self, fetched: Overview) -> float:
        """Seconds since ``fetched`` was fetched (never negative)."""
        return max(0.0, self.monotonic() - fetched.fetched_at)

    # ----------------------------------------------------------- the overview
    async def project_rows(
        self, *, last: dict[int, LastDeploys] | None = None
    ) -> list[ProjectRow]:
        """``overview.project_rows``: ``last={}`` reads locks, queues and
        running jobs only (no SQL)."""
        return await overview.project_rows(self.core, last=last)

    async def runners(self) -> frozenset[str]:
        """``recovery.live_runners``: the deploy servers alive now."""
        return frozenset(await recovery.live_runners(self.core))

    async def nodes(self) -> tuple[Node, ...]:
        """``fleet.nodes``: every node announced on this Redis (one HGETALL)."""
        return tuple(await fleet.nodes(self.core))

    async def health(self) -> dict[str, str]:
        """Redis's and the database's state: "ok" or what is wrong."""
        return {k: v for k, v in (await self.core.health()).items()
                if k in ("redis", "database")}

    def events(self) -> AsyncIterator[dict[str, Any]]:
        """``overview.watch_events``: what wakes a fetch early."""
        return overview.watch_events(self.core)

    # ------------------------------------------------------------- a project
    async def queue(self, project_id: int) -> QueueWindow:
        """The head of the project's queue (``overview.QUEUE_WINDOW`` jobs, in
        order), its length and its start estimate."""
        return await overview.queued_jobs(self.core, project_id)

    async def history(self, project_id: int, *, before: str | None = None,
                      limit: int) -> list[Job]:
        """Finished jobs, newest first, older than ``before`` (a job id)."""
        return await overview.history(self.core, project_id, before=before, limit=limit)

    # ----------------------------------------------------------------- a job
    async def job(self, job_id: str) -> Job | None:
        return await self.core.job(job_id)

    async def log_window(self, job_id: str, *, max_bytes: int) -> LogWindow:
        return await overview.log_window(self.core, job_id, max_bytes=max_bytes)

    def log_entries(self, job_id: str, *, after: str) -> AsyncIterator[tuple[str, LogChunk]]:
        return overview.log_entries(self.core, job_id, after=after)
