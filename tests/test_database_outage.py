"""The database going away under a running server: a clear 503 where the
database is needed, nothing half-written, history catches up after; and a
database emptied under it gets its tables back without losing a finished job.

The outage tests run only when DEPLOYSTER_TEST_DATABASE_URL points at
PostgreSQL (SQLite is a file: it cannot "go down" the same way)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from deployster import store
from deployster.service import Deployster
from deployster.settings import Settings
from tests.helpers.databases import pg_admin_url
from tests.helpers.deploys import deploy_body, wait_for_status
from tests.helpers.server import LiveServer, start_server

needs_postgres = pytest.mark.skipif(
    not pg_admin_url(), reason="needs DEPLOYSTER_TEST_DATABASE_URL (PostgreSQL)"
)


async def _admin(sql: str) -> None:
    admin = pg_admin_url()
    assert admin is not None
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _block(name: str) -> None:
    await _admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
    await _admin(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        f"WHERE datname = '{name}' AND pid <> pg_backend_pid()"
    )


@pytest.fixture
def pg_url(any_database_url: str) -> str:
    """The test's own PostgreSQL database (the SQLite run is skipped)."""
    if not any_database_url.startswith("postgresql"):
        pytest.skip("PostgreSQL only")
    return any_database_url


@pytest.fixture
async def warm(settings: Settings, pg_url: str, root: Path, project_dir: Path,
               tmp_path: Path) -> AsyncIterator[tuple[Deployster, LiveServer]]:
    """A core and a live server on ``pg_url`` (``root`` allowed; the project
    ``project_dir``, outside it, registered). The server has deployed the
    project once already: it has been serving, its project cache is warm."""
    own = settings.with_overrides(database_url=pg_url, allowed_roots=(root,))
    core = await Deployster.open(own)
    await core.projects.add(str(project_dir))
    server = start_server(own, tmp_path / "server.log")
    try:
        async with server.client() as client:
            first = (await client.post("/deploy", json=deploy_body(project_dir, "echo warm"))
                     ).json()
            assert (await wait_for_status(client, first["job_id"]))["status"] == "complete"
        yield core, server
    finally:
        server.stop()
        await core.close()


@needs_postgres
async def test_database_outage_gives_503_and_history_catches_up(
    warm: tuple[Deployster, LiveServer], pg_url: str, root: Path, project_dir: Path
) -> None:
    core, server = warm
    name = pg_url.rsplit("/", 1)[1]
    try:
        async with server.client() as client:
            await _block(name)
            health = await client.get("/healthz")
            assert health.status_code == 503
            assert health.json()["database"] != "ok" and health.json()["redis"] == "ok"

            # Registering a new project needs the database: a clear 503, nothing queued.
            fresh = root / "fresh"
            fresh.mkdir()
            jobs_before = await core.redis.keys(f"{core.keys.prefix}job:*")
            reply = await client.post("/deploy", json=deploy_body(fresh, "echo no"))
            assert reply.status_code == 503, reply.text
            assert reply.json()["code"] == "database_unavailable"
            assert await core.redis.keys(f"{core.keys.prefix}job:*") == jobs_before

            # A registered project still deploys (Redis holds the live state)...
            reply = await client.post("/deploy", json=deploy_body(project_dir, "echo during"))
            assert reply.status_code == 200, reply.text
            job = reply.json()
            deadline = time.monotonic() + 30
            while (await client.get(f"/status/{job['job_id']}")).json()["status"] != "complete":
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)

            # ...and once the database is back, history has it, log and all.
            await _admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            row = None
            while time.monotonic() < deadline + 30:
                try:
                    row = await store.select_deployment(core.db, job["job_id"])
                except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                    row = None
                if row is not None and row.status.value == "complete":
                    break
                await asyncio.sleep(0.2)
            assert row is not None and row.status.value == "complete"
            log = await store.select_deployment_log(core.db, job["job_id"])
            assert log is not None and "during\n" in log
            assert (await client.get("/healthz")).status_code == 200
        assert server.process.poll() is None, "the server must survive the outage"
        assert "Traceback" not in server.log()
    finally:
        await _admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')


@needs_postgres
async def test_a_database_emptied_under_the_server_loses_no_finished_job(
    warm: tuple[Deployster, LiveServer], pg_url: str, project_dir: Path
) -> None:
    """PostgreSQL dropped and created again empty while the server runs: health
    says the tables are missing instead of "ok", the server creates them again,
    and a job that finished meanwhile reaches the history (it was dropped, with
    a warning, as a row the database refused)."""
    core, server = warm
    name = pg_url.rsplit("/", 1)[1]
    async with server.client() as client:
        await core.db.disconnect()
        await _admin(f'DROP DATABASE "{name}" WITH (FORCE)')
        await _admin(f'CREATE DATABASE "{name}"')
        # Health reads the schema, not only the connection (the server
        # re-creates the tables within seconds: catch it while it may).
        health = (await client.get("/healthz")).json()
        assert health["database"] == "ok" or "tables are missing" in health["database"], health
        reply = await client.post("/deploy", json=deploy_body(project_dir, "echo after-the-drop"))
        assert reply.status_code == 200, reply.text
        job_id = reply.json()["job_id"]
        await core.db.connect()
        deadline = time.monotonic() + 60
        row = None
        while time.monotonic() < deadline:
            try:
                row = await store.select_deployment(core.db, job_id)
            except Exception:  # the tables may not be back yet
                row = None
            if row is not None and row.status.value == "complete":
                break
            await asyncio.sleep(0.2)
        assert row is not None and row.status.value == "complete", row
        log = await store.select_deployment_log(core.db, job_id)
        assert log is not None and "after-the-drop\n" in log
        assert (await client.get("/healthz")).json()["database"] == "ok"
    assert "cannot be stored, left out" not in server.log()
    assert "Traceback" not in server.log()


async def test_health_reads_the_schema_not_only_the_connection(core: Deployster) -> None:
    from deployster.history import HistoryWriter

    assert (await core.health())["database"] == "ok"
    for table in ("deployments", "audit_events", "projects", "schema_migrations"):
        await core.db.execute(f"DROP TABLE {table}")
    state = (await core.health())["database"]
    assert state == "down: deployster's tables are missing (the database was emptied?)", state
    await HistoryWriter(core).flush()  # nothing dirty: not what re-creates them
    writer = HistoryWriter(core)
    await writer._schema_check_when_due()
    assert (await core.health())["database"] == "ok"
