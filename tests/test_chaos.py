"""Chaos tests: real servers in subprocesses (docs/runner.md#crash-recovery,
docs/runner.md#the-lease-guard-self-fencing, docs/runner.md#shutdown).

A server is ``kill -9``-ed mid-deploy, frozen with SIGSTOP past its lock TTL,
cut off from a Redis that is stopped and started again, and sent SIGTERM with
a running and a queued job. Every assertion is about what a user sees: the
``/status`` replies, the job's log, the job's processes, the lock.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from deployster.embedded_redis import ensure_embedded_redis, stop_embedded_redis
from deployster.logstream import read_full_log
from deployster.models import JobStatus
from deployster.service import Deployster
from deployster.settings import Settings
from tests.helpers.deploys import deploy_body, wait_for_file, wait_for_status
from tests.helpers.processes import pid_gone
from tests.helpers.server import LiveServer, register, start_server

# ----------------------------------------------------------------- helpers


async def wait_until_gone(pid: int, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pid_gone(pid):
            return True
        await asyncio.sleep(0.1)
    return pid_gone(pid)


async def wait_for_job(core: Deployster, job_id: str, states: set[JobStatus],
                       timeout: float = 30) -> JobStatus:
    """Wait, reading Redis directly (no server needed), for one of ``states``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = await core.jobs.get(job_id)
        if job is not None and job.status in states:
            return job.status
        await asyncio.sleep(0.05)
    job = await core.jobs.get(job_id)
    raise AssertionError(f"job {job_id} is {job and job.status}, not one of {states}")


async def status_of(client: httpx.AsyncClient, job_id: str) -> dict[str, object]:
    reply = await client.get(f"/status/{job_id}")
    assert reply.status_code == 200, reply.text
    body: dict[str, object] = reply.json()
    return body


async def deploy(client: httpx.AsyncClient, cd: Path, *commands: str) -> str:
    reply = await client.post("/deploy", json=deploy_body(cd, *commands))
    assert reply.status_code == 200, reply.text
    return str(reply.json()["job_id"])


@pytest.fixture
def live_servers() -> Iterator[list[LiveServer]]:
    """Servers a test starts; any still running at the end are killed."""
    started: list[LiveServer] = []
    yield started
    for live in started:
        if live.process.poll() is None:
            try:
                os.kill(live.process.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
            live.stop(signal.SIGKILL)


# ------------------------------------------------- 1. kill -9 mid-deploy


async def test_kill_9_mid_deploy_interrupts_the_job_and_runs_the_queue_once(
    settings: Settings, core: Deployster, project_dir: Path, tmp_path: Path,
    live_servers: list[LiveServer],
) -> None:
    await core.projects.add(str(project_dir))  # default lock TTL: 600 s
    assert settings.default_lock_ttl >= 600
    pid_file, shared = tmp_path / "sleep.pid", tmp_path / "shared.txt"

    first = start_server(settings, tmp_path / "s1.log")
    live_servers.append(first)
    async with first.client() as client:
        running = await deploy(client, project_dir, f"sleep 60 & echo $! > {pid_file}; wait")
        queued = [await deploy(client, project_dir, f"echo queued-{n} >> {shared}")
                  for n in (1, 2)]
        for job_id in queued:
            assert (await status_of(client, job_id))["status"] == "queued"
    sleep_pid = int(await wait_for_file(pid_file))
    assert not pid_gone(sleep_pid)

    first.process.send_signal(signal.SIGKILL)
    first.process.wait(10)
    assert not pid_gone(sleep_pid), "the job's process outlives the server's kill -9"

    second = start_server(settings, tmp_path / "s2.log")
    live_servers.append(second)
    async with second.client() as client:
        interrupted = await wait_for_status(client, running, timeout=30)
        finals = [await wait_for_status(client, job_id, timeout=30) for job_id in queued]
    assert interrupted["status"] == "failed"
    assert interrupted["reason"] == "interrupted"
    assert await wait_until_gone(sleep_pid), "the orphaned `sleep 60` is still running"
    assert [f["status"] for f in finals] == ["complete", "complete"]
    assert shared.read_text().splitlines() == ["queued-1", "queued-2"]
    second.stop()


# --------------------------------------------- 2. lost lock and fencing


async def test_sigstop_past_the_ttl_loses_the_lock_and_fences_the_stale_runner(
    settings: Settings, core: Deployster, project_dir: Path, tmp_path: Path,
    live_servers: list[LiveServer],
) -> None:
    project = await core.projects.add(str(project_dir), lock_ttl=2)
    trace = tmp_path / "a-trace.txt"
    a_script = (f"for i in $(seq 1 400); do echo a-$i >> {trace}; echo a-$i; "
                "sleep 0.05; done")

    s1 = start_server(settings, tmp_path / "s1.log")
    live_servers.append(s1)
    s2 = start_server(settings, tmp_path / "s2.log")
    live_servers.append(s2)

    async with s1.client() as c1, s2.client() as c2:
        job_a = await deploy(c1, project_dir, a_script)
        assert (await status_of(c1, job_a))["status"] == "running"
        deadline = time.monotonic() + 15
        while "a-5\n" not in await read_full_log(core.redis, core.keys, job_a):
            assert time.monotonic() < deadline, "A's output does not reach its log"
            await asyncio.sleep(0.05)
        job_b = await deploy(c2, project_dir, "echo b-ran")
        assert (await status_of(c2, job_b))["status"] == "queued"

        s1.process.send_signal(signal.SIGSTOP)
        try:
            # Anything A prints from now on could only reach its log through
            # S1 after SIGCONT, i.e. after B took the lock: fencing must drop it.
            printed_before_stop = len(trace.read_text().splitlines())
            # S2 claims B once A's 2 s lock expires; S1's runner key (10 s TTL)
            # still names a live process, so this is not crash recovery.
            b_started = False
            deadline = time.monotonic() + 6
            while time.monotonic() < deadline:
                state = (await c2.get(f"/status/{job_b}")).json()["status"]
                b_started = b_started or state != "queued"
                await asyncio.sleep(0.1)
        finally:
            s1.process.send_signal(signal.SIGCONT)
        assert b_started, "B did not start while S1 was frozen past the lock TTL"

        final_b = await wait_for_status(c2, job_b, timeout=30)
        final_a = await wait_for_status(c2, job_a, timeout=30)
        assert final_b["status"] == "complete"
        assert final_a["status"] == "failed"
        assert final_a["reason"] == "lock_lost"

        # S1 woke up with A's output buffered and its process still printing:
        # a few seconds later A is still failed/lock_lost, B still complete.
        await asyncio.sleep(3)
        assert s1.process.poll() is None, "S1 exited after SIGCONT"
        again_a = await status_of(c1, job_a)
        again_b = await status_of(c1, job_b)
    assert (again_a["status"], again_a.get("reason")) == ("failed", "lock_lost")
    assert again_b["status"] == "complete"

    log_a = await read_full_log(core.redis, core.keys, job_a)
    log_b = await read_full_log(core.redis, core.keys, job_b)
    assert "b-ran" in log_b
    assert "a-" not in log_b
    a_lines = [int(line[2:]) for line in log_a.splitlines()
               if line.startswith("a-") and line[2:].isdigit()]
    assert a_lines[:5] == [1, 2, 3, 4, 5], log_a
    assert max(a_lines) <= printed_before_stop, (
        f"A's log has line a-{max(a_lines)}, printed after S1 was frozen "
        f"(only {printed_before_stop} before): a stale write got through"
    )
    owner = (await core.lock.state(project.id)).owner
    assert owner != job_a


# --------------------------------------------------- 3. Redis outage


async def test_a_job_runs_through_a_redis_outage_and_keeps_its_output(
    settings: Settings, project_dir: Path, tmp_path: Path, own_redis_dir: Path,
    live_servers: list[LiveServer],
) -> None:
    url = ensure_embedded_redis(own_redis_dir)
    outage_settings = settings.with_overrides(redis_url=url)
    await register(outage_settings, project_dir)

    live = start_server(outage_settings, tmp_path / "server.log")
    live_servers.append(live)
    script = "for i in $(seq 1 30); do echo line-$i; sleep 0.2; done"
    async with live.client() as client:
        job_id = await deploy(client, project_dir, script)
        await asyncio.sleep(1)

        stop_embedded_redis(own_redis_dir)
        try:
            refused = await client.post("/deploy", json=deploy_body(project_dir, "echo x"))
            assert refused.status_code == 503
            body = refused.json()
            assert body.get("code") and body.get("error")
            health = await client.get("/healthz")
            assert health.status_code == 503
            assert str(health.json()["redis"]).startswith("down")
            await asyncio.sleep(2)
            assert live.process.poll() is None, "the server exited during the outage"
        finally:
            ensure_embedded_redis(own_redis_dir)

        deadline = time.monotonic() + 30
        while (await client.get("/healthz")).status_code != 200:
            assert time.monotonic() < deadline, "the server did not reconnect to Redis"
            await asyncio.sleep(0.1)
        deadline = time.monotonic() + 30
        while True:
            reply = await client.get(f"/status/{job_id}")
            if reply.status_code == 200 and reply.json()["status"] in ("complete", "failed"):
                final = reply.json()
                break
            assert time.monotonic() < deadline, f"job still {reply.text}"
            await asyncio.sleep(0.1)
    assert final["status"] == "complete"
    assert live.process.poll() is None

    reader = await Deployster.open(outage_settings)
    try:
        text = await read_full_log(reader.redis, reader.keys, job_id)
    finally:
        await reader.close()
    lines = [line for line in text.splitlines() if line.startswith("line-")]
    assert lines == [f"line-{i}" for i in range(1, 31)]
    live.stop()


# ------------------------------------------------ 4. graceful shutdown


async def test_sigterm_lets_the_running_job_finish_and_keeps_the_queue(
    settings: Settings, core: Deployster, project_dir: Path, tmp_path: Path,
    live_servers: list[LiveServer],
) -> None:
    await core.projects.add(str(project_dir))
    graceful = settings.with_overrides(shutdown_grace=10)
    first = start_server(graceful, tmp_path / "s1.log")
    live_servers.append(first)
    async with first.client() as client:
        running = await deploy(client, project_dir, "sleep 2; echo done")
        queued = await deploy(client, project_dir, "echo next")
        assert (await status_of(client, queued))["status"] == "queued"

    assert first.stop(signal.SIGTERM, timeout=20) == 0, "SIGTERM must end the server cleanly"
    assert await wait_for_job(core, running, {JobStatus.COMPLETE, JobStatus.FAILED}) \
        is JobStatus.COMPLETE
    assert "done" in await read_full_log(core.redis, core.keys, running)
    await asyncio.sleep(1)
    job = await core.jobs.get(queued)
    assert job is not None and job.status is JobStatus.QUEUED

    second = start_server(graceful, tmp_path / "s2.log")
    live_servers.append(second)
    async with second.client() as client:
        final = await wait_for_status(client, queued, timeout=30)
    assert final["status"] == "complete"
    assert "next" in str(final["logs"])
    second.stop()


async def test_sigterm_past_the_grace_interrupts_the_running_job(
    settings: Settings, core: Deployster, project_dir: Path, tmp_path: Path,
    live_servers: list[LiveServer],
) -> None:
    await core.projects.add(str(project_dir))
    pid_file = tmp_path / "sleep.pid"
    live = start_server(settings.with_overrides(shutdown_grace=1), tmp_path / "s.log")
    live_servers.append(live)
    async with live.client() as client:
        job_id = await deploy(client, project_dir, f"sleep 30 & echo $! > {pid_file}; wait")
    sleep_pid = int(await wait_for_file(pid_file))

    assert live.stop(signal.SIGTERM, timeout=15) == 0, "SIGTERM must end the server cleanly"
    assert await wait_for_job(core, job_id, {JobStatus.COMPLETE, JobStatus.FAILED}) \
        is JobStatus.FAILED
    job = await core.jobs.get(job_id)
    assert job is not None and job.reason == "interrupted"
    assert await wait_until_gone(sleep_pid), "the interrupted job's `sleep 30` still runs"


# ------------------------------------- kill -9 right after a command starts


async def test_after_kill_9_the_orphan_is_gone_before_the_queued_job_starts(
    settings: Settings, core: Deployster, project_dir: Path, tmp_path: Path,
    live_servers: list[LiveServer],
) -> None:
    """The server is killed the moment the command has started (before it may
    have recorded the command's process group): recovery must still end the
    orphan, and see it gone, before the next job runs. Four trials."""
    await core.projects.add(str(project_dir))
    for trial in range(4):
        pid_file, saw = tmp_path / f"pid-{trial}", tmp_path / f"saw-{trial}"
        server = start_server(settings, tmp_path / f"s{trial}.log")
        live_servers.append(server)
        async with server.client() as client:
            first = await deploy(client, project_dir, f"echo $$ > {pid_file} && exec sleep 120")
            deadline = time.monotonic() + 20
            while not pid_file.exists():  # kill -9 at once: no time to record anything
                assert time.monotonic() < deadline
                await asyncio.sleep(0.001)
            server.process.send_signal(signal.SIGKILL)
            server.process.wait(10)
        orphan = int(await wait_for_file(pid_file))
        restarted = start_server(settings, tmp_path / f"r{trial}.log")
        live_servers.append(restarted)
        async with restarted.client() as client:
            # Gone, or a zombie (dead, not yet reaped by init).
            second = await deploy(
                client, project_dir,
                f"case $(cut -d' ' -f3 /proc/{orphan}/stat 2>/dev/null) in ''|Z) echo gone;; "
                f"*) echo alive;; esac > {saw}")
            ended = await wait_for_status(client, first, timeout=30)
            assert ended["reason"] == "interrupted"
            assert (await wait_for_status(client, second, timeout=30))["status"] == "complete"
        assert saw.read_text().strip() == "gone", (
            f"trial {trial}: the orphan outlived recovery", ended["logs"])
        assert await wait_until_gone(orphan)
        restarted.stop()
