"""GitHub deployments (README.md#github-deployments) against a local fake of
GitHub's API (``tests/helpers/receivers.py``'s ``FakeGitHub``), which checks
every call: the token, the deployment's fields, and that a status only ever
goes to a deployment it made. In process, as ``tests/test_notify.py``."""

from __future__ import annotations

from pathlib import Path

import pytest

from deployster.control import cancel_job
from deployster.notify.targets import NotifyChange
from deployster.settings import Settings
from tests.helpers.inprocess import audit, deploy, ended, put_stubs_on_path, running
from tests.helpers.receivers import FakeGitHub

TOKEN = "ghp_projectToken0123456789"
PIPELINE = [{"stage_name": "Production", "git_branch": "main"}]


@pytest.fixture(autouse=True)
def stubs_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    put_stubs_on_path(monkeypatch)


async def test_each_job_is_a_deployment_whose_statuses_follow_it_in_order(
    settings: Settings, project_dir: Path
) -> None:
    with FakeGitHub(TOKEN) as github:
        # The project's own token wins over the server-wide one.
        wide = settings.with_overrides(github_api_url=github.api_url,
                                       github_token="ghp_serverWideButWrong",
                                       public_url="https://deploy.example.com")
        async with running(wide) as (core, dispatcher):
            await core.projects.add(
                str(project_dir), pipeline=PIPELINE, queue_policy="supersede",
                notify=NotifyChange(github="acme/app", github_token=TOKEN + "\n"))
            gate = project_dir / "gate"
            first = await deploy(core, dispatcher, project_dir,
                                 f"while [ ! -e {gate} ]; do sleep 0.05; done",
                                 commit="aaa1111")
            replaced = await deploy(core, dispatcher, project_dir, "true", commit="bbb2222")
            failing = await deploy(core, dispatcher, project_dir, "exit 1", commit="ccc3333")
            other_ref = await deploy(core, dispatcher, project_dir, "true", commit="ddd4444",
                                     ref="feature/x")
            await cancel_job(core, other_ref, actor="cli:alice", wait=0)
            gate.touch()
            assert await ended(core, failing) == "failed (command_failed)"
            a = await github.wait_for_states("aaa1111", 2)
            b = await github.wait_for_states("bbb2222", 2)
            c = await github.wait_for_states("ccc3333", 3)
            d = await github.wait_for_states("ddd4444", 2)
    assert github.errors == []
    assert a.states == ["in_progress", "success"]  # it started at once: never queued
    assert b.states == ["queued", "inactive"]  # superseded before it started
    assert c.states == ["queued", "in_progress", "failure"]
    assert d.states == ["queued", "inactive"]  # cancelled while queued: nothing deployed
    assert a.request["environment"] == "Production" and d.request["environment"] == "feature/x"
    assert a.request["payload"]["deployster_job"] == first
    assert all(s["log_url"] == f"https://deploy.example.com/jobs/{first}/logs"
               for s in a.statuses)
    assert "superseded by " + failing in b.statuses[-1]["description"]
    assert "command_failed" in c.statuses[-1]["description"]
    # Each deployment was made before its first status, and its statuses came in order.
    for deployment in (a, b, c, d):
        calls = [call for call in github.calls
                 if call == f"create {deployment.request['ref']}"
                 or call.startswith(f"status {deployment.id} ")]
        assert calls[0].startswith("create") and len(calls) == len(deployment.states) + 1
    assert replaced not in (first, failing)


async def test_a_status_that_fails_is_retried_and_no_later_one_overtakes_it(
    settings: Settings, project_dir: Path
) -> None:
    with FakeGitHub(TOKEN) as github:
        github.fail_statuses = 1  # the first status post answers 500
        wide = settings.with_overrides(github_api_url=github.api_url, github_token=TOKEN)
        async with running(wide) as (core, dispatcher):
            project = await core.projects.add(str(project_dir),
                                              notify=NotifyChange(github="acme/app"))
            job = await deploy(core, dispatcher, project_dir, "true", commit="eee5555")
            assert await ended(core, job) == "complete"
            deployment = await github.wait_for_states("eee5555", 2)
            attempts = await audit(core, dispatcher.notifier, project.id, count=3)
    assert github.errors == []
    assert deployment.states == ["in_progress", "success"]
    assert len(github.deployments) == 1  # the retry posted the status only
    assert attempts == [("notify.failed", "started", 500), ("notify.sent", "started", 201),
                        ("notify.sent", "complete", 201)]


async def test_without_a_token_the_deployment_is_given_up_and_the_job_unchanged(
    settings: Settings, project_dir: Path
) -> None:
    with FakeGitHub(TOKEN) as github:
        async with running(settings.with_overrides(github_api_url=github.api_url)) as (
                core, dispatcher):
            project = await core.projects.add(str(project_dir),
                                              notify=NotifyChange(github="acme/app"))
            job = await deploy(core, dispatcher, project_dir, "true")
            assert await ended(core, job) == "complete"
            attempts = await audit(core, dispatcher.notifier, project.id, count=2)
    assert github.requests == []
    assert attempts == [("notify.gave_up", "started", None), ("notify.gave_up", "complete", None)]
