"""The ``deployster`` command line (``deployster/cli.py``), run as a real subprocess.

What a user sees: the output of ``project add|list|show|edit``, and for every
mistake exactly one line on stderr, exit code 2, never a traceback.
"""

from __future__ import annotations

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

from deployster.access import TOKEN_PATTERN
from deployster.service import Deployster
from deployster.settings import Settings
from tests.helpers.cli import one_line_error
from tests.helpers.paths import REPO
from tests.helpers.server import LiveServer, free_port, settings_env

RESTART = "supervisorctl restart my-app--main"


@pytest.fixture
def env(settings: Settings) -> dict[str, str]:
    """This test's settings, and nothing inherited that could point elsewhere."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("DEPLOYSTER_")}
    return {**inherited, **settings_env(settings)}


def deployster(
    env: dict[str, str], *args: str, cwd: Path = REPO, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "deployster", *args],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout,
        stdin=subprocess.DEVNULL,
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
    assert len(listed) == 1
    assert listed[0].split() == [str(project_id), "my-app", path]

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
    assert listed[0]["token_set"] is True and digest not in json.dumps(listed)

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
    assert (refused.status_code, refused.json()) == (
        403, {"error": "Unauthorized", "code": "unauthorized"})
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


@pytest.mark.parametrize("token", [None, ""])
def test_serve_without_a_token_says_so_in_one_line(
    env: dict[str, str], token: str | None
) -> None:
    env = {k: v for k, v in env.items() if k != "DEPLOYSTER_TOKEN"}
    if token is not None:
        env["DEPLOYSTER_TOKEN"] = token
    env["DEPLOYSTER_PORT"] = str(free_port())
    line = one_line_error(deployster(env, "serve"))
    assert line.startswith("deployster: error: DEPLOYSTER_TOKEN is not set")


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
    while len(ok(deployster(env, "job", "list")).splitlines()) < 3:
        assert time.monotonic() < deadline, "the deploys never reached the history"
        time.sleep(0.2)
    listed = ok(deployster(env, "job", "list")).splitlines()
    assert [line.split()[0] for line in listed] == [elsewhere, failed, first]  # newest first
    assert listed[1].split()[1:5] == ["my-app", "failed", "(command_failed)", "abc1234"]
    mine = ok(deployster(env, "job", "list", "my-app", "--limit", "1")).splitlines()
    assert [line.split()[0] for line in mine] == [failed]
    as_json = json.loads(ok(deployster(env, "job", "list", "--json")))
    assert [j["job_id"] for j in as_json] == [elsewhere, failed, first]
    assert all("commands" not in j for j in as_json)  # they may hold secrets

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
