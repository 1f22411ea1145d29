"""How long will I wait? A queued job's start estimate in ``/status`` and
``GET /jobs/<id>`` (deployster/estimate.py), over real HTTP
against a live server: none without history; with it, the running job's rest
plus the median of the project's recent complete runs per job ahead."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from deployster import store
from deployster.estimate import DURATIONS_KEPT
from deployster.models import Project
from deployster.service import Deployster
from deployster.settings import Settings
from tests.helpers.deploys import deploy_body, history_row, wait_for_status
from tests.helpers.server import LiveServer, serving


@pytest.fixture
def server(settings: Settings, tmp_path: Path) -> Iterator[LiveServer]:
    yield from serving(settings, tmp_path)


async def deploy(client: httpx.AsyncClient, cd: Path, *commands: str) -> str:
    reply = await client.post("/deploy", json=deploy_body(cd, *commands))
    assert reply.status_code == 200, reply.text
    return str(reply.json()["job_id"])


def gated(gate: Path) -> str:
    """A command that holds the lock until ``gate`` exists."""
    return f"while [ ! -e {gate} ]; do sleep 0.05; done"


async def status_of(client: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    reply: dict[str, Any] = (await client.get(f"/status/{job_id}")).json()
    return reply


async def wait_running(client: httpx.AsyncClient, job_id: str) -> float:
    """Once ``job_id`` runs: how long it has run by its record (seconds)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        record = (await client.get(f"/jobs/{job_id}")).json()
        if record["status"] == "running":
            return (datetime.now().astimezone() - _at(record["started_at"])).total_seconds()
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} did not start")


def _at(iso: str) -> datetime:
    return datetime.fromisoformat(iso.replace("Z", "+00:00"))


async def run_time(client: httpx.AsyncClient, job_id: str) -> float:
    """A finished job's run time as its record says (seconds)."""
    record = (await client.get(f"/jobs/{job_id}")).json()
    return (_at(record["finished_at"]) - _at(record["started_at"])).total_seconds()


async def test_queued_jobs_are_told_when_they_start_from_the_projects_recent_runs(
    server: LiveServer, core: Deployster, project_dir: Path, tmp_path: Path
) -> None:
    project: Project = await core.projects.add(str(project_dir))
    async with server.client() as client:
        # No history: a place in the queue, no guess.
        first_gate = tmp_path / "gate-1"
        holder = await deploy(client, project_dir, gated(first_gate))
        await wait_running(client, holder)
        queued = await deploy(client, project_dir, "true")
        status = await status_of(client, queued)
        assert status["status"] == "queued" and status["position"] == 1
        assert "estimated_start_in" not in status
        record = (await client.get(f"/jobs/{queued}")).json()
        assert record["position"] == 1 and record["estimated_start_in"] is None
        first_gate.touch()
        await wait_for_status(client, queued)

        # Runs of different lengths: the estimate follows their median, which
        # one slow run does not drag up as a mean would.
        runs = [await deploy(client, project_dir, f"sleep {s}") for s in (0.1, 0.4, 2.5)]
        for job_id in runs:
            assert (await wait_for_status(client, job_id))["status"] == "complete"
        ended = [holder, queued, *runs]
        times = [await run_time(client, j) for j in ended]
        typical = statistics.median(times)
        assert abs(typical - statistics.mean(times)) > 0.2  # the two would differ

        gate = tmp_path / "gate-2"
        holder = await deploy(client, project_dir, gated(gate))
        ran = await wait_running(client, holder)
        # (different commands: an identical request would be deduplicated)
        first, second = [await deploy(client, project_dir, f"echo {n}") for n in (1, 2)]
        one, two = await status_of(client, first), await status_of(client, second)
        assert (one["position"], two["position"]) == (1, 2)
        # Position 1 waits for what the running job has left of a typical run;
        # position 2 for one typical run more.
        assert 0 <= one["estimated_start_in"] <= typical - ran + 0.2
        assert two["estimated_start_in"] - one["estimated_start_in"] == \
            pytest.approx(typical, abs=0.2)
        record = (await client.get(f"/jobs/{second}")).json()
        assert record["estimated_start_in"] == pytest.approx(two["estimated_start_in"], abs=0.3)

        # The running job past a typical run: the next one may start any moment.
        await asyncio.sleep(max(0.0, typical - ran) + 0.2)
        one, two = await status_of(client, first), await status_of(client, second)
        assert one["estimated_start_in"] == 0
        assert two["estimated_start_in"] == pytest.approx(typical, abs=0.2)

        # Redis without the run times (an upgrade, lost data): learnt again
        # from the SQL history, the same estimate.
        for job_id in ended:
            await history_row(core, job_id)  # the ended ones are in SQL
        await core.redis.delete(core.keys.durations(project.id))
        assert "estimated_start_in" not in await status_of(client, second)
        await core.queue.learn_durations(
            await store.select_recent_run_times(core.db, DURATIONS_KEPT))
        again = await status_of(client, second)
        assert again["estimated_start_in"] == pytest.approx(typical, abs=0.2)

        gate.touch()
        for job_id in (holder, first, second):
            assert (await wait_for_status(client, job_id))["status"] == "complete"
