"""The runner (docs/runner.md): real /bin/sh subprocesses, output into the job's real
Redis stream. End-to-end cases go through `deployster serve` over HTTP; the
others drive a Runner directly, reading the log the way every reader does."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import signal
import stat
from pathlib import Path

from deployster.ids import new_job_id
from deployster.logstream import LogWriter, read_full_log
from deployster.models import EnvVar, Job, JobStatus, Project, Reason, Stage
from deployster.runner import Outcome, Runner
from deployster.service import Deployster
from tests.helpers.deploys import deploy_body, wait_for_status
from tests.helpers.server import TOKEN, LiveServer


async def run_direct(
    core: Deployster, cwd: Path, *commands: str, project: Project | None = None,
    ref: str = "main",
) -> tuple[Outcome, str]:
    """Run ``commands`` with a Runner writing to a real log stream; return the log."""
    project = project or Project(id=1, name="direct", path=str(cwd))
    job = Job(
        id=new_job_id(), project_id=project.id, project=project.name, cd=str(cwd),
        commands=list(commands), commit_hash="abc1234", ref_name=ref,
    )
    async with LogWriter(core.redis, core.keys, job.id, cap_bytes=50 * 1024 * 1024) as log:
        runner = Runner(job, project, log, kill_grace=2.0)
        outcome = await asyncio.wait_for(runner.run(), 60)
    return outcome, await read_full_log(core.redis, core.keys, job.id)


# ----------------------------------------------------------- output volume

TEN_MB = (
    "awk 'BEGIN{p=sprintf(\"%88s\",\"\"); gsub(/ /,\"x\",p); "
    "for(i=1;i<=100000;i++) printf \"line-%06d-%s\\n\", i, p}'"
)


async def test_ten_megabytes_of_output_all_reach_the_log(
    server: LiveServer, core: Deployster, project_dir: Path
) -> None:
    await core.projects.add(str(project_dir))
    expected = [f"line-{i:06d}-{'x' * 88}" for i in range(1, 100_001)]
    async with server.client() as client:
        job = (await client.post("/deploy", json=deploy_body(project_dir, TEN_MB))).json()
        final = await wait_for_status(client, job["job_id"], timeout=120)
    assert final["status"] == "complete", str(final)[:2000]
    logs = str(final["logs"])
    lines = [line for line in logs.splitlines() if line.startswith("line-")]
    assert len(lines) == len(expected)
    body = "\n".join(lines).encode()
    assert len(body) == len("\n".join(expected).encode()) > 10_000_000
    assert hashlib.sha256(body).hexdigest() == hashlib.sha256(
        "\n".join(expected).encode()
    ).hexdigest()
    assert "output truncated" not in logs
    assert "supervisorctl: restart my-app--main" in logs


async def test_a_one_megabyte_line_arrives_intact(core: Deployster, tmp_path: Path) -> None:
    command = "awk 'BEGIN{for(i=0;i<131072;i++) printf \"%07d,\", i; print \"\"}'"
    outcome, log = await run_direct(core, tmp_path, command)
    assert outcome.status is JobStatus.COMPLETE
    expected = "".join(f"{i:07d}," for i in range(131072))
    assert len(expected) == 1024 * 1024
    lines = log.splitlines()
    assert expected in lines
    # Stored as several chunks, read back as one line.
    entries = await core.redis.xlen(core.keys.log(_last_job_id(log)))
    assert entries > 1


def _last_job_id(log: str) -> str:
    match = re.search(r"\[deployster\] job (\w+) ", log)
    assert match, log[:500]
    return match.group(1)


# -------------------------------------------------- commands and exit codes


async def test_first_failing_command_stops_the_job(
    server: LiveServer, core: Deployster, project_dir: Path
) -> None:
    await core.projects.add(str(project_dir))
    body = deploy_body(
        project_dir, "echo step-one", "echo oops >&2; exit 3", "touch later-ran; echo step-three"
    )
    async with server.client() as client:
        job = (await client.post("/deploy", json=body)).json()
        final = await wait_for_status(client, job["job_id"])
    assert final["status"] == "failed"
    assert final["reason"] == "command_failed"
    logs = str(final["logs"])
    assert "step-one\n" in logs and "oops\n" in logs
    assert "command 2 exited with code 3" in logs
    # Nothing after the failure ran, not even its header or the restart.
    assert "step-three" not in logs and "[3/4]" not in logs
    assert "supervisorctl:" not in logs
    assert not (project_dir / "later-ran").exists()
    record = await core.job(job["job_id"])
    assert record is not None and record.exit_code == 3


async def test_exit_code_of_a_plain_false_and_a_killed_shell(
    core: Deployster, tmp_path: Path
) -> None:
    outcome, log = await run_direct(core, tmp_path, "false", "echo unreachable")
    assert outcome == Outcome(JobStatus.FAILED, Reason.COMMAND_FAILED, 1)
    assert "command 1 exited with code 1" in log and "unreachable\n" not in log

    outcome, log = await run_direct(core, tmp_path, "echo before; kill -9 $$")
    assert outcome.status is JobStatus.FAILED and outcome.reason == Reason.COMMAND_FAILED
    assert outcome.exit_code == -signal.SIGKILL
    assert "before\n" in log and f"exited with code {-signal.SIGKILL}" in log


async def test_a_header_line_precedes_each_command(core: Deployster, tmp_path: Path) -> None:
    outcome, log = await run_direct(core, tmp_path, "echo alpha", "echo beta", "echo gamma")
    assert outcome.status is JobStatus.COMPLETE and outcome.exit_code == 0
    assert (
        "[1/3] $ echo alpha\nalpha\n[2/3] $ echo beta\nbeta\n[3/3] $ echo gamma\ngamma\n"
    ) in log
    assert "job complete" in log.splitlines()[-1]


async def test_stderr_is_merged_into_the_log_in_order(core: Deployster, tmp_path: Path) -> None:
    outcome, log = await run_direct(
        core, tmp_path, "echo to-stdout; echo to-stderr >&2; echo stdout-again"
    )
    assert outcome.status is JobStatus.COMPLETE
    assert "to-stdout\nto-stderr\nstdout-again\n" in log


async def test_commands_run_in_the_project_dir_via_sh(core: Deployster, tmp_path: Path) -> None:
    outcome, log = await run_direct(core, tmp_path, "pwd; readlink /proc/$$/exe")
    assert outcome.status is JobStatus.COMPLETE
    lines = log.splitlines()
    assert str(tmp_path.resolve()) in lines
    assert os.path.realpath("/bin/sh") in lines


async def test_each_command_runs_in_its_own_process_group(
    core: Deployster, tmp_path: Path
) -> None:
    probe = "echo \"pid=$$ pgid=$(ps -o pgid= -p $$ | tr -d ' ')\""
    outcome, log = await run_direct(core, tmp_path, probe, probe)
    assert outcome.status is JobStatus.COMPLETE
    found = [(int(a), int(b)) for a, b in re.findall(r"^pid=(\d+) pgid=(\d+)$", log, re.M)]
    assert len(found) == 2, log
    for pid, pgid in found:
        assert pgid == pid  # a group leader: its own group
        assert pgid != os.getpgrp()  # not the server's group
    assert found[0][1] != found[1][1]  # a fresh group per command


async def test_a_background_child_holding_stdout_does_not_hang_the_job(
    core: Deployster, tmp_path: Path
) -> None:
    pid = None
    try:
        outcome, log = await run_direct(
            core, tmp_path, "sleep 300 & echo bg=$!", "echo next-command"
        )
        match = re.search(r"^bg=(\d+)$", log, re.M)
        assert match, log
        pid = int(match.group(1))
        # run_direct gives up after 60 s; the child would hold the pipe for 300.
        assert outcome.status is JobStatus.COMPLETE
        assert "next-command\n" in log
    finally:
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# ----------------------------------------------------------- environment

TRICKY = {
    "API_URL": "https://x",
    "SINGLE_AND_DOUBLE": "it's \"quoted\" $HOME `echo hi` back\\slash  two  spaces",
    "NO_SINGLE": 'plain $HOME $(id -u) `id` "dq" and \\ spaces ',
    "PADDED": "  lead and trail  ",
    "EMPTY": "",
}


async def test_a_queued_job_writes_the_stage_env_file_0600_and_sets_the_environment(
    server: LiveServer, core: Deployster, project_dir: Path
) -> None:
    pipeline = [{
        "stage_name": "Production",
        "git_branch": "main",
        "environment_variables": [{"key": k, "value": v} for k, v in TRICKY.items()],
    }]
    await core.projects.add(str(project_dir), pipeline=pipeline)
    # The values are in the commands' environment. The .env is for dotenv
    # readers (tests/test_envfile.py reads it with them), not for sh.
    read_back = "; ".join(f'printf %s "${key}" > {key}.out' for key in TRICKY)
    async with server.client() as client:
        # The first job holds the lock and deletes the .env it got, so the
        # .env seen afterwards can only come from the queued job's own start.
        first = (await client.post("/deploy", json=deploy_body(
            project_dir, "rm -f .env; sleep 1"))).json()
        second = (await client.post("/deploy", json=deploy_body(
            project_dir, "stat -c 'mode=%a' .env", read_back))).json()
        assert second.get("queued") is True, second
        a = await wait_for_status(client, first["job_id"])
        b = await wait_for_status(client, second["job_id"])
    assert a["status"] == "complete", a
    assert b["status"] == "complete", b
    logs = str(b["logs"])
    assert "mode=600\n" in logs
    assert (
        "[deployster] stage 'Production': wrote .env "
        "(API_URL, SINGLE_AND_DOUBLE, NO_SINGLE, PADDED, EMPTY)"
    ) in logs
    env_file = project_dir / ".env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    for key, value in TRICKY.items():
        assert (project_dir / f"{key}.out").read_bytes() == value.encode(), key
    # One line per variable plus the comment: no value added a line.
    assert len(env_file.read_text().splitlines()) == 1 + len(TRICKY)
    assert not list(project_dir.glob(".env.*.tmp"))
    # The values themselves never reach the log.
    assert "https://x" not in logs and "lead and trail" not in logs


async def test_a_branch_without_a_stage_writes_no_env(core: Deployster, tmp_path: Path) -> None:
    project = Project(
        id=1, name="p", path=str(tmp_path),
        pipeline=(Stage("Production", "main", (EnvVar("A", "1"),)),),
    )
    outcome, log = await run_direct(core, tmp_path, "test ! -e .env && echo no-env",
                                    project=project, ref="feature")
    assert outcome.status is JobStatus.COMPLETE
    assert "no-env\n" in log and "wrote .env" not in log


async def test_the_server_token_is_not_visible_to_commands(
    server: LiveServer, core: Deployster, project_dir: Path
) -> None:
    await core.projects.add(str(project_dir))
    assert server.env["DEPLOYSTER_TOKEN"] == TOKEN  # the server itself has it
    body = deploy_body(
        project_dir,
        "env | grep DEPLOYSTER_TOKEN || echo token-absent",
        "echo job=$DEPLOYSTER_JOB_ID commit=$DEPLOYSTER_COMMIT",
    )
    async with server.client() as client:
        job = (await client.post("/deploy", json=body)).json()
        final = await wait_for_status(client, job["job_id"])
    assert final["status"] == "complete", final
    logs = str(final["logs"])
    assert TOKEN not in logs
    assert "token-absent\n" in logs
    assert f"job={job['job_id']} commit=abc1234\n" in logs


async def test_a_job_whose_commands_as_sent_are_gone_runs_nothing(
    core: Deployster, tmp_path: Path
) -> None:
    """Its stored commands have a secret masked: running them would run "***"
    in its place. Nothing runs, and the log says why."""
    project = Project(id=1, name="direct", path=str(tmp_path))
    job = Job(
        id=new_job_id(), project_id=1, project="direct", cd=str(tmp_path),
        commands=["echo *** > ran.txt"], commit_hash="abc1234", ref_name="main",
        commands_masked=True,
    )
    async with LogWriter(core.redis, core.keys, job.id, cap_bytes=1024 * 1024) as log:
        outcome = await asyncio.wait_for(Runner(job, project, log, kill_grace=2.0).run(), 60)
    text = await read_full_log(core.redis, core.keys, job.id)
    assert outcome == Outcome(JobStatus.FAILED, Reason.INVALID)
    assert not (tmp_path / "ran.txt").exists() and "$ echo" not in text
    assert "no longer kept; nothing was run" in text


async def test_a_job_runs_its_commands_as_sent_under_headers_as_stored(
    core: Deployster, tmp_path: Path
) -> None:
    project = Project(id=1, name="direct", path=str(tmp_path))
    job = Job(
        id=new_job_id(), project_id=1, project="direct", cd=str(tmp_path),
        commands=["echo *** > ran.txt"], commit_hash="abc1234", ref_name="main",
        commands_masked=True, raw_commands=["echo s3cr3t-value > ran.txt"],
    )
    async with LogWriter(core.redis, core.keys, job.id, cap_bytes=1024 * 1024) as log:
        outcome = await asyncio.wait_for(Runner(job, project, log, kill_grace=2.0).run(), 60)
    text = await read_full_log(core.redis, core.keys, job.id)
    assert outcome.status is JobStatus.COMPLETE, text
    assert (tmp_path / "ran.txt").read_text() == "s3cr3t-value\n"
    assert "[1/1] $ echo *** > ran.txt" in text and "s3cr3t" not in text
