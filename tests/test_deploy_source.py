"""Deploy what CI built: the work tree is pinned to the request's commit.

Real git: a bare repository plays ``origin``, the project's directory on the
server is a clone of it, and a developer's clone pushes commits, as CI would
before it calls ``POST /deploy``. The seed guide's commands hold no git step:
the original vps-deployster fetched and checked out first, and so must we.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from deployster.models import Project
from deployster.service import Deployster
from deployster.settings import Settings
from tests.helpers.deploys import deploy_body, history_row, wait_for_status
from tests.helpers.server import LiveServer, serving

GIT_ENV = {**os.environ, "GIT_AUTHOR_NAME": "ci", "GIT_AUTHOR_EMAIL": "ci@example.com",
           "GIT_COMMITTER_NAME": "ci", "GIT_COMMITTER_EMAIL": "ci@example.com",
           "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1"}


def git(cwd: Path, *args: str) -> str:
    result = subprocess.run(["git", *args], cwd=cwd, env=GIT_ENV, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, (args, result.stderr)
    return result.stdout.strip()


@dataclasses.dataclass
class Repos:
    origin: Path  # the bare repository CI pushes to
    dev: Path  # a developer's (CI's) clone
    app: Path  # the project's directory on the server: a clone of origin

    def commit(self, text: str, *, branch: str = "main") -> str:
        """Commit ``text`` as app.txt on ``branch`` and push it; the new sha."""
        git(self.dev, "checkout", "-q", "-B", branch)
        (self.dev / "app.txt").write_text(text)
        git(self.dev, "add", "app.txt")
        git(self.dev, "commit", "-q", "-m", text)
        git(self.dev, "push", "-q", "-f", "origin", branch)
        return git(self.dev, "rev-parse", "HEAD")


@pytest.fixture
def repos(tmp_path: Path) -> Repos:
    origin, dev, app = tmp_path / "origin.git", tmp_path / "dev", tmp_path / "srv" / "app"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(origin))
    git(tmp_path, "clone", "-q", str(origin), str(dev))
    made = Repos(origin, dev, app)
    made.commit("v1")
    app.parent.mkdir()
    git(tmp_path, "clone", "-q", str(origin), str(app))
    return made


@pytest.fixture
def live(settings: Settings, tmp_path: Path) -> Iterator[LiveServer]:
    yield from serving(settings, tmp_path)


def body(app: Path, commit: str, *commands: str, ref: str = "main") -> dict[str, object]:
    return deploy_body(app, *commands, commit=commit, ref=ref)


async def deploy(client: httpx.AsyncClient, payload: dict[str, object]) -> dict[str, object]:
    reply = await client.post("/deploy", json=payload)
    assert reply.status_code == 200, reply.text
    final = await wait_for_status(client, reply.json()["job_id"], timeout=60)
    return {**final, "job_id": reply.json()["job_id"]}


async def deploy_v2_then_v3(
    core: Deployster, client: httpx.AsyncClient, repos: Repos
) -> tuple[Project, dict[str, object], dict[str, object], str, str]:
    """Register the app, push two new commits and deploy them one after the
    other: the project, the final status of each deploy, the commits (v2, v3)."""
    project = await core.projects.add(str(repos.app))
    v2, v3 = repos.commit("v2"), repos.commit("v3")
    first = await deploy(client, body(repos.app, v2, "true"))
    second = await deploy(client, body(repos.app, v3, "true"))
    return project, first, second, v2, v3


async def test_the_guides_workflow_deploys_the_new_commit_without_a_git_command(
    core: Deployster, live: LiveServer, repos: Repos
) -> None:
    await core.projects.add(str(repos.app))  # source: auto -> git (top of a work tree)
    sha = repos.commit("v2")
    async with live.client() as client:
        final = await deploy(client, body(repos.app, sha, "cat app.txt > built.txt"))
        record = (await client.get(f"/jobs/{final['job_id']}")).json()
    assert final["status"] == "complete", final["logs"]
    assert (repos.app / "built.txt").read_text() == "v2"
    assert git(repos.app, "rev-parse", "HEAD") == sha
    assert git(repos.app, "rev-parse", "--abbrev-ref", "HEAD") == "main"
    log = str(final["logs"])
    assert "[deployster] $ git fetch origin\n" in log
    assert f"[deployster] deploying commit {sha}\n" in log
    assert record["deployed_sha"] == sha


async def test_two_racing_ci_runs_end_with_the_later_commit_checked_out(
    core: Deployster, live: LiveServer, repos: Repos
) -> None:
    await core.projects.add(str(repos.app))
    first = repos.commit("v2")
    second = repos.commit("v3")
    async with live.client() as client:
        replies = [await client.post("/deploy", json=body(repos.app, sha, "sleep 0.5"))
                   for sha in (first, second)]
        finals = [await wait_for_status(client, r.json()["job_id"], timeout=60)
                  for r in replies]
    assert [f["status"] for f in finals] == ["complete", "complete"]
    assert git(repos.app, "rev-parse", "HEAD") == second
    assert (repos.app / "app.txt").read_text() == "v3"


async def test_a_dirty_work_tree_is_stashed_under_the_jobs_name_and_recoverable(
    core: Deployster, live: LiveServer, repos: Repos
) -> None:
    await core.projects.add(str(repos.app))
    (repos.app / "app.txt").write_text("a hotfix made on the server")
    (repos.app / "notes.txt").write_text("untracked, left alone")
    sha = repos.commit("v2")
    async with live.client() as client:
        final = await deploy(client, body(repos.app, sha, "true"))
    assert final["status"] == "complete", final["logs"]
    assert (repos.app / "app.txt").read_text() == "v2"
    assert (repos.app / "notes.txt").read_text() == "untracked, left alone"
    stashes = git(repos.app, "stash", "list")
    assert f"deployster {final['job_id']}" in stashes
    assert "a hotfix made on the server" in git(repos.app, "stash", "show", "-p", "stash@{0}")
    assert f"saved as the stash 'deployster {final['job_id']}'" in str(final["logs"])


async def test_an_unknown_commit_fails_before_any_command(
    core: Deployster, live: LiveServer, repos: Repos, tmp_path: Path
) -> None:
    await core.projects.add(str(repos.app))
    marker = tmp_path / "ran"
    async with live.client() as client:
        final = await deploy(client, body(repos.app, "deadbeef" * 5, f"touch {marker}"))
    assert (final["status"], final["reason"]) == ("failed", "checkout_failed")
    assert not marker.exists()
    log = str(final["logs"])
    assert "[1/2]" not in log
    assert log.rstrip().splitlines()[-1].startswith("[deployster] checkout failed: commit "
                                                    "deadbeefdeadbeef")


async def test_an_unreachable_remote_fails_the_checkout_with_gits_message(
    core: Deployster, live: LiveServer, repos: Repos
) -> None:
    await core.projects.add(str(repos.app))
    git(repos.app, "remote", "set-url", "origin", str(repos.origin.parent / "gone.git"))
    async with live.client() as client:
        final = await deploy(client, body(repos.app, repos.commit("v2"), "true"))
    assert (final["status"], final["reason"]) == ("failed", "checkout_failed")
    assert "gone.git" in str(final["logs"])  # git's own message is in the log


async def test_a_commit_hash_that_is_no_revision_deploys_the_branch_tip_with_a_warning(
    core: Deployster, live: LiveServer, repos: Repos
) -> None:
    """The seed guide's local curl example sends "$(git rev-parse HEAD)" from a
    quoted heredoc: the text itself. The seed deployed the branch then."""
    await core.projects.add(str(repos.app))
    tip = repos.commit("v2")
    async with live.client() as client:
        final = await deploy(client, body(repos.app, "$(git rev-parse HEAD)", "true"))
    assert final["status"] == "complete", final["logs"]
    assert git(repos.app, "rev-parse", "HEAD") == tip
    assert ("[deployster] warning: commit_hash '$(git rev-parse HEAD)' is no git revision; "
            "deploying the tip of origin/main instead") in str(final["logs"])


async def test_a_request_without_commit_or_ref_is_taken_as_the_seed_took_it(
    core: Deployster, live: LiveServer, repos: Repos
) -> None:
    await core.projects.add(str(repos.app))
    before = git(repos.app, "rev-parse", "HEAD")
    repos.commit("v2")
    async with live.client() as client:
        reply = await client.post("/deploy", json={
            "cd": str(repos.app), "commands": ["supervisorctl restart my-app--main"]})
        assert reply.status_code == 200, reply.text
        final = await wait_for_status(client, reply.json()["job_id"])
    assert final["status"] == "complete", final["logs"]
    assert git(repos.app, "rev-parse", "HEAD") == before  # nothing checked out
    assert "no checkout, no stage" in str(final["logs"])


async def test_a_ref_that_is_no_branch_is_checked_out_detached(
    core: Deployster, live: LiveServer, repos: Repos
) -> None:
    await core.projects.add(str(repos.app))
    sha = repos.commit("v2")
    git(repos.dev, "tag", "v2")
    git(repos.dev, "push", "-q", "origin", "v2")
    async with live.client() as client:
        final = await deploy(client, body(repos.app, sha, "true", ref="refs/tags/v2 x"))
    assert final["status"] == "complete", final["logs"]
    assert git(repos.app, "rev-parse", "HEAD") == sha
    assert git(repos.app, "rev-parse", "--abbrev-ref", "HEAD") == "HEAD"  # detached


async def test_source_none_leaves_the_work_tree_alone(
    core: Deployster, live: LiveServer, repos: Repos
) -> None:
    await core.projects.add(str(repos.app), steps={"source": "none"})
    before = git(repos.app, "rev-parse", "HEAD")
    sha = repos.commit("v2")
    async with live.client() as client:
        final = await deploy(client, body(repos.app, sha, "true"))
    assert final["status"] == "complete"
    assert git(repos.app, "rev-parse", "HEAD") == before
    assert "git fetch" not in str(final["logs"])


async def test_the_history_keeps_the_deployed_commit(
    core: Deployster, live: LiveServer, repos: Repos
) -> None:
    await core.projects.add(str(repos.app))
    sha = repos.commit("v2")
    async with live.client() as client:
        final = await deploy(client, body(repos.app, sha[:8], "true"))
    assert final["status"] == "complete"
    row = await history_row(core, str(final["job_id"]), "complete")
    assert row.deployed_sha == sha  # the full commit, though CI sent an abbreviation
    assert row.commit_hash == sha[:8]



# ------------------------------------------------------ redeploy and rollback


async def test_a_rollback_restores_the_previous_commits_files(
    core: Deployster, live: LiveServer, repos: Repos
) -> None:
    async with live.client() as client:
        project, first, second, v2, v3 = await deploy_v2_then_v3(core, client, repos)
        assert (repos.app / "app.txt").read_text() == "v3"
        reply = await client.post(f"/projects/{project.name}/rollback")
        assert reply.status_code == 200, reply.text
        answer = reply.json()
        assert answer["redeploy_of"] == first["job_id"]
        assert (answer["commit"], answer["from_commit"]) == (v2, v3)
        final = await wait_for_status(client, answer["job_id"], timeout=60)
        record = (await client.get(f"/jobs/{answer['job_id']}")).json()
    assert final["status"] == "complete", final["logs"]
    assert (repos.app / "app.txt").read_text() == "v2"
    assert git(repos.app, "rev-parse", "HEAD") == v2
    assert (record["redeploy_of"], record["deployed_sha"]) == (first["job_id"], v2)
    row = await history_row(core, answer["job_id"], "complete")
    assert row.redeploy_of == first["job_id"] and row.started_by == "api:admin"
    assert second["status"] == "complete"


async def test_redeploy_and_rollback_from_the_cli(
    core: Deployster, live: LiveServer, repos: Repos
) -> None:
    async with live.client() as client:
        project, first, _, v2, v3 = await deploy_v2_then_v3(core, client, repos)
        cli = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "deployster", "rollback", project.name, "--to",
            str(first["job_id"]), env=live.env, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        out, err = await cli.communicate()
        assert cli.returncode == 0, err
        job_id = out.decode().strip()
        assert f"rollback from {v3[:12]} of job {first['job_id']}" in err.decode()
        assert (await wait_for_status(client, job_id, timeout=60))["status"] == "complete"
        assert git(repos.app, "rev-parse", "HEAD") == v2
        cli = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "deployster", "job", "redeploy", job_id, env=live.env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await cli.communicate()
        assert cli.returncode == 0, err
        again = out.decode().strip()
        assert (await wait_for_status(client, again, timeout=60))["status"] == "complete"
        assert (await client.get(f"/jobs/{again}")).json()["redeploy_of"] == job_id


async def test_nothing_to_roll_back_and_another_projects_token_are_refused(
    core: Deployster, live: LiveServer, repos: Repos, tmp_path: Path
) -> None:
    from deployster import tokens

    project = await core.projects.add(str(repos.app))
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    other = await core.projects.add(str(other_dir))
    other_token = await tokens.rotate(core.projects, other)
    async with live.client() as client:
        done = await deploy(client, body(repos.app, repos.commit("v2"), "true"))
        reply = await client.post(f"/projects/{project.name}/rollback")
        assert reply.status_code == 409 and reply.json()["code"] == "nothing_to_roll_back"
        bad = await client.post(f"/projects/{project.name}/rollback", json={"to": 5})
        assert bad.status_code == 422, bad.text
        client.headers["x-deployster-token"] = other_token
        assert (await client.post(f"/jobs/{done['job_id']}/redeploy")).status_code == 404
        assert (await client.post(f"/projects/{project.name}/rollback")).status_code == 404
