"""``store.select_last_deploys``: each project's newest finished and newest
complete deployment in one query (what the dashboard's "last" and "deployed"
columns and ``GET /projects`` show), on SQLite and, when configured, PostgreSQL
(the ``db`` fixture runs each test once per backend)."""

from __future__ import annotations

from databases import Database

from deployster import store
from deployster.models import Job, JobStatus, Project


async def project(db: Database, name: str) -> Project:
    added = await store.insert_project(db, name=name, path=f"/srv/{name}", pipeline_json="[]",
                                       lock_ttl=600, timeout=3600)
    assert added is not None
    return added


def job(owner: Project, n: int, status: JobStatus, commit: str) -> Job:
    """The ``n``-th job of the history (ids, and so times, grow with ``n``)."""
    return Job(id=f"01JF{n:022d}", project_id=owner.id, project=owner.name, cd=owner.path,
               commands=["supervisorctl restart app"], commit_hash=commit, ref_name="main",
               status=status, queued_at="2026-03-01T10:00:00.000Z",
               reason="command_failed" if status is JobStatus.FAILED else None)


async def test_the_newest_finished_and_the_newest_complete_of_each_project(
    db: Database,
) -> None:
    failing, steady, broken, _fresh = [await project(db, n)
                                      for n in ("failing", "steady", "broken", "fresh")]
    jobs = [
        job(failing, 1, JobStatus.COMPLETE, "aaa0001"),
        job(steady, 2, JobStatus.COMPLETE, "bbb0001"),
        job(failing, 3, JobStatus.COMPLETE, "aaa0002"),  # what failing runs now
        job(failing, 4, JobStatus.FAILED, "aaa0003"),
        job(broken, 5, JobStatus.FAILED, "ccc0001"),  # never completed
        job(steady, 6, JobStatus.COMPLETE, "bbb0002"),
        job(failing, 7, JobStatus.FAILED, "aaa0004"),
        job(steady, 8, JobStatus.RUNNING, "bbb0003"),  # not finished: neither
        job(steady, 9, JobStatus.QUEUED, "bbb0004"),
    ]
    await store.upsert_deployments(db, [store.deployment_row(j) for j in jobs])
    found = await store.select_last_deploys(db)
    assert set(found) == {failing.id, steady.id, broken.id}  # "fresh" has no finished one
    ids = {pid: (last.finished.id[-2:], last.complete.id[-2:] if last.complete else None)
           for pid, last in found.items()}
    assert ids == {failing.id: ("07", "03"), steady.id: ("06", "06"), broken.id: ("05", None)}
    assert found[failing.id].complete is not None
    assert found[failing.id].complete.commit_hash == "aaa0002"
    assert found[steady.id].finished is found[steady.id].complete  # one row, one job
