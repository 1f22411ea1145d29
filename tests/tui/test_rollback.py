"""The dashboard's rollback key (b) and what it shows of deployed commits,
driven with Pilot against a real Redis and database (and a real server where a
job has to run): the modal names both commits, y queues a redeploy of the
older job through the project's queue, n or escape queues nothing, and the
history marks redeploys and shows the commit each job deployed."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from textual.app import App
from textual.pilot import Pilot
from textual.widgets import DataTable, Static

from deployster import store
from deployster.models import Job, JobStatus, Project
from deployster.service import Deployster
from deployster.tui.app import make_app
from deployster.tui.screens.confirm import ConfirmScreen
from deployster.tui.screens.project import ProjectScreen
from deployster.tui.screens.projects import ProjectsScreen
from tests.helpers.deploys import deploy_body, history_row, wait_for_status
from tests.helpers.server import LiveServer
from tests.helpers.tui import modal_text, open_project, projects, table_text, wait_until

SIZE = (180, 45)
SHA_OLD = "1111111" + "a" * 33  # full SHA-1s, as a git source stores them
SHA_NEW = "2222222" + "b" * 33


def notes(app: App[Any]) -> list[str]:
    """The notifications shown so far, oldest first."""
    return [n.message for n in app._notifications]


async def deployed_now(pilot: Pilot[Any], project: Project, commit: str) -> DataTable[Any]:
    """The projects table once the project's row shows ``commit`` deployed now."""
    table = await projects(pilot)
    await wait_until(pilot, lambda: str(table.get_cell(str(project.id), "deployed")) == commit,
                     what=f"{commit} deployed now")
    return table


async def finished_deploy(server: LiveServer, core: Deployster, cd: Path, commit: str) -> str:
    """A deploy of ``commit`` that completed and reached the SQL history."""
    async with server.client() as client:
        job = (await client.post("/deploy", json=deploy_body(cd, "echo built", commit=commit))
               ).json()["job_id"]
        assert (await wait_for_status(client, job))["status"] == "complete"
    await history_row(core, job, "complete")
    return str(job)


def past_job(project: Project, n: int, *, commit: str, deployed_sha: str | None = None,
             status: JobStatus = JobStatus.COMPLETE, reason: str | None = None,
             redeploy_of: str | None = None, commands_masked: bool = False) -> Job:
    """The ``n``-th past job of ``project`` (ids, and so times, grow with ``n``)."""
    return Job(id=f"01JE{n:022d}", project_id=project.id, project=project.name,
               cd=project.path, commands=["yarn build", "supervisorctl restart my-app--main"],
               commit_hash=commit, ref_name="main", status=status, reason=reason,
               queued_at=f"2026-03-0{n}T10:00:00.000Z", started_at=f"2026-03-0{n}T10:00:01.000Z",
               finished_at=f"2026-03-0{n}T10:01:00.000Z", deployed_sha=deployed_sha,
               redeploy_of=redeploy_of, commands_masked=commands_masked)


async def in_history(core: Deployster, *jobs: Job) -> None:
    await store.upsert_deployments(core.db, [store.deployment_row(j, log="ok\n") for j in jobs])


@pytest.fixture
async def two_deploys(core: Deployster, project_dir: Path) -> tuple[Project, Job, Job]:
    """my-app, with two completed deploys in its history: the older of commit
    1111111 (SHA_OLD), the newer of 2222222 (SHA_NEW)."""
    project = await core.projects.add(str(project_dir))
    older = past_job(project, 1, commit="1111aaa", deployed_sha=SHA_OLD)
    newer = past_job(project, 2, commit="2222bbb", deployed_sha=SHA_NEW)
    await in_history(core, older, newer)
    return project, older, newer


async def nothing_queued(core: Deployster, project: Project) -> None:
    assert await core.queue.queued_ids(project.id) == []
    assert not [e for e in await store.select_audit_events(core.db)
                if e["action"] == "job.redeploy"]


async def test_b_rolls_back_to_the_previous_commit_through_the_queue(
    server: LiveServer, core: Deployster, project_dir: Path
) -> None:
    project = await core.projects.add(str(project_dir))
    old = await finished_deploy(server, core, project_dir, "1111aaa")
    new = await finished_deploy(server, core, project_dir, "2222bbb")
    app = make_app(core)
    async with app.run_test(size=SIZE) as pilot:
        table = await deployed_now(pilot, project, "2222bbb")
        shown = await modal_text(pilot, "b")
        assert f"Roll {project.name} back from 2222bbb to 1111aaa?" in shown
        now, back = shown.index("deployed now"), shown.index("back to")
        assert now < shown.index(new) < back < shown.index(old)  # each job with its commit
        assert "queues a new job that redeploys job" in shown
        await pilot.press("y")
        await wait_until(pilot, lambda: any("queued job" in n for n in notes(app)),
                         what="the new job's id")
        message = next(n for n in notes(app) if "queued job" in n)
        match = re.search(r"queued job (\w{26}): ", message)
        assert match, message
        job_id = match.group(1)
        assert "back to 1111aaa" in message
        rollback = await core.job(job_id)
        assert rollback is not None and rollback.redeploy_of == old
        assert rollback.commit_hash == "1111aaa" and rollback.commands[0] == "echo built"
        async with server.client() as client:  # through the queue, run like any deploy
            assert (await wait_for_status(client, job_id))["status"] == "complete"
        await history_row(core, job_id, "complete")
        # The history event refreshes the dashboard: deployed now, marked a redeploy.
        await wait_until(pilot, lambda: str(table.get_cell(str(project.id), "deployed")) ==
                         "↺ 1111aaa", what="the rollback deployed")
        await open_project(pilot)
        hist = app.screen.query_one("#history", DataTable)
        await wait_until(pilot, lambda: hist.row_count == 3, what="three deploys")
        assert [r.split(" | ")[2] for r in table_text(hist)] == [
            "↺ 1111aaa", "2222bbb", "1111aaa"]
        title = str(app.screen.query_one("#history-title", Static).render())
        assert "deployed now 1111aaa" in title
    events = await store.select_audit_events(core.db)
    assert events[0]["action"] == "job.redeploy" and events[0]["job_id"] == job_id
    assert events[0]["detail"] == {"from": old}


async def test_declining_the_rollback_queues_nothing_from_either_screen(
    core: Deployster, two_deploys: tuple[Project, Job, Job]
) -> None:
    project, older, newer = two_deploys
    app = make_app(core)
    async with app.run_test(size=SIZE) as pilot:
        await deployed_now(pilot, project, "2222222")  # the commit checked out
        shown = await modal_text(pilot, "b")
        assert "back from 2222222 to 1111111?" in shown
        assert older.id in shown and newer.id in shown
        await pilot.press("n")
        await wait_until(pilot, lambda: isinstance(app.screen, ProjectsScreen), what="closed")
        await open_project(pilot)
        assert "back from 2222222 to 1111111?" in await modal_text(pilot, "b")
        await pilot.press("escape")
        await wait_until(pilot, lambda: isinstance(app.screen, ProjectScreen), what="closed")
        await pilot.pause(0.3)
        assert not [n for n in notes(app) if "queued" in n]
    await nothing_queued(core, project)


@pytest.mark.parametrize(
    ("history", "refusal", "detail"),
    [
        # Only one commit ever completed (a failure of another commit does not
        # count): there is no earlier commit, so no modal either.
        pytest.param([{"commit": "1111aaa"},
                      {"commit": "2222bbb", "status": JobStatus.FAILED, "reason": "command_failed"},
                      {"commit": "1111aaa"}],
                     "nothing to roll back", "1111aaa", id="nothing-to-roll-back"),
        # The older job's commands were stored with a secret's value masked.
        pytest.param([{"commit": "1111aaa", "commands_masked": True}, {"commit": "2222bbb"}],
                     "cannot be redeployed", "stage variable", id="commands-held-a-secret"),
    ],
)
async def test_a_rollback_with_nothing_to_run_is_refused_and_nothing_is_queued(
    core: Deployster, project_dir: Path, history: list[dict[str, Any]], refusal: str,
    detail: str,
) -> None:
    project = await core.projects.add(str(project_dir))
    await in_history(core, *(past_job(project, n, **job) for n, job in enumerate(history, 1)))
    app = make_app(core)
    async with app.run_test(size=SIZE) as pilot:
        await projects(pilot, showing="✔")  # the last deploy
        await pilot.press("b")
        await wait_until(pilot, lambda: any(refusal in n for n in notes(app)),
                         what="the refusal")
        message = next(n for n in notes(app) if refusal in n)
        assert message.startswith(f"roll back {project.name}: ") and detail in message
        assert not isinstance(app.screen, ConfirmScreen)
    await nothing_queued(core, project)


async def test_history_shows_each_jobs_deployed_commit_and_its_redeploys(
    core: Deployster, project_dir: Path
) -> None:
    """A commit_hash that was no revision (a quoted heredoc sent the text
    itself) deployed the branch's tip: the tables, the title and the redeploy
    modal name the commit checked out, and a redeploy is marked as one."""
    project = await core.projects.add(str(project_dir))
    first = past_job(project, 1, commit="$(git rev-parse HEAD)", deployed_sha=SHA_OLD)
    broken = past_job(project, 2, commit="cafe123", status=JobStatus.FAILED,
                      reason="checkout_failed")
    again = past_job(project, 3, commit=SHA_OLD, deployed_sha=SHA_OLD, redeploy_of=first.id)
    await in_history(core, first, broken, again)
    app = make_app(core)
    async with app.run_test(size=SIZE) as pilot:
        await deployed_now(pilot, project, "↺ 1111111")  # marked a redeploy
        await open_project(pilot)
        hist = app.screen.query_one("#history", DataTable)
        await wait_until(pilot, lambda: hist.row_count == 3, what="the history")
        rows = [r.split(" | ") for r in table_text(hist)]
        assert [(r[1], r[2]) for r in rows] == [
            ("01JE…0003", "↺ 1111111"), ("01JE…0002", "cafe123"), ("01JE…0001", "1111111")]
        title = str(app.screen.query_one("#history-title", Static).render())
        assert "deployed now 1111111 (job 01JE…0003)" in title
        hist.focus()
        log_title = app.screen.query_one("#log-title", Static)
        await wait_until(pilot, lambda: "redeploy of 01JE…0001" in str(log_title.render()),
                         what="the log pane naming the job redeployed")
        await pilot.press("down", "down")  # the first deploy: the one a redeploy runs
        await wait_until(pilot, lambda: "redeploy of" not in str(log_title.render()),
                         what="the first deploy's log")
        shown = await modal_text(pilot, "r")
        assert "Redeploy my-app at 1111111?" in shown and "$(git" not in shown
        await pilot.press("n")


async def test_y_rolls_back_to_the_commit_the_modal_named(
    core: Deployster, two_deploys: tuple[Project, Job, Job]
) -> None:
    """A deploy of a third commit completes while the modal is open: y still
    goes back to the commit the operator read, not to what a rollback asked
    for now would choose (the one deployed before the third)."""
    project, older, _ = two_deploys
    app = make_app(core)
    async with app.run_test(size=SIZE) as pilot:
        await deployed_now(pilot, project, "2222222")
        assert "back from 2222222 to 1111111?" in await modal_text(pilot, "b")
        await in_history(core, past_job(project, 3, commit="3333ccc"))
        await pilot.press("y")
        await wait_until(pilot, lambda: any("queued job" in n for n in notes(app)),
                         what="the new job")
    (job_id,) = await core.queue.queued_ids(project.id)
    job = await core.job(job_id)
    assert job is not None and job.status is JobStatus.QUEUED
    assert job.redeploy_of == older.id and job.commit_hash == SHA_OLD


async def test_a_second_identical_redeploy_names_the_job_already_waiting(
    core: Deployster, project_dir: Path
) -> None:
    """The queue answers an identical request with the job still waiting: the
    operator is told no new job was queued, and which one will do it."""
    project = await core.projects.add(str(project_dir))
    await in_history(core, past_job(project, 1, commit="1111aaa", deployed_sha=SHA_OLD))
    app = make_app(core)
    async with app.run_test(size=SIZE) as pilot:
        await projects(pilot, showing="✔")  # the last deploy
        for _ in range(2):
            await modal_text(pilot, "r")
            await pilot.press("y")
            await wait_until(pilot, lambda: isinstance(app.screen, ProjectsScreen),
                             what="closed")
        await wait_until(pilot, lambda: any("nothing new queued" in n for n in notes(app)),
                         what="the duplicate said")
        (job_id,) = await core.queue.queued_ids(project.id)
        first = next(n for n in notes(app) if "queued job" in n)
        assert f"queued job {job_id[:4]}…{job_id[-4:]}" in first
        duplicate = next(n for n in notes(app) if "nothing new queued" in n)
        assert f"job {job_id}, already waiting" in duplicate and "1111111 on main" in duplicate


async def test_roll_back_is_in_the_keys_and_the_command_palette(
    core: Deployster, project_dir: Path
) -> None:
    project = await core.projects.add(str(project_dir))
    await in_history(core, past_job(project, 1, commit="1111aaa"),
                     past_job(project, 2, commit="2222bbb"))
    app = make_app(core)
    async with app.run_test(size=SIZE) as pilot:
        await projects(pilot, showing="✔")  # the last deploy
        await pilot.press("question_mark")
        await wait_until(pilot, lambda: len(app.screen.query("#help-keys")) == 1, what="help")
        keys = str(app.screen.query_one("#help-keys", Static).render())
        assert keys.count("b           Roll back") == 2  # the projects and project screens
        await pilot.press("escape")
        await pilot.press("ctrl+p")
        await pilot.press(*"roll back")
        await pilot.pause(0.5)
        # The palette's entry opens the rollback modal.
        assert "back from 2222bbb to 1111aaa?" in await modal_text(pilot, "enter")
        await pilot.press("n")
    await nothing_queued(core, project)
