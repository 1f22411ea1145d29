"""The ``deployster`` command line (``deployster/cli.py``), run as a real subprocess.

What a user sees: the output of ``project add|list|show|edit``, and for every
mistake exactly one line on stderr, exit code 2, never a traceback.
"""

from __future__ import annotations

import asyncio
import getpass
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from deployster import store
from deployster.access import TOKEN_PATTERN
from deployster.clock import iso
from deployster.ids import new_job_id
from deployster.models import Job, JobStatus
from deployster.service import DeployRequest, Deployster
from deployster.settings import Settings
from deployster.table import cell_width
from tests.helpers.cli import one_line_error
from tests.helpers.deploys import deploy_body, history_row, wait_for_file
from tests.helpers.locks import hold_lock
from tests.helpers.paths import REPO
from tests.helpers.processes import pid_gone
from tests.helpers.server import LiveServer, free_port, settings_env

RESTART = "supervisorctl restart my-app--main"


@pytest.fixture
def env(settings: Settings) -> dict[str, str]:
    """This test's settings, and nothing inherited that could point elsewhere."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("DEPLOYSTER_")}
    return {**inherited, **settings_env(settings)}


def deployster(
    env: dict[str, str], *args: str, cwd: Path = REPO, timeout: float = 60,
    answer: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """The command's result; ``answer``: what is typed on its stdin (else none)."""
    return subprocess.run(
        [sys.executable, "-m", "deployster", *args],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout,
        **({"input": answer} if answer is not None else {"stdin": subprocess.DEVNULL}),
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout



def write_pipeline(path: Path, value: str = "https://api.example.com") -> Path:
    path.write_text(json.dumps([
        {"stage_name": "Production", "git_branch": "main",
         "environment_variables": [{"KEY": "API_URL", "VALUE": value},
                                   {"key": "MODE", "value": "prod"}]},
        {"stage_name": "Staging", "git_branch": "develop"},
    ]))
    return path


# ------------------------------------------------------------------ projects


def test_add_list_and_show_a_project(env: dict[str, str], project_dir: Path) -> None:
    out = ok(deployster(env, "project", "add", f"{project_dir}/"))
    path = os.path.realpath(project_dir)
    assert out.startswith("registered project 'my-app' (id ")
    assert out.rstrip().endswith(f") at {path}")
    project_id = int(out.split("(id ", 1)[1].split(")", 1)[0])

    listed = ok(deployster(env, "project", "list")).splitlines()
    assert [line.split() for line in listed] == [
        ["ID", "NAME", "QUEUED", "RUNNING", "DEPLOYED", "PATH"],
        [str(project_id), "my-app", "0", "-", "-", path]]

    as_json = json.loads(ok(deployster(env, "project", "list", "--json")))
    assert [(p["id"], p["name"], p["path"]) for p in as_json] == [(project_id, "my-app", path)]

    shown = ok(deployster(env, "project", "show", "my-app"))
    assert f"id:        {project_id}\n" in shown
    assert f"path:      {path}\n" in shown
    assert "lock TTL:  600s\n" in shown and "timeout:   3600s\n" in shown
    assert "stages:    none\n" in shown
    for ref in (str(project_id), path, f"{project_dir}/"):
        assert ok(deployster(env, "project", "show", ref)) == shown

    detail = json.loads(ok(deployster(env, "project", "show", "my-app", "--json")))
    assert detail["pipeline"] == [] and detail["id"] == project_id


def test_list_with_no_projects_says_how_to_add_one(env: dict[str, str]) -> None:
    assert "deployster project add PATH" in ok(deployster(env, "project", "list"))
    assert json.loads(ok(deployster(env, "project", "list", "--json"))) == []


def test_add_with_pipeline_lock_ttl_timeout_and_name(
    env: dict[str, str], project_dir: Path, tmp_path: Path
) -> None:
    pipeline = write_pipeline(tmp_path / "stages.json")
    out = ok(deployster(env, "project", "add", str(project_dir), "--name", "web",
                        "--pipeline", str(pipeline), "--lock-ttl", "30", "--timeout", "60"))
    assert out.startswith("registered project 'web'")

    detail = json.loads(ok(deployster(env, "project", "show", "web", "--json")))
    assert (detail["lock_ttl"], detail["timeout"]) == (30, 60)
    assert detail["pipeline"] == [
        {"stage_name": "Production", "git_branch": "main",
         "environment_variables": [{"key": "API_URL", "value": "https://api.example.com"},
                                   {"key": "MODE", "value": "prod"}]},
        {"stage_name": "Staging", "git_branch": "develop", "environment_variables": []},
    ]
    shown = ok(deployster(env, "project", "show", "web"))
    assert "stage:     Production (branch main): API_URL, MODE\n" in shown
    assert "stage:     Staging (branch develop): no variables\n" in shown
    assert "lock TTL:  30s\n" in shown


def test_add_resolves_a_relative_path_against_the_working_directory(
    env: dict[str, str], project_dir: Path
) -> None:
    out = ok(deployster(env, "project", "add", ".", cwd=project_dir))
    assert out.startswith("registered project 'my-app'")
    assert out.endswith(f" at {os.path.realpath(project_dir)}\n")
    (project_dir.parent / "api").mkdir()
    out = ok(deployster(env, "project", "add", "api", cwd=project_dir.parent))
    assert out.startswith("registered project 'api'")
    assert out.endswith(f" at {os.path.realpath(project_dir.parent / 'api')}\n")


def test_edit_changes_only_what_is_given(
    env: dict[str, str], project_dir: Path, tmp_path: Path
) -> None:
    ok(deployster(env, "project", "add", str(project_dir), "--lock-ttl", "30"))
    out = ok(deployster(env, "project", "edit", "my-app", "--timeout", "5"))
    assert out.startswith("updated project 'my-app' (id ")
    detail = json.loads(ok(deployster(env, "project", "show", "my-app", "--json")))
    assert (detail["timeout"], detail["lock_ttl"], detail["pipeline"]) == (5, 30, [])

    pipeline = write_pipeline(tmp_path / "stages.json")
    ok(deployster(env, "project", "edit", str(project_dir), "--pipeline", str(pipeline),
                  "--name", "web"))
    detail = json.loads(ok(deployster(env, "project", "show", "web", "--json")))
    assert [s["git_branch"] for s in detail["pipeline"]] == ["main", "develop"]
    assert detail["timeout"] == 5


# -------------------------------------------------------------------- tokens


def _token_lines(result: subprocess.CompletedProcess[str]) -> tuple[str, str]:
    """The token (the one stdout line) and the one-line note on stderr."""
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    out, err = result.stdout.splitlines(), result.stderr.splitlines()
    assert len(out) == 1 and len(err) == 1, (result.stdout, result.stderr)
    assert TOKEN_PATTERN.fullmatch(out[0]), out[0]
    return out[0], err[0]


def _database_bytes(settings: Settings) -> bytes:
    assert settings.database_url and settings.database_url.startswith("sqlite:///")
    path = Path(settings.database_url.removeprefix("sqlite:///"))
    return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))


def test_project_token_is_printed_once_and_only_its_hash_is_stored(
    env: dict[str, str], settings: Settings, project_dir: Path
) -> None:
    ok(deployster(env, "project", "add", str(project_dir)))
    assert "token:     none\n" in ok(deployster(env, "project", "show", "my-app"))

    token, note = _token_lines(deployster(env, "project", "token", "my-app"))
    assert "shown only once" in note and "replaces" not in note
    digest = hashlib.sha256(token.encode()).hexdigest()
    stored = _database_bytes(settings)
    assert token.encode() not in stored and token[4:].encode() not in stored
    assert digest.encode() in stored

    shown = ok(deployster(env, "project", "show", "my-app"))
    assert "token:     set (created " in shown
    assert token not in shown and digest not in shown
    detail = json.loads(ok(deployster(env, "project", "show", "my-app", "--json")))
    assert detail["token_set"] is True and digest not in json.dumps(detail)
    listed = json.loads(ok(deployster(env, "project", "list", "--json")))
    assert digest not in json.dumps(listed)

    # Rotating (here by path) prints a new one and says the old one is replaced.
    again, note = _token_lines(deployster(env, "project", "token", f"{project_dir}/"))
    assert again != token and "replaces the previous one" in note
    stored = _database_bytes(settings)
    assert again.encode() not in stored

    out = ok(deployster(env, "project", "token", "my-app", "--revoke"))
    assert out == "revoked the token of project 'my-app': it no longer works\n"
    assert "token:     none\n" in ok(deployster(env, "project", "show", "my-app"))
    out = ok(deployster(env, "project", "token", "my-app", "--revoke"))
    assert out == "project 'my-app' has no token; nothing to revoke\n"


def test_project_token_of_an_unknown_project_is_one_line(env: dict[str, str]) -> None:
    for args in (["ghost"], ["ghost", "--revoke"]):
        line = one_line_error(deployster(env, "project", "token", *args))
        assert "'ghost'" in line and "deployster project list" in line


def test_a_rotated_token_stops_working_in_a_running_server(
    env: dict[str, str], server: LiveServer, project_dir: Path
) -> None:
    ok(deployster(env, "project", "add", str(project_dir)))
    old, _ = _token_lines(deployster(env, "project", "token", "my-app"))
    unknown = f"{server.url}/status/01JD0000000000000000000000"
    assert httpx.get(unknown, headers={"x-deployster-token": old}).status_code == 404
    new, _ = _token_lines(deployster(env, "project", "token", "my-app"))
    refused = httpx.get(unknown, headers={"x-deployster-token": old})
    assert refused.status_code == 403
    assert (refused.json()["error"], refused.json()["code"]) == ("Unauthorized", "unauthorized")
    assert httpx.get(unknown, headers={"x-deployster-token": new}).status_code == 404
    ok(deployster(env, "project", "token", "my-app", "--revoke"))
    assert httpx.get(unknown, headers={"x-deployster-token": new}).status_code == 403


# -------------------------------------------------------------------- errors


def test_a_pipeline_value_with_a_newline_is_refused_and_nothing_stored(
    env: dict[str, str], project_dir: Path, tmp_path: Path
) -> None:
    pipeline = write_pipeline(tmp_path / "stages.json", value="https://x\nEVIL=1")
    line = one_line_error(
        deployster(env, "project", "add", str(project_dir), "--pipeline", str(pipeline)))
    assert line == (
        "deployster: error: stage 'Production': value of API_URL contains a newline, "
        "carriage return or NUL, which .env cannot hold safely"
    )
    assert json.loads(ok(deployster(env, "project", "list", "--json"))) == []


def test_a_missing_pipeline_file(env: dict[str, str], project_dir: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    line = one_line_error(
        deployster(env, "project", "add", str(project_dir), "--pipeline", str(missing)))
    assert line == f"deployster: error: cannot read {missing}: No such file or directory"


def test_a_pipeline_file_that_is_not_json(
    env: dict[str, str], project_dir: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "stages.json"
    bad.write_text("[{'stage_name': 'single quotes'}]\n")
    line = one_line_error(
        deployster(env, "project", "add", str(project_dir), "--pipeline", str(bad)))
    assert line.startswith(f"deployster: error: {bad} is not valid JSON: ")


def test_a_path_that_does_not_exist(env: dict[str, str], tmp_path: Path) -> None:
    line = one_line_error(deployster(env, "project", "add", str(tmp_path / "ghost")))
    assert line == f"deployster: error: {os.path.realpath(tmp_path)}/ghost is not a directory"


def test_showing_an_unknown_project(env: dict[str, str]) -> None:
    line = one_line_error(deployster(env, "project", "show", "ghost"))
    assert "'ghost'" in line and "deployster project list" in line


def test_adding_the_same_directory_twice(env: dict[str, str], project_dir: Path) -> None:
    ok(deployster(env, "project", "add", str(project_dir)))
    line = one_line_error(deployster(env, "project", "add", str(project_dir), "--name", "x"))
    assert line == (
        f"deployster: error: a project is already registered at {os.path.realpath(project_dir)}"
    )
    line = one_line_error(deployster(env, "project", "edit", "my-app", "--name", "bad name"))
    assert "letters, digits" in line


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["projekt"], "invalid choice: 'projekt'"),
        ([], "required: COMMAND"),
        (["project", "add", "/tmp", "--lock-ttl", "abc"], "'abc' is not a number of seconds"),
        (["project", "add", "/tmp", "--lock-ttl", "-1"], "must be a positive number"),
        (["project", "add", "/tmp", "--timeout", "0"], "must be a positive number"),
        (["project", "add", "/tmp", "--lock-ttl", "nan"], "must be a positive number"),
        (["project", "add", "/tmp", "--timeout", "inf"], "must be a positive number"),
        (["project", "lst"], "invalid choice: 'lst'"),
        (["serve", "--port", "http"], "'http' is not a port number"),
    ],
)
def test_command_line_typos_exit_2_without_a_traceback(
    env: dict[str, str], args: list[str], message: str
) -> None:
    result = deployster(env, *args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("usage: deployster")
    last = result.stderr.splitlines()[-1]
    assert last.startswith("deployster") and ": error: " in last and message in last


# --------------------------------------------------------------------- serve


def test_serve_on_a_port_in_use_says_so_in_one_line(env: dict[str, str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**env, "DEPLOYSTER_HOST": "127.0.0.1", "DEPLOYSTER_PORT": str(port)}
        line = one_line_error(deployster(env, "serve", timeout=30))
    assert line == f"deployster: error: cannot listen on 127.0.0.1:{port}: Address already in use"


# ----------------------------------------------------------------------- jobs


def _deploy(server: LiveServer, cd: Path, *commands: str) -> str:
    """A deploy through the API, waited for (the seed's /status loop)."""
    reply = httpx.post(f"{server.url}/deploy", headers=server.headers, timeout=10,
                       json={"cd": str(cd), "commands": [*commands, RESTART],
                             "commit_hash": "abc1234def", "ref_name": "main"})
    assert reply.status_code == 200, reply.text
    job_id = str(reply.json()["job_id"])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = httpx.get(f"{server.url}/status/{job_id}", headers=server.headers).json()
        if status["status"] in ("complete", "failed"):
            return job_id
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not end")


def test_job_list_show_and_logs(env: dict[str, str], server: LiveServer,
                                project_dir: Path, tmp_path: Path) -> None:
    stages = write_pipeline(tmp_path / "stages.json", value="s3cret-url")
    ok(deployster(env, "project", "add", str(project_dir), "--pipeline", str(stages)))
    other = tmp_path / "other-app"
    other.mkdir()
    ok(deployster(env, "project", "add", str(other)))
    first = _deploy(server, project_dir, "echo one", "echo token=s3cret-url")
    failed = _deploy(server, project_dir, "printf 'no newline'; exit 3")
    elsewhere = _deploy(server, other, "echo other")

    # The history writer copies a job a moment after it ends.
    deadline = time.monotonic() + 20
    while len(ok(deployster(env, "job", "list")).splitlines()) < 4:  # a header, 3 jobs
        assert time.monotonic() < deadline, "the deploys never reached the history"
        time.sleep(0.2)
    header, *listed = ok(deployster(env, "job", "list")).splitlines()
    assert header.split() == ["JOB", "PROJECT", "STATUS", "COMMIT", "REF", "QUEUED", "AT",
                              "STARTED", "AT"]
    assert [line.split()[0] for line in listed] == [elsewhere, failed, first]  # newest first
    assert listed[1].split()[1:6] == ["my-app", "failed", "(command_failed)", "abc1234", "main"]
    mine = ok(deployster(env, "job", "list", "my-app", "--limit", "1")).splitlines()
    assert [line.split()[0] for line in mine[1:]] == [failed]
    projects = json.loads(ok(deployster(env, "project", "list", "--json")))
    assert projects == httpx.get(f"{server.url}/projects", headers=server.headers).json()[
        "projects"]
    assert "s3cret-url" not in json.dumps(projects)  # stage values are secrets
    as_json = json.loads(ok(deployster(env, "job", "list", "--json")))
    assert [j["job_id"] for j in as_json] == [elsewhere, failed, first]
    assert all("commands" not in j for j in as_json)  # they may hold secrets
    # The fields of GET /jobs/<id>, but the commands and what only one job's read has.
    for job in as_json:
        api = httpx.get(f"{server.url}/jobs/{job['job_id']}", headers=server.headers).json()
        assert job == {k: v for k, v in api.items() if k not in ("commands", "log_bytes")}

    shown = ok(deployster(env, "job", "show", first))
    assert f"job_id:       {first}\n" in shown and "status:       complete\n" in shown
    assert "[2] echo token=***" in shown and "s3cret-url" not in shown  # masked
    record = json.loads(ok(deployster(env, "job", "show", failed, "--json")))
    assert (record["status"], record["reason"], record["exit_code"]) == (
        "failed", "command_failed", 3)

    log = ok(deployster(env, "job", "logs", first))
    assert "[1/3] $ echo one\none\n" in log and "token=***" in log
    assert "s3cret-url" not in log
    assert "no newline" in ok(deployster(env, "job", "logs", failed, "--follow"))

    # Mistakes: one line, exit 2.
    assert "no job" in one_line_error(deployster(env, "job", "show", "01JD0000000000000000000000"))
    assert "no job" in one_line_error(deployster(env, "job", "logs", "nope"))
    assert "'ghost'" in one_line_error(deployster(env, "job", "list", "ghost"))
    result = deployster(env, "job", "list", "--limit", "0")
    assert result.returncode == 2 and "must be 1 or more" in result.stderr


def test_job_logs_follows_a_running_job_to_its_end(
    env: dict[str, str], server: LiveServer, project_dir: Path, tmp_path: Path
) -> None:
    ok(deployster(env, "project", "add", str(project_dir)))
    gate = tmp_path / "gate"
    reply = httpx.post(f"{server.url}/deploy", headers=server.headers, timeout=10, json={
        "cd": str(project_dir), "commit_hash": "abc1234", "ref_name": "main",
        "commands": [f"echo before; while [ ! -e {gate} ]; do sleep 0.05; done; echo after",
                     RESTART]})
    job_id = reply.json()["job_id"]
    follower = subprocess.Popen(
        [sys.executable, "-m", "deployster", "job", "logs", "--follow", job_id], env=env,
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert follower.stdout is not None
        assert follower.stdout.readline().startswith("[deployster] job ")
        lines = [follower.stdout.readline() for _ in range(2)]
        assert lines[1] == "before\n", lines
        assert follower.poll() is None  # still following: the job waits at the gate
        gate.touch()
        rest, err = follower.communicate(timeout=30)
    finally:
        follower.kill()
    assert follower.returncode == 0, err
    assert "after\n" in rest and "[deployster] job complete in " in rest.splitlines()[-1]


def test_job_logs_into_head_is_no_traceback(
    env: dict[str, str], server: LiveServer, project_dir: Path
) -> None:
    ok(deployster(env, "project", "add", str(project_dir)))
    job_id = _deploy(server, project_dir, "seq 1 300000")  # ~2 MB: more than a pipe holds
    result = subprocess.run(
        ["bash", "-c", f'"{sys.executable}" -m deployster job logs {job_id} | head -3'],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.stdout.splitlines()[1:] == ["[1/2] $ seq 1 300000", "1"]
    assert result.stderr == ""


# ------------------------------------------------- a reader that goes away


def _piped(env: dict[str, str], args: str, reader: str) -> tuple[int, str, str]:
    """``deployster ARGS | READER`` through a real shell: (deployster's exit
    status, the pipeline's stdout, its stderr)."""
    result = subprocess.run(
        ["bash", "-c",
         f'"{sys.executable}" -m deployster {args} | {reader}; echo "exit=${{PIPESTATUS[0]}}"'],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    out, _, status = result.stdout.rstrip("\n").rpartition("exit=")
    return int(status), out, result.stderr


@pytest.mark.parametrize("args", ["project list", "project list --json"])
async def test_a_reader_that_goes_away_ends_the_command_quietly(
    core: Deployster, env: dict[str, str], tmp_path: Path, args: str
) -> None:
    # More than a pipe holds (64 KiB): the command is still writing when its
    # reader goes, whatever the timing.
    deep = tmp_path / ("d" * 200)
    for number in range(400):
        (deep / f"p{number}").mkdir(parents=True)
        await core.projects.add(str(deep / f"p{number}"))
    assert len(ok(deployster(env, *args.split()))) > 100_000

    status, out, err = _piped(env, args, "head -1")
    assert err == ""  # no "cannot reach Redis/database: [Errno 32] Broken pipe"
    assert status in (0, 141)  # as coreutils: `seq 1 100000 | head -1` gives 141
    assert len(out.splitlines()) == 1

    status, out, err = _piped(env, args, "true")
    assert (status, out, err) in ((0, "", ""), (141, "", ""))


def test_a_real_outage_still_says_so_in_one_line(env: dict[str, str], tmp_path: Path) -> None:
    down = {**env, "DEPLOYSTER_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    line = one_line_error(deployster(down, "project", "list"))
    assert line.startswith("deployster: error: Redis is unavailable: ")

    # Not an outage: a data dir the CLI cannot create says what is wrong with it.
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    odd = {**env, "DEPLOYSTER_DATA_DIR": str(blocker / "data")}
    del odd["DEPLOYSTER_REDIS_URL"]
    line = one_line_error(deployster(odd, "project", "list"))
    assert "Not a directory" in line and "Redis" not in line, line


# ------------------------------------------------- removing a project


async def _queue(core: Deployster, cd: Path, command: str, *, start: bool = False) -> str:
    """A deploy queued through the core. ``start``: claimed at once for the
    core's runner, which never runs it (a server that crashed with it)."""
    result = await core.submit(DeployRequest(str(cd), [command, RESTART]), run_here=start)
    return result.job_id


async def _project_keys_left(core: Deployster, project_id: int) -> list[str]:
    k = core.keys
    keys = [k.lock(project_id), k.queue(project_id), k.signatures(project_id),
            k.fence(project_id), k.current(project_id)]
    return [key for key in keys if await core.redis.exists(key)]


async def _audit(core: Deployster) -> list[tuple[str, str, str | None]]:
    """(action, actor, job id) of every audit event, oldest first."""
    return [(e["action"], e["actor"], e["job_id"])
            for e in reversed(await store.select_audit_events(core.db))]


async def test_remove_is_refused_while_a_job_waits_then_forced(
    core: Deployster, env: dict[str, str], project_dir: Path
) -> None:
    ok(deployster(env, "project", "add", str(project_dir)))
    project = await core.projects.find("my-app")
    waiting = await _queue(core, project_dir, "echo later")

    line = one_line_error(deployster(env, "project", "remove", "my-app"))
    assert line == ("deployster: error: project 'my-app' has 1 queued job; nothing was "
                    "removed. Wait for its jobs to end or cancel them, or remove it with "
                    "--force (which cancels them)")
    assert "my-app" in ok(deployster(env, "project", "list"))
    assert await core.queue.queued_ids(project.id) == [waiting]
    assert await _audit(core) == []

    out = ok(deployster(env, "project", "remove", "my-app", "--force"))
    assert out == (f"cancelled job {waiting}\nremoved project 'my-app' (id {project.id}); its "
                   "deploys stay in the history ('deployster job list')\n")
    job = await core.job(waiting)
    assert job is not None and (job.status, job.reason) == (JobStatus.FAILED, "cancelled")
    assert json.loads(ok(deployster(env, "project", "list", "--json"))) == []
    actor = f"cli:{getpass.getuser()}"
    assert await _audit(core) == [("job.cancel", actor, waiting),
                                  ("project.remove", actor, None)]
    assert await _project_keys_left(core, project.id) == []


async def test_remove_force_stops_the_running_job_and_the_token_stops_working(
    core: Deployster, env: dict[str, str], server: LiveServer, project_dir: Path,
    tmp_path: Path
) -> None:
    ok(deployster(env, "project", "add", str(project_dir)))
    project = await core.projects.find("my-app")
    token, _ = _token_lines(deployster(env, "project", "token", "my-app"))
    pid_file = tmp_path / "pid"
    async with server.client() as client:
        running = (await client.post("/deploy", json=deploy_body(
            project_dir, f"sleep 300 & echo $! > {pid_file}; wait"))).json()["job_id"]
        pid = int(await wait_for_file(pid_file))
        waiting = (await client.post("/deploy", json=deploy_body(
            project_dir, "echo later"))).json()["job_id"]

    line = one_line_error(deployster(env, "project", "remove", "my-app"))
    assert f"has 1 queued job and a running job ({running}); nothing was removed" in line
    assert not pid_gone(pid)

    out = ok(deployster(env, "project", "remove", "my-app", "--force"))
    assert out.splitlines() == [
        f"cancelled job {waiting}", f"cancelled job {running}",
        f"removed project 'my-app' (id {project.id}); its deploys stay in the history "
        "('deployster job list')"]
    assert pid_gone(pid)  # stopped and seen gone before the command returned
    for job_id in (waiting, running):
        job = await core.job(job_id)
        assert job is not None and (job.status, job.reason) == (JobStatus.FAILED, "cancelled")
    assert await _project_keys_left(core, project.id) == []

    async with server.client() as client:
        refused = await client.get("/status/01JD0000000000000000000000",
                                   headers={"x-deployster-token": token})
        assert (refused.status_code, refused.json()["code"]) == (403, "unauthorized")
        again = await client.post("/deploy", json=deploy_body(project_dir, "echo again"))
        assert (again.status_code, again.json()["code"]) == (404, "unknown_project")


async def test_remove_keeps_the_history_unless_told_to_drop_it(
    core: Deployster, env: dict[str, str], server: LiveServer, project_dir: Path,
    tmp_path: Path
) -> None:
    other = tmp_path / "other-app"
    other.mkdir()
    ok(deployster(env, "project", "add", str(project_dir)))
    ok(deployster(env, "project", "add", str(other)))
    ids = {p.name: p.id for p in await core.projects.all()}
    kept = _deploy(server, project_dir, "echo kept")
    dropped = _deploy(server, other, "echo dropped")
    for job_id in (kept, dropped):
        await history_row(core, job_id)

    out = ok(deployster(env, "project", "remove", "my-app"))
    assert out == (f"removed project 'my-app' (id {ids['my-app']}); its deploys stay in the "
                   "history ('deployster job list')\n")
    out = ok(deployster(env, "project", "remove", "other-app", "--drop-history"))
    assert out == (f"removed project 'other-app' (id {ids['other-app']}); 1 deploy(s) "
                   "deleted from the history\n")

    listed = json.loads(ok(deployster(env, "job", "list", "--json")))
    assert [(j["job_id"], j["project"]) for j in listed] == [(kept, "my-app")]
    assert "kept\n" in ok(deployster(env, "job", "logs", kept))
    for args in (["show", dropped], ["logs", dropped]):
        assert "no job" in one_line_error(deployster(env, "job", *args))
    events = {e["detail"]["name"]: e["detail"] for e in await store.select_audit_events(core.db)
              if e["action"] == "project.remove"}
    assert (events["my-app"]["history"], events["my-app"]["deployments_dropped"]) == (
        "kept", None)
    assert (events["other-app"]["history"], events["other-app"]["deployments_dropped"]) == (
        "dropped", 1)


def test_removing_an_unknown_project_is_one_line(env: dict[str, str]) -> None:
    line = one_line_error(deployster(env, "project", "remove", "ghost", "--force"))
    assert "'ghost'" in line and "deployster project list" in line


# ---------------------------------------------------------------- unlock


async def test_unlock_shows_the_holder_asks_and_releases_with_yes(
    core: Deployster, env: dict[str, str], project_dir: Path
) -> None:
    ok(deployster(env, "project", "add", str(project_dir), "--lock-ttl", "600"))
    project = await core.projects.find("my-app")
    holder = await _queue(core, project_dir, "echo first", start=True)
    waiting = await _queue(core, project_dir, "echo next")

    for answer in (None, "n\n", "\n"):  # no answer (no terminal), no, just enter
        result = deployster(env, "unlock", "my-app", answer=answer)
        assert result.returncode == 1, result.stderr
        assert f"holder:     {holder}\n" in result.stdout
        assert "heartbeat:  none (STALE)\n" in result.stdout
        assert "owning job: marked running, but its heartbeat stopped" in result.stdout
        assert f"queued:     1 job(s) waiting: {waiting}\n" in result.stdout
        assert result.stderr.startswith("Release my-app's deploy lock? [y/N] ")
        assert result.stderr.endswith("deployster: not released (answer y, or pass --yes)\n")
        assert (await core.lock.state(project.id)).owner == holder
    assert await _audit(core) == []

    out = ok(deployster(env, "unlock", "my-app", "--yes"))
    lines = out.splitlines()
    assert lines[:2] == [f"project:    my-app ({project.path})", f"holder:     {holder}"]
    assert lines[2].startswith("TTL:        9m ") and lines[2].endswith("s left")
    assert lines[-1] == f"released my-app's lock (was held by {holder})"
    assert (await core.lock.state(project.id)).owner is None
    assert await _audit(core) == [("lock.release", f"cli:{getpass.getuser()}", holder)]
    [event] = await store.select_audit_events(core.db)
    assert event["detail"]["released"] is True


async def test_unlock_releases_nothing_when_the_holder_changed_while_it_asked(
    core: Deployster, env: dict[str, str], project_dir: Path
) -> None:
    ok(deployster(env, "project", "add", str(project_dir)))
    project = await core.projects.find("my-app")
    assert await hold_lock(core, project.id, "seen-holder", ttl_ms=60_000)
    asking = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "deployster", "unlock", "my-app", env=env, cwd=REPO,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    try:
        assert asking.stdout is not None
        shown = b""  # it asks once the facts are out
        while not shown.startswith(b"Releasing frees the lock"):
            shown = await asyncio.wait_for(asking.stdout.readline(), 30)
            assert shown, "the command ended without asking"
        assert await core.lock.release(project.id, "seen-holder")
        assert await hold_lock(core, project.id, "newer-holder", ttl_ms=60_000)
        _, err = await asyncio.wait_for(asking.communicate(b"y\n"), 30)
    finally:
        if asking.returncode is None:
            asking.kill()
    assert asking.returncode == 2
    assert err.decode().splitlines()[-1] == (
        "deployster: error: my-app's lock was not released: seen-holder no longer holds it "
        "(nothing changed)")
    assert (await core.lock.state(project.id)).owner == "newer-holder"
    [event] = await store.select_audit_events(core.db)
    assert (event["action"], event["detail"]["released"]) == ("lock.release", False)


def test_unlock_with_no_lock_held_is_refused_in_one_line(
    env: dict[str, str], project_dir: Path
) -> None:
    ok(deployster(env, "project", "add", str(project_dir)))
    line = one_line_error(deployster(env, "unlock", "my-app", "--yes"))
    assert line == "deployster: error: project 'my-app' is not locked: nothing to release"
    assert "'ghost'" in one_line_error(deployster(env, "unlock", "ghost", "--yes"))


# ------------------------------------------------------------- list columns


def _column_starts(header: str) -> dict[str, int]:
    """Each header word's first column (headers are single words, or joined
    by one space)."""
    starts, at = {}, 0
    for name in header.split("  "):
        if name:
            starts[name.strip()] = header.index(name.strip(), at)
            at = starts[name.strip()] + len(name.strip())
    return starts


def _at_cell(row: str, cell: int) -> int:
    """The index of the character shown at terminal cell ``cell`` of ``row``."""
    for index in range(len(row)):
        if cell_width(row[:index]) == cell:
            return index
    raise AssertionError(f"no character starts at cell {cell} of {row!r}")


def _assert_aligned(lines: list[str], left: list[str]) -> None:
    """Every row's value of each ``left`` column starts under its header, on
    the terminal (a wide character takes two cells)."""
    starts = _column_starts(lines[0])
    for row in lines[1:]:
        for name in left:
            at = _at_cell(row, starts[name])
            assert row[at - 2:at] == "  " and row[at] != " ", (name, lines)


# Wide characters: two terminal cells each.
WIDE_REF = "release/日本語-" + "r" * 50


async def test_lists_keep_their_columns_with_a_60_char_project_name(
    core: Deployster, env: dict[str, str], project_dir: Path, tmp_path: Path
) -> None:
    long = "a-very-long-project-name-" + "x" * 35
    assert len(long) == 60
    short = tmp_path / "web"
    short.mkdir()
    ok(deployster(env, "project", "add", str(project_dir), "--name", long))
    ok(deployster(env, "project", "add", str(short)))
    # A finished deploy of each, as the history writer stores them.
    now = iso()
    jobs = [Job(id=new_job_id(), project_id=p.id, project=p.name, cd=p.path,
                commands=["echo hi", RESTART], commit_hash="abc1234def", ref_name=ref,
                status=JobStatus.COMPLETE, queued_at=now, started_at=now, finished_at=now)
            for p, ref in zip(await core.projects.all(), ["main", WIDE_REF], strict=True)]
    await store.upsert_deployments(core.db, [store.deployment_row(j, log="") for j in jobs])

    projects = ok(deployster(env, "project", "list")).splitlines()
    assert len(projects) == 3
    _assert_aligned(projects, ["NAME", "RUNNING", "DEPLOYED", "PATH"])
    assert long not in "\n".join(projects) and long[:31] + "…" in projects[1]
    assert [p["name"] for p in json.loads(ok(deployster(env, "project", "list", "--json")))] \
        == [long, "web"]

    history = ok(deployster(env, "job", "list")).splitlines()
    assert len(history) == 3
    _assert_aligned(history, ["PROJECT", "STATUS", "COMMIT", "REF", "QUEUED AT",
                              "STARTED AT"])
    assert any(line.endswith(f"{now}  {now}") for line in history[1:])
    listed = json.loads(ok(deployster(env, "job", "list", "--json")))
    assert sorted(j["project"] for j in listed) == sorted([long, "web"])
    assert {j["ref_name"] for j in listed} == {"main", WIDE_REF}
    shown = "release/日本語-" + "r" * 24 + "…"  # 40 cells
    assert any(shown + "  " in line for line in history) and WIDE_REF not in "".join(history)
