"""Notifications and GitHub deployments from the command line
(``deployster project add|edit --notify …``, README.md#notifications): what is
stored, what is shown, and that no secret is ever printed back — not by the
commands, not by ``GET /projects``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deployster import store
from deployster.errors import InvalidRequest
from deployster.notify.targets import NotifyChange
from deployster.server.app import create_app
from deployster.service import Deployster
from deployster.settings import Settings
from tests.helpers.cli import one_line_error
from tests.helpers.server import TOKEN
from tests.test_cli import deployster, env, ok  # noqa: F401  (env: the fixture)

HOOK_SECRET = "whsec-1b8e0f9c7d"
GH_TOKEN = "ghp_0123456789abcdefSECRET"
SLACK = "https://hooks.slack.com/services/T0001/B0002/slackPathSecret"
HOOK = "https://hooks.example.com/deploys?token=querySecret"
SECRETS = (HOOK_SECRET, GH_TOKEN, "slackPathSecret", "T0001", "querySecret")


@pytest.fixture
def secret_files(tmp_path: Path) -> tuple[Path, Path]:
    hook, token = tmp_path / "hook.secret", tmp_path / "gh.token"
    hook.write_text(HOOK_SECRET + "\n")
    token.write_text(GH_TOKEN + "\n")
    return hook, token


def no_secret_in(text: str) -> None:
    leaked = [s for s in SECRETS if s in text]
    assert leaked == [], text


async def test_add_stores_targets_and_secrets_and_nothing_prints_them_back(
    env: dict[str, str], project_dir: Path, secret_files: tuple[Path, Path],  # noqa: F811
    core: Deployster, settings: Settings,
) -> None:
    hook_file, token_file = secret_files
    added = ok(deployster(env, "project", "add", str(project_dir), "--notify", f"webhook={HOOK}",
                          "--notify", f"slack={SLACK}", "--notify-on", "failed,lock_released",
                          "--notify-secret-file", str(hook_file), "--github", "acme/app",
                          "--github-token-file", str(token_file)))
    shown = ok(deployster(env, "project", "show", "my-app"))
    assert "notify:    webhook https://hooks.example.com/deploys?*** " \
           "(failed, lock_released; signed)\n" in shown
    assert "notify:    slack https://hooks.slack.com/*** (failed, lock_released)\n" in shown
    assert "github:    acme/app (deployments; token: its own)\n" in shown
    as_json = json.loads(ok(deployster(env, "project", "show", "my-app", "--json")))
    assert as_json["notify"] == [
        {"kind": "webhook", "url": "https://hooks.example.com/deploys?***",
         "events": ["failed", "lock_released"], "signed": True},
        {"kind": "slack", "url": "https://hooks.slack.com/***",
         "events": ["failed", "lock_released"], "signed": False}]
    assert (as_json["github"], as_json["github_token_set"]) == ("acme/app", True)
    listed = ok(deployster(env, "project", "list")) + ok(
        deployster(env, "project", "list", "--json"))
    assert json.loads(ok(deployster(env, "project", "list", "--json")))[0]["notify"] == \
        as_json["notify"]
    app = create_app(settings, core)
    async with app.test_app() as test_app:
        reply = await test_app.test_client().get("/projects",
                                                 headers={"x-deployster-token": TOKEN})
        api = await reply.get_data(as_text=True)
    assert reply.status_code == 200
    assert json.loads(api)["projects"][0]["notify"] == as_json["notify"]
    for text in (added, shown, json.dumps(as_json), listed, api):
        no_secret_in(text)
    # Read from the files when the project was added, and stored (the
    # server that signs and posts may not be able to read them).
    project = await store.select_project_by_name(core.db, "my-app")
    assert project is not None and project.github_token == GH_TOKEN
    assert [t.secret for t in project.notify or ()] == [HOOK_SECRET, None]
    no_secret_in(repr(project))


def test_edit_changes_events_turns_notifications_off_and_back_to_the_defaults(
    env: dict[str, str], project_dir: Path  # noqa: F811
) -> None:
    ok(deployster(env, "project", "add", str(project_dir)))
    assert "notify:    none (no targets of its own; DEPLOYSTER_NOTIFY sets none)\n" in ok(
        deployster(env, "project", "show", "my-app"))
    wide = {**env, "DEPLOYSTER_NOTIFY": f"discord={SLACK}", "DEPLOYSTER_NOTIFY_ON": "all"}
    assert "notify:    discord https://hooks.slack.com/*** (queued, started, complete, failed, " \
           "superseded, cancelled, lock_released) (server-wide)\n" in ok(
               deployster(wide, "project", "show", "my-app"))
    ok(deployster(env, "project", "edit", "my-app", "--notify", "webhook=http://10.0.0.5/h"))
    assert "notify:    webhook http://10.0.0.5/h (complete, failed)\n" in ok(
        deployster(env, "project", "show", "my-app"))
    ok(deployster(env, "project", "edit", "my-app", "--notify-on", "all"))
    assert "notify:    webhook http://10.0.0.5/h (queued, started, complete, failed, " \
           "superseded, cancelled, lock_released)\n" in ok(
               deployster(env, "project", "show", "my-app"))
    ok(deployster(env, "project", "edit", "my-app", "--no-notify"))
    shown = ok(deployster(wide, "project", "show", "my-app"))
    assert "notify:    off (--no-notify)\n" in shown and "server-wide" not in shown
    ok(deployster(env, "project", "edit", "my-app", "--notify-default"))
    assert "(server-wide)" in ok(deployster(wide, "project", "show", "my-app"))
    result = deployster(env, "project", "edit", "my-app", "--github", "acme/app")
    assert result.returncode == 0 and "has no GitHub token of its own" in result.stderr
    assert "github:    acme/app (deployments; token: DEPLOYSTER_GITHUB_TOKEN's)\n" in ok(
        deployster(env, "project", "show", "my-app"))
    ok(deployster({**env, "DEPLOYSTER_GITHUB_TOKEN": GH_TOKEN}, "project", "edit", "my-app",
                  "--name", "app"))
    ok(deployster(env, "project", "edit", "app", "--no-github"))
    assert "github:" not in ok(deployster(env, "project", "show", "app"))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (NotifyChange(targets=("ftp=https://x",)), "webhook, slack, discord; got 'ftp'"),
        (NotifyChange(targets=("webhook=not a url",)), "URL without spaces"),
        (NotifyChange(targets=("slack=file:///etc/passwd",)), "must be an http:// or https:// URL"),
        (NotifyChange(targets=("webhook=http://h/x",), events="done"),
         "a comma-separated list of queued, started"),
        (NotifyChange(targets=("slack=http://h/x",), secrets=("s3cret",)),
         "none of the targets is a webhook"),
        (NotifyChange(targets=("webhook=http://h/a", "webhook=http://h/b", "webhook=http://h/c"),
                      secrets=("one", "two")), "once per webhook target (3)"),
        (NotifyChange(targets=("webhook=http://h/x", "webhook=http://h/x")), "given twice"),
        (NotifyChange(events="all"), "no notification targets of its own"),
        (NotifyChange(targets=("webhook=http://h/x",), secrets=("\n",)),
         "the webhook secret is empty"),
        (NotifyChange(github="not a repo"), "a GitHub repository is OWNER/REPO"),
        (NotifyChange(github_token="t0ken"), "a GitHub token needs a repository"),
        (NotifyChange(targets=("webhook=http://h/x",), off=True), "give one of --notify"),
    ],
)
async def test_bad_notifications_are_refused_and_nothing_is_stored(
    core: Deployster, project_dir: Path, change: NotifyChange, message: str
) -> None:
    with pytest.raises(InvalidRequest) as refused:
        await core.projects.add(str(project_dir), notify=change)
    assert message in refused.value.message and refused.value.code == "invalid_value"
    assert await store.select_projects(core.db) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--notify", "ftp=https://x"], "KIND one of webhook, slack, discord; got 'ftp'"),
        (["--notify", "webhook=http://h/x", "--notify-secret-file", "{missing}"],
         "cannot read"),
        (["--github", "acme/app", "--github-token-file", "{empty}"], "the GitHub token is empty"),
    ],
)
async def test_bad_options_are_one_line_and_change_nothing(
    env: dict[str, str], project_dir: Path, core: Deployster, tmp_path: Path,  # noqa: F811
    args: list[str], message: str,
) -> None:
    (tmp_path / "empty").write_text("\n")
    files = {"missing": str(tmp_path / "nope"), "empty": str(tmp_path / "empty")}
    filled = [a.format(**files) for a in args]
    line = one_line_error(deployster(env, "project", "add", str(project_dir), *filled))
    assert message in line
    assert await store.select_projects(core.db) == []
