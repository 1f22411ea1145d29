"""How a job's processes end: the stop grace, leftovers, and the closing line.

Replayed from other tools' bug reports: a command whose SIGTERM handler needs a
couple of seconds was SIGKILLed 0.1 s after SIGTERM (the runner waited for the
``/bin/sh -c`` wrapper, which dies at once); ``nohup daemon &`` lived on after
the job until it died of a broken pipe, with nothing in the log; a job ended
``lock_lost`` by a takeover had no closing line. Real processes, a real server.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import time
from pathlib import Path

from deployster.models import JobStatus, Reason
from deployster.procgroups import members
from deployster.procinfo import pid_alive
from deployster.service import Deployster
from deployster.settings import Settings
from tests.helpers.deploys import deploy_body, wait_for_file, wait_for_status
from tests.helpers.server import serving
from tests.test_runner import run_direct

# A worker that needs ``{cleanup}`` seconds to shut down cleanly on SIGTERM; run
# behind a shell (``; echo``) so the wrapper is not exec'ed away.
HANDLER = """\
import os, pathlib, signal, sys, time
def term(*_):
    pathlib.Path("got-term").write_text(str(time.monotonic()))
    time.sleep({cleanup})
    pathlib.Path("cleaned").write_text("clean")
    sys.exit(0)
signal.signal(signal.SIGTERM, term)
print("worker ready", flush=True)
pathlib.Path("ready").write_text(str(os.getpid()))
while True:
    time.sleep(0.05)
"""


def write_handler(directory: Path, cleanup: float) -> str:
    (directory / "handler.py").write_text(HANDLER.format(cleanup=cleanup))
    return "python3 handler.py; echo worker-exited"


def gone(pid: int) -> bool:
    return not pid_alive(pid) or not Path(f"/proc/{pid}").exists() or (
        Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z")


async def until_gone(pid: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if gone(pid):
                return
        await asyncio.sleep(0.05)
    raise AssertionError(f"pid {pid} still alive after {timeout}s")


async def run_the_handler(settings: Settings, core: Deployster, project_dir: Path,
                          tmp_path: Path, *, cleanup: float, grace: float,
                          timeout: float | None = None) -> dict[str, object]:
    """Deploy the worker that needs ``cleanup`` seconds after SIGTERM (as
    ``project_dir``, registered with ``timeout``) on a server whose kill grace
    is ``grace`` seconds. Without a timeout to stop it, the job is cancelled
    once the worker is ready (its handler set). Returns the final /status
    reply; the worker's pid stays in ``project_dir / "ready"``."""
    command = write_handler(project_dir, cleanup)
    await core.projects.add(str(project_dir), timeout=timeout)
    for live in serving(settings, tmp_path, DEPLOYSTER_KILL_GRACE=str(grace)):
        async with live.client() as client:
            job = (await client.post("/deploy", json=deploy_body(project_dir, command))).json()
            if timeout is None:
                await wait_for_file(project_dir / "ready")
                reply = await client.post(f"/jobs/{job['job_id']}/cancel")
                assert reply.status_code == 200, reply.text
            final = await wait_for_status(client, job["job_id"])
    return final


# ------------------------------------------------------------- the grace


async def test_cancel_gives_the_whole_group_the_grace_before_sigkill(
    settings: Settings, core: Deployster, project_dir: Path, tmp_path: Path
) -> None:
    final = await run_the_handler(settings, core, project_dir, tmp_path, cleanup=2, grace=10)
    pid = int((project_dir / "ready").read_text())
    assert (final["status"], final["reason"]) == ("failed", "cancelled")
    # The handler ran to its end: two seconds after SIGTERM, not killed at 0.1 s.
    assert (project_dir / "cleaned").read_text() == "clean"
    log = str(final["logs"])
    assert re.search(rf"\[deployster\] cancelled: sending SIGTERM to .*pid {pid} "
                     r"\([^)]*python3 handler\.py\).*up to 10s to exit", log), log
    assert re.search(r"\[deployster\] exited [0-9.]+s after SIGTERM\n", log), log
    assert "SIGKILL" not in log
    assert log.endswith("[deployster] job stopped: cancelled\n"), log
    await until_gone(pid)


async def test_a_timeout_gives_the_grace_too(
    settings: Settings, core: Deployster, project_dir: Path, tmp_path: Path
) -> None:
    final = await run_the_handler(settings, core, project_dir, tmp_path, cleanup=1.5, grace=10,
                                  timeout=1)
    assert (final["status"], final["reason"]) == ("failed", "timed_out")
    assert (project_dir / "cleaned").read_text() == "clean"
    log = str(final["logs"])
    assert "[deployster] timed out: sending SIGTERM to " in log
    assert "SIGKILL" not in log
    assert log.endswith("[deployster] job stopped: timed out\n"), log


async def test_past_the_grace_what_is_left_gets_sigkill_and_the_log_names_it(
    settings: Settings, core: Deployster, project_dir: Path, tmp_path: Path
) -> None:
    final = await run_the_handler(settings, core, project_dir, tmp_path, cleanup=60, grace=1)
    pid = int((project_dir / "ready").read_text())
    log = str(final["logs"])
    assert re.search(rf"\[deployster\] still running 1s after SIGTERM: pid {pid} "
                     r"\([^)]*python3 handler\.py\); sent SIGKILL\n", log), log
    assert not (project_dir / "cleaned").exists()
    assert log.endswith("[deployster] job stopped: cancelled\n"), log
    await until_gone(pid)


# --------------------------------------------------------------- leftovers

TICKER = (
    "python3 -c 'import signal,sys,time,pathlib\n"
    "signal.signal(signal.SIGTERM, lambda *a: (pathlib.Path(\"ticker-term\").write_text(\"x\"),"
    " sys.exit(0)))\n"
    "pathlib.Path(\"ticker\").write_text(str(__import__(\"os\").getpid()))\n"
    "while True:\n"
    "    print(\"tick\", flush=True); time.sleep(0.1)' &"
)


async def test_a_process_left_in_the_group_is_named_and_stopped_at_the_end(
    core: Deployster, tmp_path: Path
) -> None:
    outcome, log = await run_direct(core, tmp_path, f"nohup {TICKER}", "sleep 1",
                                    "echo last-command")
    pid = int((tmp_path / "ticker").read_text())
    assert outcome.status is JobStatus.COMPLETE
    # Its output kept being read while the next commands ran: no broken pipe.
    after_first = log.split("[2/3] $ sleep 1\n", 1)[1]
    assert "tick\n" in after_first.split("[3/3]", 1)[0], log
    assert re.search(rf"\[deployster\] still running after the job's commands: pid {pid} "
                     r"\([^)]*python3 -c import signal.*stopping them \(SIGTERM, up to 2s to exit\)"
                     r".*setsid", log), log
    assert re.search(r"\[deployster\] exited [0-9.]+s after SIGTERM\n", log), log
    assert (tmp_path / "ticker-term").exists(), "the leftover did not get SIGTERM"
    assert log.splitlines()[-1].startswith("[deployster] job complete in "), log
    await until_gone(pid)


async def test_a_process_that_left_the_group_with_its_own_log_is_not_touched(
    core: Deployster, tmp_path: Path
) -> None:
    outcome, log = await run_direct(
        core, tmp_path,
        "setsid sh -c 'echo $$ > keeper; exec sleep 60' > keeper.log 2>&1 < /dev/null &",
    )
    pid = int(await wait_for_file(tmp_path / "keeper"))
    try:
        assert outcome.status is JobStatus.COMPLETE
        assert "still running after" not in log
        assert pid_alive(pid) and members(pid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


async def test_a_pipe_held_outside_the_group_is_let_go_of_and_said(
    core: Deployster, tmp_path: Path
) -> None:
    outcome, log = await run_direct(core, tmp_path,
                                    "setsid sh -c 'echo $$ > holder; exec sleep 60' &")
    pid = int(await wait_for_file(tmp_path / "holder"))
    try:
        assert outcome.status is JobStatus.COMPLETE
        assert ("[deployster] a process outside the job's process groups still holds its "
                "output open; no longer reading it\n") in log
        assert log.splitlines()[-1].startswith("[deployster] job complete in ")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------- the closing line


async def test_a_job_whose_lock_is_taken_over_ends_with_a_closing_line(
    settings: Settings, core: Deployster, project_dir: Path, tmp_path: Path
) -> None:
    """The operator releases the lock of a running job while another waits: the
    next job claims the lock and the first ends lock_lost, with a closing line
    saying so, however the race between the claim and its watchdog goes."""
    from deployster.control import release_lock

    await core.projects.add(str(project_dir))
    for live in serving(settings, tmp_path):
        async with live.client() as client:
            for round_ in range(3):
                first = (await client.post("/deploy", json=deploy_body(
                    project_dir, f"echo started-{round_} > started; sleep 20",
                    commit=f"a{round_}"))).json()
                assert await wait_for_file(project_dir / "started") == f"started-{round_}"
                second = (await client.post("/deploy", json=deploy_body(
                    project_dir, "true", commit=f"b{round_}"))).json()
                assert second.get("queued"), second
                job = await core.job(first["job_id"])
                assert job is not None
                assert await release_lock(core, job.project_id, job.id, actor="test")
                final = await wait_for_status(client, first["job_id"])
                assert (final["status"], final["reason"]) == ("failed", Reason.LOCK_LOST)
                last = str(final["logs"]).splitlines()[-1]
                assert last.startswith("[deployster] "), final["logs"]
                assert "lock" in last, final["logs"]
                assert (await wait_for_status(client, second["job_id"]))["status"] == "complete"
                (project_dir / "started").unlink()
