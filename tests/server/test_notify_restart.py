"""Nothing is lost across a server restart (README.md#notifications): a real
``deployster serve`` killed with SIGKILL while a notification waits for its
target, an event written while no server runs, both delivered once a server
is back and the target answers."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

from deployster import store
from deployster.notify.targets import NotifyChange
from deployster.service import DeployRequest, Deployster
from tests.helpers.deploys import deploy_body, wait_for_status
from tests.helpers.receivers import Receiver
from tests.helpers.server import free_port, start_server
from tests.test_cli import deployster, env, ok  # noqa: F401  (env: the fixture)

SECRET = "restart-secret-77"


async def test_a_killed_server_loses_no_notification(
    core: Deployster, project_dir: Path, tmp_path: Path, env: dict[str, str]  # noqa: F811
) -> None:
    port = free_port()
    target = Receiver(port=port)  # not listening yet: the target is down
    project = await core.projects.add(str(project_dir), notify=NotifyChange(
        targets=(f"webhook={target.url}",), events="complete,cancelled", secrets=(SECRET,)))
    live = start_server(core.settings, tmp_path / "first.log")
    try:
        async with live.client() as client:
            reply = await client.post("/deploy", json=deploy_body(project_dir, "echo hi"))
            job = reply.json()["job_id"]
            assert (await wait_for_status(client, job))["status"] == "complete"
        deadline = time.monotonic() + 20
        while not await store.select_audit_events(core.db, action_prefix="notify.failed"):
            assert time.monotonic() < deadline, live.log()
            await asyncio.sleep(0.05)
    finally:
        live.stop(signal.SIGKILL)
    # While no server runs, another job is cancelled: its event waits in Redis.
    queued = await core.submit(DeployRequest(cd=str(project_dir),
                                             commands=["supervisorctl restart x"]),
                               run_here=False)
    record = await core.job(queued.job_id)
    assert record is not None and await core.queue.cancel(record) == "queued"
    with target:
        again = start_server(core.settings, tmp_path / "second.log")
        try:
            got = await target.wait_for(2)
        finally:
            again.stop()  # its last attempts reach the audit log as it stops
    listed = ok(deployster(env, "notifications", "my-app"))
    assert sorted((r.json["event"], r.json["job_id"]) for r in got) == sorted(
        [("complete", job), ("cancelled", queued.job_id)])
    assert all(r.signed_with(SECRET) for r in got)
    assert len(target.requests) == 2  # once each
    rows = [line for line in listed.splitlines() if job in line]
    assert any("failed (" in line for line in rows) and any("sent (200)" in line for line in rows)
    assert "waiting: 0 delivery lane(s)" in listed
    assert all(row["project_id"] == project.id
               for row in await store.select_audit_events(core.db, action_prefix="notify."))
