"""``GET /projects`` names each project's deploy steps and the commit deployed
now (docs/api.md, "GET /projects"): the newest complete job's, whether the
history writer has copied it to SQL yet or not."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deployster import store
from deployster.models import Job, JobStatus
from deployster.overview import project_summaries
from deployster.service import DeployRequest, Deployster
from tests.helpers.deploys import deploy_body, history_row, wait_for_status
from tests.helpers.server import LiveServer

STEPS = {"source": "none", "git_remote": "upstream", "supervisor_update": False,
         "verify_window": 0.0, "verify_running": 1.5}
SHA = "c0ffee12" * 5  # a full SHA-1, as a git source stores it


async def listed(server: LiveServer) -> dict[str, Any]:
    async with server.client() as client:
        reply = await client.get("/projects")
    assert reply.status_code == 200, reply.text
    (project,) = reply.json()["projects"]
    return dict(project)


async def test_the_deploy_steps_and_the_commit_deployed_now(
    server: LiveServer, core: Deployster, project_dir: Path
) -> None:
    await core.projects.add(str(project_dir), steps=STEPS)
    project = await listed(server)
    assert {k: project[k] for k in STEPS} == STEPS
    assert project["deployed_commit"] is None and project["deployed_job"] is None

    async with server.client() as client:
        good = (await client.post("/deploy", json=deploy_body(
            project_dir, "true", commit="1111aaa"))).json()["job_id"]
        assert (await wait_for_status(client, good))["status"] == "complete"
    # At once, as complete as /status said (the history writer copies it a
    # moment later): never the state before it.
    project = await listed(server)
    assert (project["deployed_commit"], project["deployed_job"]) == ("1111aaa", good)

    async with server.client() as client:
        bad = (await client.post("/deploy", json=deploy_body(
            project_dir, "false", commit="2222bbb"))).json()["job_id"]
        assert (await wait_for_status(client, bad))["status"] == "failed"
    await history_row(core, bad)
    await history_row(core, good)
    # A failed deploy changed nothing: the complete one is still what runs.
    project = await listed(server)
    assert (project["deployed_commit"], project["deployed_job"]) == ("1111aaa", good)


async def test_the_deployed_commit_is_the_one_checked_out(
    server: LiveServer, core: Deployster, project_dir: Path
) -> None:
    """A commit_hash that was no revision (the seed guide's quoted heredoc
    sends the text itself): the commit is the one the job checked out."""
    project = await core.projects.add(str(project_dir))
    job = Job(id=f"01JD{1:022d}", project_id=project.id, project=project.name,
              cd=project.path, commands=["yarn build"], commit_hash="$(git rev-parse HEAD)",
              ref_name="main", status=JobStatus.COMPLETE, deployed_sha=SHA,
              queued_at="2026-01-01T00:00:00.000Z", started_at="2026-01-01T00:00:01.000Z",
              finished_at="2026-01-01T00:01:00.000Z")
    await store.upsert_deployments(core.db, [store.deployment_row(job, log="ok\n")])
    listed_project = await listed(server)
    assert listed_project["deployed_commit"] == SHA
    assert listed_project["deployed_job"] == job.id


async def test_a_job_not_yet_copied_to_sql_counts(
    core: Deployster, project_dir: Path
) -> None:
    """Complete in Redis, its SQL row not written (no history writer runs
    here): it is what is deployed."""
    project = await core.projects.add(str(project_dir))
    request = DeployRequest(str(project_dir), ["true", "supervisorctl restart my-app--main"],
                            "3333ccc", "main")
    result = await core.submit(request, run_here=True)
    running = await core.jobs.get(result.job_id)
    assert running is not None and result.started == running.id
    assert (await core.queue.finish(running, JobStatus.COMPLETE, exit_code=0)).ended
    assert await store.select_deployment(core.db, running.id) is None
    (summary,) = await project_summaries(core)
    assert summary["id"] == project.id
    assert (summary["deployed_commit"], summary["deployed_job"]) == ("3333ccc", running.id)
