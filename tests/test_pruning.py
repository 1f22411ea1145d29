"""Trimming the SQL history (``DEPLOYSTER_HISTORY_DAYS``, ``deployster history
prune``): old finished deploys go with their logs, each project's newest stay,
queued and running rows are never touched. Runs on SQLite and PostgreSQL, and
end to end against a served instance and the real command line."""

from __future__ import annotations

import asyncio
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from databases import Database

from deployster import pruning, store
from deployster.db import connect_database
from deployster.ids import first_id_at, new_job_id
from deployster.models import Job, JobStatus
from deployster.settings import Settings
from tests.helpers.cli import one_line_error
from tests.helpers.server import serving
from tests.test_cli import deployster, env  # noqa: F401  (env is a fixture)

DAY = 86400.0
NOW = time.time()


def job_at(project_id: int, days_ago: float, status: JobStatus = JobStatus.COMPLETE) -> Job:
    """A job requested ``days_ago`` days before NOW (its id carries the time)."""
    job_id = first_id_at(NOW - days_ago * DAY)[:10] + new_job_id()[10:]
    return Job(id=job_id, project_id=project_id, project=f"app-{project_id}",
               cd=f"/srv/app-{project_id}", commands=["supervisorctl restart app"],
               commit_hash="a1b2c3d", ref_name="main", status=status,
               queued_at="2024-05-01T10:00:00.000Z")


async def insert(db: Database, jobs: list[Job]) -> None:
    rows = [store.deployment_row(j, log=f"log of {j.id}\n" if j.status.finished else None)
            for j in jobs]
    for start in range(0, len(rows), 100):
        await store.upsert_deployments(db, rows[start:start + 100])


async def stored_ids(db: Database) -> set[str]:
    return {str(r["id"]) for r in await db.fetch_all("SELECT id FROM deployments")}


def test_first_id_at_bounds_the_ids_of_that_millisecond() -> None:
    at = time.time()
    job_id = new_job_id()
    assert first_id_at(at - 1) < job_id < first_id_at(at + 1)
    assert first_id_at(at) == first_id_at(at)[:10] + "0" * 16


async def test_old_finished_deploys_go_the_newest_and_unfinished_stay(db: Database) -> None:
    # Project 1: more old rows than one batch, a few recent ones, and two old
    # jobs that never finished (a queued and a running row must survive).
    old1 = [job_at(1, 40 + i / 1000) for i in range(pruning.BATCH * 2 + 50)]
    recent1 = [job_at(1, d) for d in (3, 2, 1)]
    unfinished = [job_at(1, 50, JobStatus.QUEUED), job_at(1, 45, JobStatus.RUNNING)]
    # Project 2: quiet for months, only 2 finished deploys: both stay (keep 5).
    quiet = [job_at(2, 200), job_at(2, 100, JobStatus.FAILED)]
    # Project 3: 8 old deploys, none recent: its 5 newest stay.
    old3 = [job_at(3, 60 + i) for i in range(8)]
    await insert(db, old1 + recent1 + unfinished + quiet + old3)
    before = await stored_ids(db)

    dry = await pruning.prune_history(db, older_than=30 * DAY, keep=5, now=NOW,
                                      dry_run=True)
    assert await stored_ids(db) == before  # a dry run deletes nothing
    # Project 1 keeps 3 recent + the 2 newest old ones; project 3 keeps 5 of 8.
    expected_gone = set(j.id for j in sorted(old1, key=lambda j: j.id)[:-2]) | {
        j.id for j in sorted(old3, key=lambda j: j.id)[:3]}
    assert dry.deleted == len(expected_gone)

    result = await pruning.prune_history(db, older_than=30 * DAY, keep=5, now=NOW)
    assert result.deleted == len(expected_gone)
    assert abs(result.cutoff - (NOW - 30 * DAY)) < 1
    assert await stored_ids(db) == before - expected_gone
    for job in unfinished:
        row = await store.select_deployment(db, job.id)
        assert row is not None and row.status is job.status
    gone = next(iter(expected_gone))
    assert await store.select_deployment_log(db, gone) is None
    kept = recent1[0].id
    assert await store.select_deployment_log(db, kept) == f"log of {kept}\n"

    again = await pruning.prune_history(db, older_than=30 * DAY, keep=5, now=NOW)
    assert again.deleted == 0  # idempotent


async def test_keep_zero_removes_every_old_finished_deploy(db: Database) -> None:
    old = [job_at(7, 10 + i) for i in range(4)]
    new = job_at(7, 1)
    await insert(db, [*old, new])
    result = await pruning.prune_history(db, older_than=5 * DAY, keep=0, now=NOW)
    assert result.deleted == 4
    assert await stored_ids(db) == {new.id}


async def test_the_deployed_job_stays_however_old_it_is(db: Database) -> None:
    # What is deployed now is the newest complete job; failures since it and
    # ``keep`` must not take it: the dashboard, GET /projects and a rollback
    # read it (pruning.py).
    deployed = job_at(8, 90)
    older = job_at(8, 95)
    failures = [job_at(8, 80 - i, JobStatus.FAILED) for i in range(3)]
    await insert(db, [older, deployed, *failures])
    # keep=2 keeps the two newest failures; the deployed job stays either way.
    for keep, gone in ((0, 4), (2, 2)):
        dry = await pruning.prune_history(db, older_than=30 * DAY, keep=keep, now=NOW,
                                          dry_run=True)
        assert dry.deleted == gone
    result = await pruning.prune_history(db, older_than=30 * DAY, keep=0, now=NOW)
    assert result.deleted == 4
    assert await stored_ids(db) == {deployed.id}
    assert await store.select_newest_complete_id(db, 8) == deployed.id


async def test_bad_arguments_are_refused(db: Database) -> None:
    with pytest.raises(ValueError):
        await pruning.prune_history(db, older_than=0, keep=5)
    with pytest.raises(ValueError):
        await pruning.prune_history(db, older_than=DAY, keep=-1)


# -------------------------------------------------------------- end to end


async def test_the_server_prunes_by_itself_when_history_days_is_set(
    settings: Settings, tmp_path: Path
) -> None:
    db = await connect_database(settings.effective_database_url)
    try:
        old = [job_at(1, 100 + i) for i in range(3)]
        recent = job_at(1, 2)
        await insert(db, [*old, recent])
    finally:
        await db.disconnect()
    with contextmanager(serving)(settings, tmp_path, DEPLOYSTER_HISTORY_DAYS="30",
                                 DEPLOYSTER_HISTORY_KEEP="1") as live:
        async with live.client() as client:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                if (await client.get(f"/jobs/{old[-1].id}")).status_code == 404:
                    break
                await asyncio.sleep(0.1)
            for job in old:
                reply = await client.get(f"/jobs/{job.id}")
                assert reply.status_code == 404, reply.text
            reply = await client.get(f"/jobs/{recent.id}")
            assert reply.status_code == 200 and reply.json()["status"] == "complete"
        assert "pruned 3 deployments older than 30 days" in live.log()


def test_history_prune_on_the_command_line(env: dict[str, str],  # noqa: F811
                                           settings: Settings) -> None:
    async def setup() -> list[Job]:
        db = await connect_database(settings.effective_database_url)
        try:
            jobs = [job_at(1, 100), job_at(1, 90), job_at(1, 1)]
            await insert(db, jobs)
            return jobs
        finally:
            await db.disconnect()

    jobs = asyncio.run(setup())
    dry = deployster(env, "history", "prune", "--days", "30", "--keep", "1", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith("would delete 2 finished deploy(s) requested more than 30 ")
    done = deployster(env, "history", "prune", "--days", "30", "--keep", "1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("deleted 2 finished deploy(s)")
    again = deployster(env, "history", "prune", "--days", "30", "--keep", "1")
    assert again.stdout.startswith("deleted 0 ")

    async def remaining() -> set[str]:
        db = await connect_database(settings.effective_database_url)
        try:
            return await stored_ids(db)
        finally:
            await db.disconnect()

    assert asyncio.run(remaining()) == {jobs[2].id}

    # Mistakes: one line, exit 2, nothing deleted.
    no_days = {k: v for k, v in env.items() if k != "DEPLOYSTER_HISTORY_DAYS"}
    assert "--days" in one_line_error(deployster(no_days, "history", "prune"))
    for bad in (["--days", "0"], ["--days", "nan"], ["--days", "x"], ["--keep", "-1"]):
        result = deployster(env, "history", "prune", *bad)
        assert result.returncode == 2 and "Traceback" not in result.stderr, bad
    bad_env = {**env, "DEPLOYSTER_HISTORY_DAYS": "-3"}
    assert "DEPLOYSTER_HISTORY_DAYS" in one_line_error(deployster(bad_env, "history", "prune"))
