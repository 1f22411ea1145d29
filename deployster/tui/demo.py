"""Fixed, realistic data for snapshots, screenshots and benchmarks: every time
is relative to ``NOW``, so a picture of it never changes."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast

from deployster.clock import iso
from deployster.estimate import StartEstimate
from deployster.fleet import Node
from deployster.models import Job, JobStatus, Project
from deployster.overview import LogChunk, ProjectRow
from deployster.service import Deployster
from deployster.settings import Settings

from .app import DeploysterApp, make_app
from .format import set_clock
from .reader import UP, Overview, Reader
from .screens.log import LogScreen
from .screens.project import ProjectScreen

NOW = datetime(2026, 3, 14, 12, 4, 31, tzinfo=UTC)
RUNNER = "5e1f0c9a7b3d"  # the one deploy server alive
GONE_RUNNER = "0b7d2e8f4a61"  # the one that died under worker's job
WEB2_RUNNER = "c4a9e2b71f08"  # a fleet's second node's (``demo_fleet_overview``)


def _at(seconds_ago: float) -> str:
    return iso(NOW - timedelta(seconds=seconds_ago))


def demo_job(project: Project, job_id: str, *, status: JobStatus, commit: str,
             ref: str = "main", started_ago: float | None = None,
             took: float | None = None, reason: str | None = None,
             commands: list[str] | None = None, redeploy_of: str | None = None,
             runner: str = RUNNER, beat_ago: float = 0.4) -> Job:
    """A job; a running one is run by ``runner``, its last heartbeat
    ``beat_ago`` seconds before ``NOW``."""
    started = _at(started_ago) if started_ago is not None else None
    finished = _at(started_ago - took) if started_ago is not None and took is not None else None
    extra = ({"runner": runner, "heartbeat": f"{(NOW.timestamp() - beat_ago):.3f}"}
             if status is JobStatus.RUNNING else {})
    return Job(
        id=job_id, project_id=project.id, project=project.name, cd=project.path,
        commands=commands or ["git pull", "yarn install", "yarn build",
                              f"supervisorctl restart {project.name}--{ref}"],
        commit_hash=commit, ref_name=ref, status=status, reason=reason,
        queued_at=_at((started_ago or 0) + 3), started_at=started, finished_at=finished,
        redeploy_of=redeploy_of, extra=extra,
    )


def demo_rows() -> list[ProjectRow]:
    """Ten projects as a busy box has them: two deploying, one lock gone STALE
    (its runner died), queues, recent failures and long-quiet projects."""
    api = Project(1, "api", "/srv/www/api")
    shop = Project(2, "my-app", "/srv/www/my-app")
    worker = Project(3, "worker", "/srv/www/worker")
    docs = Project(4, "docs", "/srv/www/docs")
    billing = Project(5, "billing", "/srv/www/billing")
    blog = Project(6, "blog", "/srv/www/blog")
    landing = Project(7, "landing", "/srv/www/landing")
    payments = Project(8, "payments", "/srv/www/payments")
    search = Project(9, "search", "/srv/www/search")
    status = Project(10, "status-page", "/srv/www/status-page")
    running = demo_job(shop, RUNNING_JOB, status=JobStatus.RUNNING,
                       commit="a1b2c3d4e5", started_ago=19)
    # Its runner died 357 s ago, 63 s into the job: its clock stopped there.
    stale = demo_job(worker, "01JCN0P4C7H2Z6WQ3V5D8E9A1", status=JobStatus.RUNNING,
                     commit="77e1f0a9", started_ago=420, runner=GONE_RUNNER, beat_ago=357)
    paying = demo_job(payments, "01JDQ7K9W2E5R8T1Y4U7I0O3P6", status=JobStatus.RUNNING,
                      commit="3e4f5a6b", ref="v2.14.0", started_ago=130, beat_ago=1.2)

    def done(project: Project, job_id: str, commit: str, ago: float, took: float,
             reason: str | None = None) -> Job:
        return demo_job(project, job_id, status=JobStatus.FAILED if reason
                        else JobStatus.COMPLETE, commit=commit, started_ago=ago, took=took,
                        reason=reason)

    def quiet(project: Project, last: Job, deployed: Job | None = None) -> ProjectRow:
        """Nothing locked or queued; ``deployed``: the last complete job (the
        last one when it completed)."""
        ok = last.status is JobStatus.COMPLETE
        return ProjectRow(project, None, None, None, None, 0, last,
                          last if ok and deployed is None else deployed)

    shop_last = done(shop, _HISTORY[0][0], "9c8d7e6f", 252, 72)
    pay_last = done(payments, "01JDNZ5X7C9V1B3N5M7Q9W1E3R", "2d3e4f5a", 88_000, 188)
    worker_last = done(worker, "01JC9AB2Q4W6E8R0T2Y4U6I8O0", "0a1b2c3d", 2 * 86400, 41)
    return [
        quiet(api, done(api, "01JDQ3A1F8K2M5N9P3R6T0V4X7", "5f4e3d2c", 3608, 8,
                        "command_failed"),
              done(api, "01JDNB7V3X9Z1C5N8M2Q4W6E8R", "1e2d3c4b", 90_200, 9)),
        ProjectRow(shop, running.id, 581_000, running, 0.4, 2, shop_last, shop_last),
        ProjectRow(worker, stale.id, 242_000, stale, 357.0, 1, worker_last, worker_last),
        ProjectRow(docs, None, None, None, None, 0, None),
        quiet(billing, done(billing, "01JDPW3E5R7T9Y1U3I5O7P9A1S", "8b7a6c5d", 21_700, 96)),
        # A rollback: its commit is the one deployed now (shown marked).
        quiet(blog, demo_job(blog, "01JD2K4M6N8P0Q2R4S6T8V0W2X", status=JobStatus.COMPLETE,
                             commit="c0ffee12", started_ago=12 * 86400, took=33,
                             redeploy_of="01JCZ8R2T4Y6V8K0M2P4A6S8D0")),
        # No deploy ever completed: nothing is shown as deployed.
        quiet(landing, done(landing, "01JDQ6B3C5D7E9F1G3H5J7K9M1", "deadbe3f", 1_230, 14,
                            "timed_out")),
        ProjectRow(payments, paying.id, 470_000, paying, 1.2, 1, pay_last, pay_last),
        quiet(search, done(search, "01JDM1Q3W5E7R9T1Y3U5I7O9P1", "9a8b7c6d",
                           3 * 86400 + 4000, 57)),
        quiet(status, done(status, "01JCA7S9D1F3G5H7J9K1L3Z5X7", "4c5d6e7f", 41 * 86400, 12)),
    ]


# ANSI SGR codes, as git, yarn and vite print them to a terminal.
_G, _R, _C, _Y, _DIM, _B, _OFF = ("\x1b[32m", "\x1b[31m", "\x1b[36m", "\x1b[33m", "\x1b[2m",
                                  "\x1b[1m", "\x1b[0m")

DEMO_LOG = "".join(
    [
        "[1] $ git pull\n",
        "Updating 9c8d7e6..a1b2c3d\n",
        "Fast-forward\n",
        f" src/pages/checkout.tsx | 12 {_G}++++++{_OFF}{_R}------{_OFF}\n",
        "[2] $ yarn install\n",
        f"{_B}yarn install v1.22.22{_OFF}\n",
        f"{_DIM}[1/4]{_OFF} Resolving packages...\n",
        f"{_G}success{_OFF} Already up-to-date.\n",
        "[3] $ yarn build\n",
        f"{_C}vite v5.4.2 {_G}building for production...{_OFF}\n",
        "transforming...\n",
        f"{_G}✓{_OFF} 412 modules transformed.\n",
        f"{_DIM}dist/{_OFF}{_G}index.html{_OFF}                 {_B}{_DIM}0.46 kB{_OFF}"
        f"{_DIM} │ gzip:  0.30 kB{_OFF}\n",
        f"{_DIM}dist/{_OFF}{_C}assets/index-4f1c2a.css{_OFF}   {_B}{_DIM}12.71 kB{_OFF}"
        f"{_DIM} │ gzip:  3.18 kB{_OFF}\n",
        f"{_DIM}dist/{_OFF}{_Y}assets/index-9b7e21.js{_OFF}   {_B}{_DIM}143.36 kB{_OFF}"
        f"{_DIM} │ gzip: 46.12 kB{_OFF}\n",
        f"{_G}✓ built in 3.91s{_OFF}\n",
        "[4] $ supervisorctl restart my-app--main\n",
        "my-app--main: stopped\n",
        "my-app--main: started\n",
    ]
)


RUNNING_JOB = "01JDQ7M2X4Y9K3TB5R8W1FAF3"


def demo_log_chunks() -> list[LogChunk]:
    """``DEMO_LOG`` as the stream has it: one chunk per line, each with the time
    it was written (the running job started 19 s before ``NOW``)."""
    start = int((NOW - timedelta(seconds=19)).timestamp() * 1000)
    offsets = [0, 412, 415, 418, 430, 655, 702, 2240, 2251, 2688, 2910, 6104, 6120, 6121,
               6123, 6130, 6342, 7015, 7920]
    lines = DEMO_LOG.splitlines(keepends=True)
    return [LogChunk(line, start + offsets[i] + i * 347)
            for i, line in enumerate(lines)]


_HISTORY = [
    # (id, status, reason, commit, ref, started seconds ago, took seconds)
    ("01JDQ5E9R2M8XW4T6B1NCK7H0P", JobStatus.COMPLETE, None, "9c8d7e6f", "main", 252, 72),
    ("01JDPZK3V8D1QF5Y2HW6TN9BXA", JobStatus.FAILED, "command_failed", "4b3a2910", "main",
     3_140, 23),
    ("01JDPR7C2N6JT4XK8E1MZ5QVW3", JobStatus.COMPLETE, None, "e4f5a6b7", "feature/cart",
     5_930, 81),
    ("01JDNX0H5B9WQ2R7T3C8DK4MFJ", JobStatus.FAILED, "cancelled", "e4f5a6b7", "feature/cart",
     6_400, 12),
    ("01JDN4TZ8F3M6A1P9X2GV5KRH7", JobStatus.COMPLETE, None, "c3b4a596", "main", 14_520, 69),
    ("01JDKQ2W7E4N8H5C1Y6BJ3TXM9", JobStatus.FAILED, "timed_out", "a9b8c7d6", "main",
     40_211, 600),
    ("01JDK9B6X3R1T8V4Q2N7MZ5HCE", JobStatus.COMPLETE, None, "f0e1d2c3", "main", 43_800, 74),
    ("01JDHC5M1K8W2Z6D9T3QF4XNBR", JobStatus.FAILED, "superseded", "b2a39485", "main",
     88_930, 0),
    ("01JDH7YQ4C9N3X5B8R1WK6TMDE", JobStatus.COMPLETE, None, "c3b4a596", "main", 89_100, 77),
    ("01JDF2R8T6M4H1K9V3ZB7XQNC5", JobStatus.COMPLETE, None, "7d6e5f40", "main", 172_300, 70),
    ("01JDEWN3D7Q2X9C5J8T1HM4BRK", JobStatus.FAILED, "lock_lost", "7d6e5f40", "main",
     173_010, 305),
    ("01JDCB9V1H6R3M8W2X5KT7QZNF", JobStatus.COMPLETE, None, "1a2b3c4d", "main", 260_900, 66),
]


# History jobs that redeployed another (here a rollback from f0e1d2c to c3b4a59).
_REDEPLOYS = {"01JDN4TZ8F3M6A1P9X2GV5KRH7": "01JDH7YQ4C9N3X5B8R1WK6TMDE"}


def demo_project() -> tuple[Project, list[Job], list[Job]]:
    """my-app's project view: the running job and two queued behind it, and a
    page of varied history (what an operator scrolls through on a real box)."""
    shop = Project(2, "my-app", "/srv/www/my-app")
    running = demo_job(shop, RUNNING_JOB, status=JobStatus.RUNNING, commit="a1b2c3d4e5",
                       started_ago=19)
    queue = [running]
    for job_id, commit, ref, waited in (("01JDQ7N4G7A2B5C8D1E4F7H0J3", "e4f5a6b7", "main", 41),
                                         ("01JDQ7P8H2K5M8N1P4Q7R0S3T6", "f6a7b8c9",
                                          "feature/cart", 12)):
        job = demo_job(shop, job_id, status=JobStatus.QUEUED, commit=commit, ref=ref)
        job.queued_at = _at(waited)
        queue.append(job)
    history = []
    for job_id, status, reason, commit, ref, ago, took in _HISTORY:
        # Superseded while it waited in the queue: it never started.
        never = reason == "superseded"
        job = demo_job(shop, job_id, status=status, reason=reason, commit=commit, ref=ref,
                       started_ago=None if never else ago, took=None if never else took,
                       redeploy_of=_REDEPLOYS.get(job_id))
        if never:
            job.queued_at = job.finished_at = _at(ago)
        history.append(job)
    return shop, queue, history


def demo_settings(*, fleet: bool = False) -> Settings:
    """The settings the demo data is shown as read with: a box's own data
    dir (embedded Redis, SQLite), projects under /srv/www registering
    themselves; ``fleet``: the Redis and PostgreSQL its nodes share."""
    settings = Settings(data_dir=Path("/var/lib/deployster"), allowed_roots=(Path("/srv/www"),))
    if not fleet:
        return settings
    return settings.model_copy(update={
        "redis_url": "redis://10.0.0.5:6379/0",
        "database_url": "postgresql://deployster:secret@10.0.0.5/deployster"})


def demo_reader() -> Reader:
    """A reader with no core behind it (``live`` False: it reads nothing), its
    clocks stopped at ``NOW``: as ``demo_app``'s, for screens made outside it."""
    return Reader(cast(Deployster, None), actor="demo", live=False, monotonic=lambda: 0.0,
                  wall_clock=lambda: NOW, settings=demo_settings())


def demo_overview(*, runners: frozenset[str] = frozenset({RUNNER})) -> Overview:
    """The demo rows as a fetch that just answered (at the demo's time 0),
    ``runners`` alive (the one by default; none: nothing runs the queues)."""
    return Overview(demo_rows(), UP, 0.0, runners=runners)


# A fleet's nodes (README.md#several-hosts): which demo project is whose.
FLEET = {"web-1": ("api", "my-app", "worker", "blog", "search"),
         "web-2": ("docs", "billing", "landing", "payments"),
         "web-3": ("status-page", "mailer")}


def demo_nodes() -> tuple[Node, ...]:
    """Three nodes: web-1 and web-2 up, web-3 down (its last heartbeat 42 s
    before ``NOW``, past ``fleet.NODE_STALE_S``)."""
    def node(name: str, beat_ago: float) -> Node:
        return Node(name, f"https://{name}.example.com:3259", "0.9.0", _at(9 * 86400),
                    int((NOW.timestamp() - beat_ago) * 1000), name, "shared", "postgresql")

    return node("web-1", 0.8), node("web-2", 1.6), node("web-3", 42.0)


def demo_fleet_overview() -> Overview:
    """The demo rows over three nodes (``FLEET``), as ``demo_overview`` has
    them, plus web-3's mailer, whose two queued jobs wait for web-3 (down):
    a node's jobs run on that node only. payments runs on web-2."""
    node_of = {name: node for node, names in FLEET.items() for name in names}
    rows = []
    for row in demo_rows():
        project = replace(row.project, node=node_of[row.project.name])
        running = row.running
        if running is not None and running.project == "payments":
            running = replace(running, node="web-2",
                              extra={**running.extra, "runner": WEB2_RUNNER})
        elif running is not None:
            running = replace(running, node=project.node)
        rows.append(replace(row, project=project, running=running))
    mailer = Project(11, "mailer", "/srv/www/mailer", node="web-3")
    last = demo_job(mailer, "01JDQ2H6J8K0L2M4N6P8Q0R2S4", status=JobStatus.COMPLETE,
                    commit="6a5b4c3d", started_ago=5_400, took=21)
    rows.append(ProjectRow(mailer, None, None, None, None, 2, last, last))
    return Overview(rows, UP, 0.0, runners=frozenset({RUNNER, WEB2_RUNNER}),
                    nodes=demo_nodes())


def demo_app(*, refresh_rows: bool = True, runners: frozenset[str] = frozenset({RUNNER}),
             fleet: bool = False) -> DeploysterApp:
    """The dashboard over the demo rows, frozen at ``NOW``, with no core behind it:
    it shows, it never acts (for snapshots and screenshots only). ``runners``:
    the deploy servers alive (none: the queues wait, the running jobs' runner
    is gone); ``fleet``: the rows over three nodes, one down
    (``demo_fleet_overview``)."""
    set_clock(lambda: NOW)
    app = make_app(cast(Deployster, None), live=False, monotonic=lambda: 0.0,
                   wall_clock=lambda: NOW, actor="demo", settings=demo_settings(fleet=fleet))
    if refresh_rows:
        app.overview = demo_fleet_overview() if fleet else demo_overview(runners=runners)
    return app


FAILED_LOG = "".join(
    [
        "[1] $ git pull\n",
        "Updating 0a1b2c3..4b3a291\n",
        "[2] $ yarn install\n",
        "success Already up-to-date.\n",
        "[3] $ yarn build\n",
        "vite v5.4.2 building for production...\n",
        f"{_C}src/pages/checkout.tsx{_OFF}({_Y}41{_OFF},{_Y}7{_OFF}): {_R}error{_OFF} TS2322: "
        "Type 'string' is not assignable to type 'number'.\n",
        f"{_R}error{_OFF} Command failed with exit code 2.\n",
        "[deployster] command 3 (yarn build) exited with code 2\n",
    ]
)


def demo_project_screen(*, runners: frozenset[str] = frozenset({RUNNER}),
                        fleet: bool = False) -> ProjectScreen:
    """my-app's project view over the demo data (reads nothing), ``runners``
    alive as for ``demo_app``; ``fleet``: over ``demo_fleet_overview``'s
    nodes (my-app is web-1's)."""
    project, queue, history = demo_project()
    if fleet:
        project = replace(project, node="web-1")
    start = int((NOW - timedelta(seconds=3140)).timestamp() * 1000)
    failed = [LogChunk(line, start + i * 1900)
              for i, line in enumerate(FAILED_LOG.splitlines(keepends=True))]
    logs = {RUNNING_JOB: demo_log_chunks(), history[0].id: [LogChunk(DEMO_LOG, None)],
            history[1].id: failed}
    # A typical run of 1:35 (the median of the last ten), 19 s of it done, as
    # read 10 ms before ``NOW`` (the screen's clock is the reader's: fixed).
    wait = StartEstimate(typical_ms=95_000, remaining_ms=75_990)
    overview = demo_fleet_overview() if fleet else demo_overview(runners=runners)
    return ProjectScreen(demo_reader(), overview, project, queue=queue,
                         history=history, logs=logs, wait=wait)


def demo_log_screen() -> LogScreen:
    """The running job's log, full screen, over the demo data (reads nothing)."""
    _, queue, _ = demo_project()
    return LogScreen(demo_reader(), RUNNING_JOB, text=demo_log_chunks(), job=queue[0])
