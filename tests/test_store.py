"""The SQL history (``deployster/store.py``, its schema in ``deployster/db.py``)
on SQLite and, when configured, PostgreSQL.

Every test takes ``any_database_url``, so each one runs once per backend: the
same statements must behave the same on both.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from databases import Database

from deployster import store
from deployster.db import MIGRATIONS, connect_database, migrate
from deployster.events import HISTORY, decode
from deployster.history import HistoryWriter
from deployster.ids import new_job_id
from deployster.logstream import LogWriter
from deployster.models import Job, JobStatus, Reason
from deployster.service import Deployster
from deployster.settings import Settings


def make_job(
    project_id: int = 1,
    *,
    job_id: str | None = None,
    status: JobStatus = JobStatus.QUEUED,
    **fields: object,
) -> Job:
    job = Job(
        id=job_id or new_job_id(),
        project_id=project_id,
        project=f"app-{project_id}",
        cd=f"/srv/app-{project_id}",
        commands=["yarn install", "supervisorctl restart app"],
        commit_hash="a1b2c3d",
        ref_name="main",
        status=status,
        queued_at="2024-05-01T10:00:00.000Z",
    )
    for key, value in fields.items():
        setattr(job, key, value)
    return job


async def upsert(db: Database, job: Job, *, log: str | None = None) -> None:
    await store.upsert_deployments(db, [store.deployment_row(job, log=log)])


# --------------------------------------------------------------- migrations


async def test_connect_applies_every_migration_once(db: Database) -> None:
    rows = await db.fetch_all("SELECT version, name FROM schema_migrations ORDER BY version")
    assert [(r["version"], r["name"]) for r in rows] == [(v, n) for v, n, _ in MIGRATIONS]
    assert rows[0]["version"] == 1
    assert await migrate(db) == []
    assert await db.fetch_val("SELECT COUNT(*) FROM schema_migrations") == len(MIGRATIONS)


async def test_reconnecting_keeps_the_data_and_applies_nothing(any_database_url: str) -> None:
    first = await connect_database(any_database_url)
    try:
        await store.insert_project(first, name="kept", path="/srv/kept", pipeline_json="[]",
                                   lock_ttl=600, timeout=3600)
    finally:
        await first.disconnect()
    second = await connect_database(any_database_url)
    try:
        assert await migrate(second) == []
        project = await store.select_project_by_name(second, "kept")
        assert project is not None and project.path == "/srv/kept"
    finally:
        await second.disconnect()


async def test_two_processes_migrating_a_fresh_database_at_once_both_succeed(
    any_database_url: str,
) -> None:
    """The server and the dashboard starting together on an empty database."""
    first, second = await asyncio.gather(
        connect_database(any_database_url), connect_database(any_database_url)
    )
    try:
        assert await db_versions(first) == [v for v, _, _ in MIGRATIONS]
        applied = await asyncio.gather(migrate(first), migrate(second))
        assert applied == [[], []]
        assert await db_versions(second) == [v for v, _, _ in MIGRATIONS]
    finally:
        await first.disconnect()
        await second.disconnect()


async def test_concurrent_migrate_calls_apply_each_version_exactly_once(
    any_database_url: str,
) -> None:
    # Raw connections, no migration yet: the race is entirely inside migrate().
    options: dict[str, Any] = {"timeout": 30} if any_database_url.startswith("sqlite") else {}
    databases = [Database(any_database_url, **options) for _ in range(3)]
    for database in databases:
        await database.connect()
    try:
        applied = await asyncio.gather(*(migrate(d) for d in databases))
        assert sorted(applied) == [[], [], [v for v, _, _ in MIGRATIONS]]
        assert await db_versions(databases[0]) == [v for v, _, _ in MIGRATIONS]
    finally:
        for database in databases:
            await database.disconnect()


async def db_versions(db: Database) -> list[int]:
    rows = await db.fetch_all("SELECT version FROM schema_migrations ORDER BY version")
    return [int(r["version"]) for r in rows]


async def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(sqlite_url: str) -> None:
    db = await connect_database(sqlite_url)
    try:
        assert (await db.fetch_val("PRAGMA journal_mode")).lower() == "wal"
        assert await db.fetch_val("PRAGMA busy_timeout") > 0
    finally:
        await db.disconnect()
    # WAL is a property of the file: another process opening it sees it too.
    path = sqlite_url.split("sqlite:///", 1)[1]
    with closing(sqlite3.connect(path)) as other:
        assert other.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"


# ----------------------------------------------------------------- projects


async def test_project_insert_select_update_delete(db: Database) -> None:
    pipeline = [{"stage_name": "Production", "git_branch": "main",
                 "environment_variables": [{"key": "API_URL", "value": "https://api"}]}]
    project = await store.insert_project(
        db, name="web", path="/srv/web", pipeline_json=json.dumps(pipeline),
        lock_ttl=120, timeout=900,
    )
    assert project is not None and project.id > 0
    assert (project.name, project.path, project.lock_ttl, project.timeout) == (
        "web", "/srv/web", 120.0, 900.0)
    assert project.created_at.endswith("Z")
    assert [s.to_dict() for s in project.pipeline] == pipeline
    assert await store.select_project(db, project.id) == project
    assert await store.select_project_by_name(db, "web") == project
    assert await store.select_project_by_path(db, "/srv/web") == project
    assert await store.select_project_by_name(db, "nope") is None
    assert await store.select_project_by_path(db, "/srv/nope") is None

    other = await store.insert_project(db, name="api", path="/srv/api", pipeline_json="[]",
                                       lock_ttl=600, timeout=3600)
    assert other is not None and other.id != project.id
    assert [p.name for p in await store.select_projects(db)] == ["api", "web"]

    await store.update_project(db, project.id, name="website", timeout=60, lock_ttl=None)
    updated = await store.select_project(db, project.id)
    assert updated is not None
    assert (updated.name, updated.timeout, updated.lock_ttl) == ("website", 60.0, 120.0)
    assert updated.pipeline == project.pipeline
    assert await store.select_project_by_name(db, "web") is None

    await store.delete_project(db, project.id)
    assert await store.select_project(db, project.id) is None
    assert [p.name for p in await store.select_projects(db)] == ["api"]


async def test_project_names_and_paths_are_unique(db: Database) -> None:
    """A second insert of a name or a path stores nothing and raises nothing:
    racing registrations (two first deploys of one directory) must not 500."""
    web = await store.insert_project(db, name="web", path="/srv/web", pipeline_json="[]",
                                     lock_ttl=600, timeout=3600)
    assert await store.insert_project(db, name="web", path="/srv/other", pipeline_json="[]",
                                      lock_ttl=600, timeout=3600) is None
    assert await store.insert_project(db, name="other", path="/srv/web", pipeline_json="[]",
                                      lock_ttl=600, timeout=3600) is None
    assert await store.select_projects(db) == [web]


async def test_a_path_is_one_project_per_node_and_old_projects_are_adopted(db: Database) -> None:
    """README.md#several-hosts: a project is (node, path). /srv/web on web-1 and on web-2
    are two projects; a name stays one project's. Rows from before nodes
    (node '') go to the first node to adopt them, except a path it has."""
    old = await store.insert_project(db, name="web", path="/srv/web", pipeline_json="[]",
                                     lock_ttl=600, timeout=3600)
    kept = await store.insert_project(db, name="api", path="/srv/api", pipeline_json="[]",
                                      lock_ttl=600, timeout=3600)
    one = await store.insert_project(db, name="web-1", path="/srv/web", pipeline_json="[]",
                                     lock_ttl=600, timeout=3600, node="web-1")
    two = await store.insert_project(db, name="web-2", path="/srv/web", pipeline_json="[]",
                                     lock_ttl=600, timeout=3600, node="web-2")
    assert old and kept and one and two and len({old.id, one.id, two.id}) == 3
    assert await store.insert_project(db, name="again", path="/srv/web", pipeline_json="[]",
                                      lock_ttl=600, timeout=3600, node="web-2") is None
    assert await store.select_project_by_path(db, "/srv/web", "web-2") == two
    # web-1 has /srv/web already: the old one stays unadopted; /srv/api moves.
    assert await store.adopt_projects(db, "web-1") == 1
    assert (await store.select_project_by_path(db, "/srv/api", "web-1")) == \
        store.Project(**{**kept.__dict__, "node": "web-1"})
    assert await store.select_project_by_path(db, "/srv/web", "") == old
    assert await store.adopt_projects(db, "web-1") == 0


# -------------------------------------------------------------- deployments


async def test_upsert_is_idempotent(db: Database) -> None:
    job = make_job(stage="Production")
    for _ in range(3):
        await upsert(db, job)
    assert await db.fetch_val("SELECT COUNT(*) FROM deployments") == 1
    stored = await store.select_deployment(db, job.id)
    assert stored is not None
    assert stored.to_dict() == job.to_dict()


async def test_the_commands_masked_flag_round_trips_and_no_raw_text_is_stored(
    db: Database,
) -> None:
    """The history keeps the commands as shown (masked) and the flag that keeps
    such a job from being redeployed; the text as sent never reaches SQL."""
    job = make_job(commands=["echo *** > out", "supervisorctl restart app"],
                   commands_masked=True, raw_commands=["echo s3cr3t > out",
                                                       "supervisorctl restart app"])
    plain = make_job()
    await store.upsert_deployments(db, [store.deployment_row(j) for j in (job, plain)])
    stored = await store.select_deployment(db, job.id)
    assert stored is not None and stored.commands_masked and stored.raw_commands is None
    assert stored.commands == ["echo *** > out", "supervisorctl restart app"]
    other = await store.select_deployment(db, plain.id)
    assert other is not None and not other.commands_masked
    rows = await db.fetch_all("SELECT * FROM deployments")
    assert "s3cr3t" not in repr([dict(r._mapping) for r in rows])


async def test_upsert_moves_forward_and_never_back(db: Database) -> None:
    job = make_job()
    await upsert(db, job)

    job.status, job.started_at = JobStatus.RUNNING, "2024-05-01T10:00:01.000Z"
    await upsert(db, job)
    stored = await store.select_deployment(db, job.id)
    assert stored is not None and stored.status is JobStatus.RUNNING

    finished = make_job(job_id=job.id, status=JobStatus.COMPLETE, exit_code=0,
                        started_at=job.started_at, finished_at="2024-05-01T10:00:09.000Z")
    await upsert(db, finished, log="all done\n")

    # A late writer still holding the 'running' snapshot (and no log).
    stale = make_job(job_id=job.id, status=JobStatus.RUNNING, started_at=job.started_at)
    await upsert(db, stale)
    stale_queued = make_job(job_id=job.id, status=JobStatus.QUEUED)
    await upsert(db, stale_queued)

    stored = await store.select_deployment(db, job.id)
    assert stored is not None
    assert stored.status is JobStatus.COMPLETE
    assert stored.exit_code == 0
    assert stored.finished_at == "2024-05-01T10:00:09.000Z"
    assert await store.select_deployment_log(db, job.id) == "all done\n"


async def test_a_later_upsert_without_log_keeps_the_log(db: Database) -> None:
    job = make_job(status=JobStatus.FAILED, reason=Reason.COMMAND_FAILED.value, exit_code=3)
    await upsert(db, job, log="boom\n")
    job.stage = "Production"  # a later change of another field, no log this time
    await upsert(db, job, log=None)
    stored = await store.select_deployment(db, job.id)
    assert stored is not None
    assert (stored.status, stored.reason, stored.exit_code, stored.stage) == (
        JobStatus.FAILED, "command_failed", 3, "Production")
    assert await store.select_deployment_log(db, job.id) == "boom\n"
    assert await db.fetch_val(
        "SELECT log_bytes FROM deployments WHERE id = :id", {"id": job.id}) == 5


async def test_upsert_many_rows_in_one_call(db: Database) -> None:
    jobs = [make_job(project_id=1) for _ in range(5)]
    await store.upsert_deployments(db, [store.deployment_row(j) for j in jobs])
    await store.upsert_deployments(db, [])
    assert {j.id for j in await store.select_deployments(db)} == {j.id for j in jobs}


async def test_deployments_newest_first_paged_and_filtered_by_project(db: Database) -> None:
    ids = []
    for i in range(7):
        job = make_job(project_id=1 if i % 2 == 0 else 2)
        ids.append(job.id)
        await upsert(db, job)
    assert ids == sorted(ids)  # job ids sort by time
    newest_first = list(reversed(ids))

    assert [j.id for j in await store.select_deployments(db)] == newest_first

    page1 = await store.select_deployments(db, limit=3)
    page2 = await store.select_deployments(db, limit=3, before=page1[-1].id)
    page3 = await store.select_deployments(db, limit=3, before=page2[-1].id)
    page4 = await store.select_deployments(db, limit=3, before=page3[-1].id)
    assert [j.id for j in page1 + page2 + page3] == newest_first
    assert [len(page1), len(page2), len(page3), page4] == [3, 3, 1, []]

    project1 = await store.select_deployments(db, project_id=1)
    assert [j.id for j in project1] == newest_first[::2]
    assert {j.project_id for j in project1} == {1}
    older = await store.select_deployments(db, project_id=2, before=ids[5], limit=1)
    assert [j.id for j in older] == [ids[3]]
    assert await store.select_deployments(db, project_id=99) == []


async def test_select_deployment_of_an_unknown_job(db: Database) -> None:
    assert await store.select_deployment(db, new_job_id()) is None
    assert await store.select_deployment_log(db, new_job_id()) is None


async def test_a_2_mb_non_ascii_log_round_trips_exactly(db: Database) -> None:
    line = "naïve café → 日本語 ✓ 🚀 \"quotes\" 'single' \\ back\ttab\n"
    count = 2 * 1024 * 1024 // len(line.encode("utf-8")) + 1
    text = "".join(f"{i}: {line}" for i in range(count))
    assert len(text.encode("utf-8")) > 2 * 1024 * 1024
    job = make_job(status=JobStatus.COMPLETE, exit_code=0)
    await upsert(db, job, log=text)
    assert await store.select_deployment_log(db, job.id) == text
    assert await db.fetch_val(
        "SELECT log_bytes FROM deployments WHERE id = :id", {"id": job.id}
    ) == len(text.encode("utf-8"))


# -------------------------------------------------------------------- audit


async def test_audit_events_newest_first(db: Database) -> None:
    job_id = new_job_id()
    await store.insert_audit_event(db, actor="alice", action="lock_released", project_id=4,
                                   detail={"holder": job_id, "ttl_ms": 1200})
    await store.insert_audit_event(db, actor="bob", action="job_cancelled", job_id=job_id)
    events = await store.select_audit_events(db)
    assert [(e["actor"], e["action"]) for e in events] == [
        ("bob", "job_cancelled"), ("alice", "lock_released")]
    bob, alice = events
    assert (bob["job_id"], bob["project_id"], bob["detail"]) == (job_id, None, {})
    assert alice["project_id"] == 4 and alice["job_id"] is None
    assert alice["detail"] == {"holder": job_id, "ttl_ms": 1200}
    assert alice["at"].endswith("Z")
    assert len(await store.select_audit_events(db, limit=1)) == 1


# --------------------------------------------------------- history writer


@pytest.fixture
async def core_any(settings: Settings, any_database_url: str) -> AsyncIterator[Deployster]:
    the_core = await Deployster.open(settings.with_overrides(database_url=any_database_url))
    try:
        yield the_core
    finally:
        await the_core.close()


async def test_history_writer_copies_a_finished_job_with_its_full_log(
    core_any: Deployster, project_dir: Path
) -> None:
    core = core_any
    project = await core.projects.add(str(project_dir))
    job = make_job(project.id, cd=project.path, project=project.name)
    job.queued_at = None
    result = await core.queue.enqueue(job, runner=core.runner_id)
    assert result.started == job.id

    running = await core.jobs.get(job.id)
    assert running is not None and running.status is JobStatus.RUNNING
    output = "".join(f"step {i}: ünïcode ✓\n" for i in range(2000))
    async with LogWriter(core.redis, core.keys, job.id, cap_bytes=10 * 1024 * 1024) as writer:
        for start in range(0, len(output), 1000):
            writer.write(output[start : start + 1000])

    history = HistoryWriter(core)
    assert await history.flush() == 1  # the 'running' state reaches SQL first
    row = await store.select_deployment(core.db, job.id)
    assert row is not None and row.status is JobStatus.RUNNING
    assert await core.redis.ttl(core.keys.job(job.id)) == -1  # live: no expiry yet

    finished = await core.queue.finish(running, JobStatus.COMPLETE, exit_code=0)
    assert finished.ended
    pubsub = core.redis.pubsub()
    await pubsub.subscribe(core.keys.feed)
    try:
        assert await history.flush() == 1
        # Watchers (the dashboard's "last deploy") learn the history moved.
        seen = []
        for _ in range(50):
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
            if message:
                seen.append(decode(message["data"]))
                if seen[-1].get("type") == HISTORY:
                    break
        assert {"type": HISTORY} in seen
    finally:
        await pubsub.aclose()
    assert await history.flush() == 0  # nothing left dirty

    row = await store.select_deployment(core.db, job.id)
    assert row is not None
    assert row.status is JobStatus.COMPLETE and row.exit_code == 0
    assert row.project_id == project.id and row.commands == job.commands
    assert row.started_at and row.finished_at
    assert await store.select_deployment_log(core.db, job.id) == output

    # The record stays for the retention; the log, now in SQL, for the grace.
    settings = core.settings
    for key, most in ((core.keys.job(job.id), settings.retention),
                      (core.keys.log(job.id), min(settings.log_grace, settings.retention))):
        ttl = await core.redis.ttl(key)
        assert 0 < ttl <= most, (key, ttl)


async def test_a_row_the_database_refuses_does_not_hold_back_the_others(
    core_any: Deployster, project_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    core = core_any
    project = await core.projects.add(str(project_dir))
    good, bad, later = (make_job(project.id, cd=project.path, project=project.name,
                                 commit_hash=f"c{i}") for i in range(3))
    for job in (good, bad, later):
        await core.queue.enqueue(job, runner=None)
        await core.redis.hincrby(core.keys.dirty, job.id, 1)
    # An exit code no INTEGER column holds: both databases refuse the row.
    await core.redis.hset(core.keys.job(bad.id), "exit_code", str(2**70))

    history = HistoryWriter(core)
    assert await history.flush() == 3
    assert await history.flush() == 0  # settled: no batch retried for ever
    for job in (good, later):
        assert await store.select_deployment(core.db, job.id) is not None
    assert await store.select_deployment(core.db, bad.id) is None
    assert f"job {bad.id} cannot be stored" in caplog.text


async def test_a_log_postgresql_refuses_is_replaced_by_a_note(
    core_any: Deployster, project_dir: Path
) -> None:
    core = core_any
    if not core.db.url.dialect.startswith("postgres"):
        pytest.skip("SQLite stores NUL in text; PostgreSQL refuses it")
    project = await core.projects.add(str(project_dir))
    job = make_job(project.id, cd=project.path, project=project.name)
    await core.queue.enqueue(job, runner=core.runner_id)
    running = await core.jobs.get(job.id)
    assert running is not None
    # Written past LogWriter (which turns NUL into U+FFFD), as an older server might have.
    await core.redis.xadd(core.keys.log(job.id), {"d": "bad \x00 byte\n"}, id="0-1")
    await core.queue.finish(running, JobStatus.COMPLETE, exit_code=0)

    assert await HistoryWriter(core).flush() == 1
    row = await store.select_deployment(core.db, job.id)
    assert row is not None and row.status is JobStatus.COMPLETE
    log = await store.select_deployment_log(core.db, job.id)
    assert log is not None and "the log could not be stored" in log


async def test_cancelled_sqlite_queries_leave_no_thread_behind(sqlite_url: str) -> None:
    # aiosqlite runs a connection in a non-daemon thread: one left running keeps
    # the interpreter from exiting. Queries cancelled at every stage must not
    # leave one behind once the database is closed.
    def workers() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if "connection_worker" in t.name}

    before = workers()
    db = await connect_database(sqlite_url)
    for i in range(40):
        task = asyncio.create_task(db.fetch_val("SELECT 1"))
        await asyncio.sleep(0 if i % 2 else 0.0005)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert await db.fetch_val("SELECT 2") == 2  # still usable after the cancels
    await db.disconnect()
    for _ in range(100):
        if not workers() - before:
            break
        await asyncio.sleep(0.02)
    assert not workers() - before
