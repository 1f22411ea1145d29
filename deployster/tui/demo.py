"""Fixed, realistic data for snapshots, screenshots and benchmarks: every time
is relative to ``NOW``, so a picture of it never changes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, cast

from deployster.clock import iso
from deployster.models import Job, JobStatus, Project
from deployster.overview import ProjectRow
from deployster.service import Deployster

from .format import set_clock

if TYPE_CHECKING:
    from .app import DeploysterApp

NOW = datetime(2026, 3, 14, 12, 4, 31, tzinfo=UTC)


def _at(seconds_ago: float) -> str:
    return iso(NOW - timedelta(seconds=seconds_ago))


def demo_job(project: Project, job_id: str, *, status: JobStatus, commit: str,
             ref: str = "main", started_ago: float | None = None,
             took: float | None = None, reason: str | None = None,
             commands: list[str] | None = None) -> Job:
    started = _at(started_ago) if started_ago is not None else None
    finished = _at(started_ago - took) if started_ago is not None and took is not None else None
    return Job(
        id=job_id, project_id=project.id, project=project.name, cd=project.path,
        commands=commands or ["git pull", "yarn install", "yarn build",
                              f"supervisorctl restart {project.name}--{ref}"],
        commit_hash=commit, ref_name=ref, status=status, reason=reason,
        queued_at=_at((started_ago or 0) + 3), started_at=started, finished_at=finished,
    )


def demo_rows() -> list[ProjectRow]:
    api = Project(1, "api", "/srv/www/api")
    shop = Project(2, "my-app", "/srv/www/my-app")
    worker = Project(3, "worker", "/srv/www/worker")
    docs = Project(4, "docs", "/srv/www/docs")
    running = demo_job(shop, "01JDQ7M2X4Y9K3TB5R8W1FAF3", status=JobStatus.RUNNING,
                       commit="a1b2c3d4e5", started_ago=19)
    running.extra["heartbeat"] = "0"
    stale = demo_job(worker, "01JCN0P4C7H2Z6WQ3V5D8E9A1", status=JobStatus.RUNNING,
                     commit="77e1f0a9", started_ago=420)
    return [
        ProjectRow(api, None, None, None, None, 0,
                   demo_job(api, "01JD8VX1", status=JobStatus.FAILED, commit="5f4e3d2c",
                            started_ago=3608, took=8, reason="command_failed")),
        ProjectRow(shop, running.id, 581_000, running, 0.4, 2,
                   demo_job(shop, "01JDQ5E9", status=JobStatus.COMPLETE, commit="9c8d7e6f",
                            started_ago=252, took=72)),
        ProjectRow(worker, stale.id, 242_000, stale, 357.0, 1,
                   demo_job(worker, "01JC9AB2", status=JobStatus.COMPLETE, commit="0a1b2c3d",
                            started_ago=2 * 86400, took=41)),
        ProjectRow(docs, None, None, None, None, 0, None),
    ]


DEMO_LOG = "".join(
    [
        "[1] $ git pull\n",
        "Updating 9c8d7e6..a1b2c3d\n",
        "Fast-forward\n",
        " src/pages/checkout.tsx | 12 ++++++------\n",
        "[2] $ yarn install\n",
        "yarn install v1.22.22\n",
        "[1/4] Resolving packages...\n",
        "success Already up-to-date.\n",
        "[3] $ yarn build\n",
        "vite v5.4.2 building for production...\n",
        "transforming...\n",
        "✓ 412 modules transformed.\n",
        "dist/index.html                 0.46 kB │ gzip:  0.30 kB\n",
        "dist/assets/index-4f1c2a.css   12.71 kB │ gzip:  3.18 kB\n",
        "dist/assets/index-9b7e21.js   143.36 kB │ gzip: 46.12 kB\n",
        "✓ built in 3.91s\n",
        "[4] $ supervisorctl restart my-app--main\n",
        "my-app--main: stopped\n",
        "my-app--main: started\n",
    ]
)


def demo_app(*, refresh_rows: bool = True) -> DeploysterApp:
    """The dashboard over the demo rows, frozen at ``NOW``, with no core behind it:
    it shows, it never acts (for snapshots and screenshots only)."""
    from .app import make_app

    set_clock(lambda: NOW)
    app = make_app(cast(Deployster, None), live=False, monotonic=lambda: 0.0,
                   wall_clock=lambda: NOW, actor="demo")
    if refresh_rows:
        app.rows = demo_rows()
        app.health = {"redis": "ok", "database": "ok"}
    return app
