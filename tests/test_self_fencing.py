"""Self-fencing: with two servers on one Redis, a server frozen past its lock
TTL must not let its job's commands run beside the next job's.

Replayed from a fault-injection run: SIGSTOP of the server running job A for
twice the lock TTL let the other server start job B while A's commands kept
running (the fencing token stopped A's writes, not its processes). Every job
here stamps the wall clock into a file of its own every 20 ms while it runs;
its interval is [first stamp, last stamp], and no two jobs of a project may
overlap. 5 rounds of 4 projects = 20 trials, each stop at another moment.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from deployster.models import JobStatus
from deployster.service import Deployster
from deployster.settings import Settings
from tests.helpers.deploys import deploy_body, wait_for_status
from tests.helpers.server import LiveServer, start_server

TTL = 2.0
ROUNDS, PROJECTS = 5, 4

# Stamps until it is killed (A), or for a moment (B).
STAMP = 'while :; do date +%s.%N >> "$STAMPS/$DEPLOYSTER_JOB_ID"; sleep 0.02; done'
SHORT = ('for i in 1 2 3 4 5 6 7 8 9 10; do date +%s.%N >> "$STAMPS/$DEPLOYSTER_JOB_ID"; '
         'sleep 0.02; done')


def interval(stamps: Path, job_id: str) -> tuple[float, float] | None:
    path = stamps / job_id
    if not path.exists():
        return None
    values = [float(line) for line in path.read_text().split() if line]
    return (min(values), max(values)) if values else None


@pytest.fixture
def servers() -> Iterator[list[LiveServer]]:
    started: list[LiveServer] = []
    yield started
    for live in started:
        if live.process.poll() is None:
            os.kill(live.process.pid, signal.SIGCONT)
            live.stop(signal.SIGKILL)


async def until_stamping(stamps: Path, job_id: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while interval(stamps, job_id) is None:
        assert time.monotonic() < deadline, f"job {job_id} never started stamping"
        await asyncio.sleep(0.02)


async def test_a_frozen_server_never_runs_its_job_beside_the_next(
    settings: Settings, core: Deployster, tmp_path: Path, servers: list[LiveServer]
) -> None:
    stamps = tmp_path / "stamps"
    stamps.mkdir()
    env = {"STAMPS": str(stamps)}
    s1 = start_server(settings, tmp_path / "s1.log", extra_env=env)
    servers.append(s1)
    s2 = start_server(settings, tmp_path / "s2.log", extra_env=env)
    servers.append(s2)
    projects = []
    for n in range(PROJECTS):
        path = tmp_path / f"app{n}"
        path.mkdir()
        projects.append(await core.projects.add(str(path), lock_ttl=TTL))
    rng = random.Random(17)
    trials: list[tuple[str, str]] = []
    async with s1.client() as c1, s2.client() as c2:
        for round_ in range(ROUNDS):
            firsts = []
            for project in projects:
                reply = await c1.post("/deploy", json=deploy_body(
                    project.path, STAMP, commit=f"a{round_}"))
                assert reply.status_code == 200, reply.text
                firsts.append(reply.json()["job_id"])
            for job_id in firsts:
                await until_stamping(stamps, job_id)
            seconds = []
            for project in projects:
                reply = await c2.post("/deploy", json=deploy_body(
                    project.path, SHORT, commit=f"b{round_}"))
                assert reply.json().get("queued"), reply.text
                seconds.append(reply.json()["job_id"])
            # Freeze S1 at some moment of its renewal cycle, for twice the TTL.
            await asyncio.sleep(rng.uniform(0, TTL / 3))
            s1.process.send_signal(signal.SIGSTOP)
            try:
                await asyncio.sleep(2 * TTL)
            finally:
                s1.process.send_signal(signal.SIGCONT)
            for first, second in zip(firsts, seconds, strict=True):
                done = await wait_for_status(c2, second, timeout=30)
                assert done["status"] == "complete", done
                ended = await wait_for_status(c2, first, timeout=30)
                assert (ended["status"], ended["reason"]) == ("failed", "lock_lost"), ended
                trials.append((first, second))
            await asyncio.sleep(0.5)  # a stale runner that resumed would stamp again now
        # A resumed runner never starts anything again either.
        for first, _ in trials:
            job = await core.job(first)
            assert job is not None and job.status is JobStatus.FAILED
    overlaps = []
    for first, second in trials:
        a, b = interval(stamps, first), interval(stamps, second)
        assert a is not None and b is not None
        if a[1] >= b[0]:
            overlaps.append(f"{first} ran until {a[1]:.3f}, {second} started {b[0]:.3f}")
    assert len(trials) == ROUNDS * PROJECTS
    assert overlaps == [], overlaps
    assert s1.process.poll() is None and s2.process.poll() is None
