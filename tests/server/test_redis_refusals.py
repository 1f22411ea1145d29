"""A Redis that is up but refuses writes, under a live server: MISCONF (a full
disk under the append-only file) and OOM (``maxmemory`` reached, nothing to
evict). Both are produced for real on a redis-server of the test's own
(``tests/helpers/refusing_redis.py``).

What a user sees: a deploy is answered ``503 redis_unavailable`` (retry soon),
``/healthz`` answers 503 naming Redis, and a job that was running when Redis
stopped taking writes ends with its true outcome once Redis takes them again:
never a 500, never a job stuck ``running``.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from deployster.settings import Settings
from tests.helpers.deploys import deploy_body, wait_for_file, wait_for_status
from tests.helpers.refusing_redis import RefusingRedis
from tests.helpers.server import LiveServer, register, start_server

Fault = Callable[[RefusingRedis], contextlib.AbstractContextManager[None]]
FAULTS: dict[str, tuple[Fault, str]] = {
    "disk_full": (RefusingRedis.disk_full, "MISCONF"),
    "out_of_memory": (RefusingRedis.out_of_memory, "OOM"),
}


@pytest.fixture
def refusing() -> Iterator[RefusingRedis]:
    with RefusingRedis() as server:
        yield server


@pytest.fixture
async def live(
    settings: Settings, refusing: RefusingRedis, project_dir: Path, tmp_path: Path
) -> Any:
    own = settings.with_overrides(redis_url=refusing.url)
    await register(own, project_dir)
    server = start_server(own, tmp_path / "server.log")
    try:
        yield server
    finally:
        server.stop()
    log = server.log()
    assert "Traceback" not in log and "never retrieved" not in log, log[-5000:]


async def job_state(client: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    reply = await client.get(f"/jobs/{job_id}")
    assert reply.status_code == 200, reply.text
    state: dict[str, Any] = reply.json()
    return state


async def wait_for_state(client: httpx.AsyncClient, job_id: str, done: Callable[[str], bool],
                         timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        state = await job_state(client, job_id)
        if done(state["status"]):
            return state
        assert time.monotonic() < deadline, f"job {job_id} still {state['status']}"
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_a_deploy_is_answered_503_and_healthz_names_redis(
    live: LiveServer, refusing: RefusingRedis, project_dir: Path, fault: str
) -> None:
    refuse, code = FAULTS[fault]
    async with live.client() as client:
        with refuse(refusing):
            reply = await client.post("/deploy", json=deploy_body(project_dir, "echo no"))
            assert reply.status_code == 503, reply.text
            assert reply.json()["code"] == "redis_unavailable"
            assert f"refusing writes ({code})" in reply.json()["error"]
            assert reply.headers["Retry-After"] == "5"

            health = await client.get("/healthz")
            assert health.status_code == 503, health.text
            assert health.json() == {"status": "degraded", "database": "ok",
                                     "redis": f"down: refusing writes ({code})"}

        # Writes are back: so is the server, without a restart.
        assert (await client.get("/healthz")).status_code == 200
        reply = await client.post("/deploy", json=deploy_body(project_dir, "echo yes"))
        assert reply.status_code == 200, reply.text
        state = await wait_for_state(client, reply.json()["job_id"], lambda s: s == "complete")
        assert state["status"] == "complete"
    assert live.process.poll() is None


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_a_job_running_while_writes_are_refused_ends_with_its_outcome(
    live: LiveServer, refusing: RefusingRedis, project_dir: Path, tmp_path: Path, fault: str
) -> None:
    refuse, _ = FAULTS[fault]
    gate, finished = tmp_path / "gate", tmp_path / "finished"
    command = (f"echo before; until [ -e {gate} ]; do sleep 0.05; done; "
               f"echo after; echo yes > {finished}")
    async with live.client() as client:
        reply = await client.post("/deploy", json=deploy_body(project_dir, command))
        assert reply.status_code == 200, reply.text
        job_id = reply.json()["job_id"]
        await wait_for_state(client, job_id, lambda s: s == "running")

        with refuse(refusing):
            gate.touch()
            await wait_for_file(finished)  # the commands ended while Redis refused writes
            # The runner meets the refusal: its log flush, its heartbeat and the
            # job's end are all writes. Reads still work: the job is still running.
            await asyncio.sleep(1.5)
            assert (await job_state(client, job_id))["status"] == "running"

        state = await wait_for_state(client, job_id, lambda s: s not in ("queued", "running"))
        assert (state["status"], state["reason"]) == ("complete", None), state
        logs = (await client.get(f"/jobs/{job_id}/logs")).json()
        assert "before\n" in logs["logs"] and "after\n" in logs["logs"], logs["logs"]

        # The runner is still there: the next deploy runs.
        reply = await client.post("/deploy", json=deploy_body(project_dir, "echo next"))
        assert reply.status_code == 200, reply.text
        await wait_for_state(client, reply.json()["job_id"], lambda s: s == "complete")
    assert live.process.poll() is None


async def test_a_project_added_while_redis_refuses_writes_is_saved_and_seen(
    live: LiveServer, refusing: RefusingRedis, tmp_path: Path
) -> None:
    """The project row is saved before Redis is told (a version bump the other
    processes watch): a refused bump must neither read as a failed command nor
    leave the running server blind to the new project."""
    app = tmp_path / "added-during-oom"
    app.mkdir()
    with refusing.out_of_memory():
        result = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "deployster", "project", "add", str(app)],
            env={**live.env}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "registered project 'added-during-oom'" in result.stdout
    assert "could not be told" in result.stderr and "Traceback" not in result.stderr
    async with live.client() as client:
        reply = await client.post("/deploy", json=deploy_body(app, "echo hi"))
        assert reply.status_code == 200, reply.text
        assert (await wait_for_status(client, reply.json()["job_id"]))["status"] == "complete"
