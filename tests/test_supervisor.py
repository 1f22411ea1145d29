"""The restart at the end of a deploy, against a real supervisord.

A deploy's last command is ``supervisorctl start|restart <program>``. Before it
deployster runs ``reread`` and ``update`` of that program's group only; after
it, the job is ``complete`` only once the program has been RUNNING for a few
seconds. A program that exits at once, or crashes a second after it started,
fails the job ``restart_failed`` with supervisor's own status line in the log.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from deployster import supervisor
from deployster.service import Deployster
from deployster.settings import Settings
from tests.helpers.deploys import wait_for_status
from tests.helpers.server import LiveServer, serving
from tests.helpers.supervisord import Supervisord, supervisor_installed

pytestmark = pytest.mark.skipif(not supervisor_installed(),
                                reason="supervisor (PyPI) is not installed in this venv")

SLEEPER = f"{sys.executable} -c 'import time; time.sleep(3600)'"


@pytest.fixture
def sv(tmp_path: Path) -> Iterator[Supervisord]:
    with Supervisord(tmp_path / "sv") as running:
        yield running


@pytest.fixture
def live(settings: Settings, tmp_path: Path) -> Iterator[LiveServer]:
    yield from serving(settings, tmp_path)


async def deploy(live: LiveServer, app: Path, *commands: str) -> dict[str, object]:
    async with live.client() as client:
        reply = await client.post("/deploy", json={
            "cd": str(app), "commands": list(commands), "commit_hash": "abc1234",
            "ref_name": "main"})
        assert reply.status_code == 200, reply.text
        return await wait_for_status(client, reply.json()["job_id"], timeout=60)


async def test_a_program_that_starts_completes_the_job(
    core: Deployster, live: LiveServer, sv: Supervisord, project_dir: Path
) -> None:
    sv.program("web", SLEEPER)
    assert sv.ctl("update").returncode == 0
    await core.projects.add(str(project_dir), steps={"verify_running": 2})
    final = await deploy(live, project_dir, "true", sv.restart_command("web"))
    assert final["status"] == "complete", final["logs"]
    log = str(final["logs"])
    assert f"[deployster] $ {sv.ctl_path} -c {sv.conf} reread\n" in log
    assert "[deployster] restart verified: web" in log and "RUNNING" in log


async def test_a_program_that_exits_at_once_fails_the_job_with_supervisors_line(
    core: Deployster, live: LiveServer, sv: Supervisord, project_dir: Path
) -> None:
    sv.program("web", SLEEPER)
    sv.ctl("update")
    sv.program("web", "/bin/sh -c 'exit 3'")  # the new release does not start
    await core.projects.add(str(project_dir))
    final = await deploy(live, project_dir, sv.restart_command("web"))
    assert (final["status"], final["reason"]) == ("failed", "restart_failed"), final["logs"]
    last = str(final["logs"]).rstrip().splitlines()[-1]
    assert last.startswith("[deployster] restart failed: "), final["logs"]
    assert "web" in last and ("FATAL" in last or "BACKOFF" in last or "ERROR" in last), last


async def test_a_program_that_crashes_after_a_second_fails_the_job(
    core: Deployster, live: LiveServer, sv: Supervisord, project_dir: Path
) -> None:
    sv.program("web", SLEEPER)
    sv.ctl("update")
    sv.program("web", "/bin/sh -c 'sleep 1.5; exit 1'")  # RUNNING at 1 s, gone at 1.5 s
    await core.projects.add(str(project_dir))
    final = await deploy(live, project_dir, sv.restart_command("web"))
    assert (final["status"], final["reason"]) == ("failed", "restart_failed"), final["logs"]
    last = str(final["logs"]).rstrip().splitlines()[-1]
    assert "web" in last and "EXITED" in last, final["logs"]


async def test_update_loads_the_programs_new_config_and_no_other_group(
    core: Deployster, live: LiveServer, sv: Supervisord, project_dir: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "v2-started"
    sv.program("web", SLEEPER)
    sv.program("other", SLEEPER)
    sv.ctl("update")
    other_pid = sv.ctl("pid", "other").stdout.strip()
    # The release changes web's command; someone also edited other's config.
    sv.program("web", f"/bin/sh -c 'touch {marker}; exec sleep 3600'")
    sv.program("other", f"{SLEEPER} # edited")
    await core.projects.add(str(project_dir), steps={"verify_running": 1})
    final = await deploy(live, project_dir, sv.restart_command("web"))
    assert final["status"] == "complete", final["logs"]
    assert marker.exists(), "web did not run its new command"
    assert sv.ctl("pid", "other").stdout.strip() == other_pid, "update touched another group"
    assert "[deployster] $ " in str(final["logs"]) and " update web\n" in str(final["logs"])


async def test_a_spawn_error_answered_with_exit_0_still_fails_the_job(
    core: Deployster, live: LiveServer, sv: Supervisord, project_dir: Path
) -> None:
    """supervisorctl 3.x says ``ERROR (spawn error)`` and exits 0; with the
    check after the restart off, its answer must fail the job on its own."""
    sv.program("web", SLEEPER)
    sv.ctl("update")
    sv.program("web", "/nonexistent/bin/app")
    await core.projects.add(str(project_dir), steps={"verify_window": 0})
    wrapper = project_dir / "supervisorctl"  # a 3.x-like supervisorctl: exit 0 whatever
    wrapper.write_text(f"#!/bin/sh\n{sv.ctl_path} \"$@\"\nexit 0\n")
    wrapper.chmod(0o755)
    command = f"{wrapper} -c {sv.conf} restart web"
    final = await deploy(live, project_dir, command)
    assert (final["status"], final["reason"]) == ("failed", "restart_failed"), final["logs"]
    assert "ERROR (" in str(final["logs"]).rstrip().splitlines()[-1]


async def test_every_process_of_a_group_is_verified(
    core: Deployster, live: LiveServer, sv: Supervisord, project_dir: Path
) -> None:
    sv.program("api", SLEEPER, group="backend")
    sv.ctl("update")
    await core.projects.add(str(project_dir), steps={"verify_running": 1})
    final = await deploy(live, project_dir, sv.restart_command("backend:*"))
    assert final["status"] == "complete", final["logs"]
    assert "[deployster] restart verified: backend:api" in str(final["logs"])


async def test_the_supervisor_update_can_be_turned_off(
    core: Deployster, live: LiveServer, sv: Supervisord, project_dir: Path
) -> None:
    sv.program("web", SLEEPER)
    sv.ctl("update")
    await core.projects.add(str(project_dir),
                            steps={"supervisor_update": False, "verify_running": 1})
    final = await deploy(live, project_dir, sv.restart_command("web"))
    assert final["status"] == "complete", final["logs"]
    assert " reread\n" not in str(final["logs"])


# ------------------------------------------------------------ the parsing


@pytest.mark.parametrize(("command", "prefix", "action", "programs", "groups"), [
    ("supervisorctl restart my-app--main", ("supervisorctl",), "restart",
     ("my-app--main",), ("my-app--main",)),
    ("sudo -n /usr/bin/supervisorctl -c /etc/sv.conf start web:web_00 api",
     ("sudo", "-n", "/usr/bin/supervisorctl", "-c", "/etc/sv.conf"), "start",
     ("web:web_00", "api"), ("web", "api")),
    ("  supervisorctl\trestart  backend:*  ", ("supervisorctl",), "restart",
     ("backend:*",), ("backend",)),
])
def test_the_last_command_is_taken_apart(command: str, prefix: tuple[str, ...], action: str,
                                         programs: tuple[str, ...],
                                         groups: tuple[str, ...]) -> None:
    parsed = supervisor.parse_restart(command)
    assert parsed is not None
    assert (parsed.prefix, parsed.action, parsed.programs, parsed.groups) == (
        prefix, action, programs, groups)
    assert parsed.command("status", *programs).startswith(" ".join(prefix))


@pytest.mark.parametrize(("output", "settle", "done", "failed"), [
    ("web                RUNNING   pid 12, uptime 0:00:05\n", 3, True, False),
    ("web                RUNNING   pid 12, uptime 0:00:01\n", 3, False, False),
    ("web                STARTING  \n", 3, False, False),
    ("web                RUNNING   pid 12, uptime 2 days, 0:00:00\n", 3, True, False),
    ("web                FATAL     Exited too quickly (process log may have details)\n",
     3, False, True),
    ("web                BACKOFF   Exited too quickly\n", 3, False, True),
    ("web                EXITED    Nov 29 10:00 AM\n", 3, False, True),
    ("web: ERROR (no such process)\n", 3, False, True),
    ("", 3, False, True),
    ("a:x   RUNNING   pid 1, uptime 0:01:00\na:y   STOPPED   Not started\n", 3, False, True),
])
def test_status_lines_are_judged(output: str, settle: float, done: bool, failed: bool) -> None:
    verdict = supervisor.judge(supervisor.parse_status(output), settle)
    assert (verdict.done, verdict.failed) == (done, failed)


def test_only_real_errors_count() -> None:
    assert supervisor.errors_in("web: ERROR (spawn error)\n") == ["web: ERROR (spawn error)"]
    assert supervisor.errors_in("web: ERROR (already started)\n") == []
    assert supervisor.errors_in("web: ERROR (not running)\nweb: started\n") == []
    assert supervisor.errors_in("web: stopped\nweb: started\n") == []
