"""Failure modes over real HTTP against `deployster serve`: cancel, timeouts,
the lock watchdog, queue policies, and every end state in history
(docs/statuses.md, docs/runner.md#the-watchdog)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from deployster import store
from deployster.service import Deployster
from deployster.settings import Settings
from tests.helpers.deploys import deploy_body, history_row, wait_for_file, wait_for_status
from tests.helpers.paths import REPO
from tests.helpers.server import LiveServer, settings_env

QUEUED = "Another deployment is running; this job is queued."


@pytest.fixture
async def registered(core: Deployster, project_dir: Path) -> Path:
    await core.projects.add(str(project_dir))
    return project_dir


# ------------------------------------------------------------------ helpers


def gated(gate: Path, then: str = "true") -> str:
    """A command that waits until ``gate`` exists (no timing guesses), then ``then``."""
    return f"until [ -e {gate} ]; do sleep 0.05; done; {then}"


async def post(client: httpx.AsyncClient, body: dict[str, object]) -> dict[str, Any]:
    reply = await client.post("/deploy", json=body)
    assert reply.status_code == 200, reply.text
    data: dict[str, Any] = reply.json()
    return data


async def status_of(client: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    data: dict[str, Any] = (await client.get(f"/status/{job_id}")).json()
    return data


async def wait_until_running(client: httpx.AsyncClient, job_id: str,
                             timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (await status_of(client, job_id))["status"] == "running":
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} did not start in {timeout}s")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie waiting to be reaped is not running anything
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def wait_gone(pid: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"process {pid} still alive after {timeout}s")



async def cancel_events(core: Deployster, job_id: str) -> list[dict[str, Any]]:
    events = await store.select_audit_events(core.db, limit=1000)
    return [e for e in events if e["action"] == "job.cancel" and e["job_id"] == job_id]


def run_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **settings_env(settings)}
    return subprocess.run(
        [sys.executable, "-m", "deployster", *args], env=env, cwd=REPO,
        capture_output=True, text=True, timeout=60,
    )


# ------------------------------------------------------------------ cancel


async def test_cancel_queued_job_never_runs_and_the_next_one_does(
    server: LiveServer, registered: Path, core: Deployster, tmp_path: Path
) -> None:
    gate, marker = tmp_path / "gate", tmp_path / "marker"
    async with server.client() as client:
        first = await post(client, deploy_body(registered, gated(gate), commit="a1"))
        victim = await post(client, deploy_body(registered, f"touch {marker}", commit="b1"))
        after = await post(client, deploy_body(registered, "echo after-it", commit="c1"))
        assert victim["queued"] is True

        reply = await client.post(f"/jobs/{victim['job_id']}/cancel")
        assert reply.status_code == 200
        body = reply.json()
        assert body["status"] == "failed" and body["reason"] == "cancelled"
        status = await status_of(client, victim["job_id"])
        assert status["status"] == "failed" and status["reason"] == "cancelled"

        gate.touch()
        assert (await wait_for_status(client, first["job_id"]))["status"] == "complete"
        last = await wait_for_status(client, after["job_id"])
    assert last["status"] == "complete" and "after-it\n" in last["logs"]
    assert not marker.exists(), "a cancelled queued job ran"
    assert len(await cancel_events(core, victim["job_id"])) == 1
    row = await history_row(core, victim["job_id"], "failed")
    assert row.reason == "cancelled"


async def test_cancel_running_job_ends_its_process_group_and_next_starts(
    server: LiveServer, registered: Path, core: Deployster, tmp_path: Path
) -> None:
    pidfile, bgfile = tmp_path / "pid", tmp_path / "bgpid"
    command = (f"echo $$ > {pidfile}; sleep 300 >/dev/null 2>&1 & echo $! > {bgfile}; "
               "sleep 30")
    async with server.client() as client:
        running = await post(client, deploy_body(registered, command, commit="a1"))
        nxt = await post(client, deploy_body(registered, "echo next-one", commit="b1"))
        shell_pid = int(await wait_for_file(pidfile))
        bg_pid = int(await wait_for_file(bgfile))
        assert alive(shell_pid) and alive(bg_pid)

        reply = await client.post(f"/jobs/{running['job_id']}/cancel")
        assert reply.status_code == 200
        final = await wait_for_status(client, running["job_id"], timeout=20)
        assert final["status"] == "failed" and final["reason"] == "cancelled"
        await wait_gone(shell_pid)
        await wait_gone(bg_pid)

        follow = await wait_for_status(client, nxt["job_id"], timeout=20)
    assert follow["status"] == "complete" and "next-one\n" in follow["logs"]
    assert len(await cancel_events(core, running["job_id"])) == 1
    row = await history_row(core, running["job_id"], "failed")
    assert row.reason == "cancelled"


async def test_cancel_errors_finished_unknown_and_unauthorized(
    server: LiveServer, registered: Path, core: Deployster
) -> None:
    async with server.client() as client:
        job = await post(client, deploy_body(registered, "echo done"))
        assert (await wait_for_status(client, job["job_id"]))["status"] == "complete"

        finished = await client.post(f"/jobs/{job['job_id']}/cancel")
        assert finished.status_code == 409
        body = finished.json()
        assert body["code"] == "job_finished" and body["error"]

        unknown = await client.post("/jobs/01ARZ3NDEKTSV4RRFFQ69G5FAV/cancel")
        assert unknown.status_code == 404
        assert unknown.json()["error"]

    async with httpx.AsyncClient(base_url=server.url, timeout=30) as anonymous:
        denied = await anonymous.post(f"/jobs/{job['job_id']}/cancel")
    assert denied.status_code == 403
    assert denied.json()["code"] == "unauthorized"
    assert await cancel_events(core, job["job_id"]) == []
    async with server.client() as client:
        assert (await status_of(client, job["job_id"]))["status"] == "complete"


async def test_cli_job_cancel(
    server: LiveServer, registered: Path, core: Deployster, settings: Settings, tmp_path: Path
) -> None:
    gate, marker = tmp_path / "gate", tmp_path / "marker"
    async with server.client() as client:
        first = await post(client, deploy_body(registered, gated(gate), commit="a1"))
        victim = await post(client, deploy_body(registered, f"touch {marker}", commit="b1"))

        done = await asyncio.to_thread(run_cli, settings, "job", "cancel", victim["job_id"])
        assert done.returncode == 0, done.stderr
        lines = done.stdout.strip().splitlines()
        assert len(lines) == 1 and victim["job_id"] in lines[0] and "cancelled" in lines[0]
        status = await status_of(client, victim["job_id"])
        assert status["status"] == "failed" and status["reason"] == "cancelled"

        gate.touch()
        assert (await wait_for_status(client, first["job_id"]))["status"] == "complete"

    again = await asyncio.to_thread(run_cli, settings, "job", "cancel", first["job_id"])
    assert again.returncode != 0
    err = again.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("deployster: error:"), again.stderr
    assert "Traceback" not in again.stderr + again.stdout
    assert not marker.exists()
    events = await cancel_events(core, victim["job_id"])
    assert len(events) == 1 and events[0]["actor"].startswith("cli:")
    row = await history_row(core, victim["job_id"], "failed")
    assert row.reason == "cancelled"


# ------------------------------------------------------------------ timeout


async def test_timeout_ends_the_job_and_the_next_runs(
    server: LiveServer, core: Deployster, project_dir: Path
) -> None:
    await core.projects.add(str(project_dir), timeout=2)
    async with server.client() as client:
        slow = await post(client, deploy_body(project_dir, "sleep 30", commit="a1"))
        nxt = await post(client, deploy_body(project_dir, "echo after-timeout", commit="b1"))
        final = await wait_for_status(client, slow["job_id"], timeout=20)
        assert final["status"] == "failed" and final["reason"] == "timed_out"
        follow = await wait_for_status(client, nxt["job_id"], timeout=20)
    assert follow["status"] == "complete" and "after-timeout\n" in follow["logs"]
    row = await history_row(core, slow["job_id"], "failed")
    assert row.reason == "timed_out"


# ------------------------------------------------------------------ watchdog


async def test_job_longer_than_lock_ttl_keeps_its_lock(
    server: LiveServer, core: Deployster, project_dir: Path
) -> None:
    project = await core.projects.add(str(project_dir), lock_ttl=2)
    async with server.client() as client:
        job = (await post(client, deploy_body(project_dir, "sleep 7")))["job_id"]
        await wait_until_running(client, job)
        samples = 0
        while True:
            state = await core.lock.state(project.id)
            current = await core.job(job)
            assert current is not None
            if current.status.value != "running":
                break
            # Still running after the lock was read: it was running at the read too.
            assert state.owner == job, f"lock held by {state.owner!r} while {job} ran"
            samples += 1
            await asyncio.sleep(0.2)
        final = await wait_for_status(client, job, timeout=30)
    assert final["status"] == "complete"
    assert samples >= 10  # the job ran well past the 2 s TTL while sampled
    assert (await history_row(core, job, "complete")).reason is None


# ------------------------------------------------------------------ queue policies


async def test_fifo_identical_queued_request_returns_the_same_job(
    server: LiveServer, registered: Path, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    async with server.client() as client:
        blocker = await post(client, deploy_body(registered, gated(gate), commit="a1"))
        one = await post(client, deploy_body(registered, "echo same", commit="c1"))
        two = await post(client, deploy_body(registered, "echo same", commit="c1"))
        other = await post(client, deploy_body(registered, "echo same", commit="c2"))
        assert one == {"job_id": one["job_id"], "queued": True, "message": QUEUED}
        assert two == {**one, "deduplicated": True}
        assert other["job_id"] != one["job_id"] and other["queued"] is True
        assert (await status_of(client, one["job_id"]))["position"] == 1
        assert (await status_of(client, other["job_id"]))["position"] == 2
        gate.touch()
        for job in (blocker, one, other):
            assert (await wait_for_status(client, job["job_id"]))["status"] == "complete"


async def test_supersede_replaces_queued_jobs_of_the_same_ref(
    server: LiveServer, core: Deployster, project_dir: Path, tmp_path: Path
) -> None:
    await core.projects.add(str(project_dir), queue_policy="supersede")
    gate1, gate2, order = tmp_path / "gate1", tmp_path / "gate2", tmp_path / "order"
    async with server.client() as client:
        blocker = await post(client, deploy_body(project_dir, gated(gate1), commit="z0"))
        await wait_until_running(client, blocker["job_id"])
        a = await post(client, deploy_body(project_dir, f"echo A >> {order}", commit="a1"))
        assert (await status_of(client, a["job_id"]))["position"] == 1
        b = await post(client, deploy_body(project_dir, gated(gate2, f"echo B >> {order}"),
                                           commit="b1", ref="other"))
        c = await post(client, deploy_body(project_dir, f"echo C >> {order}", commit="c1"))
        assert c["job_id"] != a["job_id"]

        status_a = await status_of(client, a["job_id"])
        assert status_a["status"] == "failed" and status_a["reason"] == "superseded"
        assert status_a["superseded_by"] == c["job_id"]
        assert (await status_of(client, b["job_id"]))["position"] == 1
        assert (await status_of(client, c["job_id"]))["position"] == 2

        gate1.touch()
        await wait_until_running(client, b["job_id"])
        status_c = await status_of(client, c["job_id"])
        assert status_c["status"] == "queued" and status_c["position"] == 1
        gate2.touch()
        for job in (blocker, b, c):
            assert (await wait_for_status(client, job["job_id"]))["status"] == "complete"
    assert order.read_text() == "B\nC\n"
    row = await history_row(core, a["job_id"], "failed")
    assert row.reason == "superseded" and row.superseded_by == c["job_id"]
