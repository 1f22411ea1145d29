"""Exactly once when a Redis reply is lost: every state-changing script run
again by a retry answers what it did the first time.

A ``RedisProxy`` (``tests/helpers/redis_proxy.py``) sits between a served
deployster and Redis and drops the reply to one chosen script after Redis ran
it, cutting the connection: redis-py reconnects and sends the same call again.
Replayed from a fault-injection run: a lost reply to the finish-and-hand-off
script stranded the next job ``running`` with no process (9 of 10 trials); a
lost reply to the enqueue script answered "queued" on an idle project, and the
job then waited out the whole lock TTL behind its own claim.

Every job appends its name to one shared file, so "ran exactly once" is read
off what the commands did, not off deployster's own records.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from deployster.models import JobStatus
from deployster.redis_scripts import CANCEL, CLAIM, ENQUEUE, FINISH, STATUS_READ
from deployster.service import DeployRequest, Deployster
from tests.helpers.deploys import deploy_body, wait_for_status
from tests.helpers.redis_proxy import RedisProxy, command, script
from tests.helpers.server import LiveServer

TRIALS = 10


def ran(record: Path) -> list[str]:
    return record.read_text().split() if record.exists() else []


async def finish_within(client: httpx.AsyncClient, job_id: str, seconds: float = 20) -> str:
    """The job's end status; "never" when it does not end in time (a stranded
    job would end only when its 600 s lock TTL runs out)."""
    try:
        return str((await wait_for_status(client, job_id, timeout=seconds))["status"])
    except AssertionError:
        return "never"


@pytest.fixture
async def served(core: Deployster, proxied: tuple[LiveServer, RedisProxy],
                 project_dir: Path) -> tuple[LiveServer, RedisProxy]:
    """The server behind the Redis proxy, with ``project_dir`` registered
    (default lock TTL: 600 s)."""
    await core.projects.add(str(project_dir))
    return proxied


async def test_a_lost_reply_to_the_hand_off_neither_strands_nor_repeats_the_next_job(
    served: tuple[LiveServer, RedisProxy], project_dir: Path, tmp_path: Path
) -> None:
    live, proxy = served
    record, gate = tmp_path / "ran", tmp_path / "gate"
    async with live.client() as client:
        for trial in range(TRIALS):
            gate.unlink(missing_ok=True)
            first = (await client.post("/deploy", json=deploy_body(
                project_dir, f"while [ ! -e {gate} ]; do sleep 0.02; done; echo a{trial} >> "
                f"{record}", commit=f"a{trial}"))).json()["job_id"]
            second = (await client.post("/deploy", json=deploy_body(
                project_dir, f"echo b{trial} >> {record}", commit=f"b{trial}"))).json()
            assert second.get("queued"), second
            trap = proxy.lose_reply(script(FINISH.source))  # A's end: recorded, its reply lost
            gate.touch()
            assert await asyncio.to_thread(trap.wait, 20), "the finish script never ran"
            ended = await wait_for_status(client, first, timeout=20)
            # The runner's last batch of output goes in with the finish: once,
            # however often the finish is sent.
            assert ended["status"] == "complete"
            assert str(ended["logs"]).count("[deployster] job complete") == 1, ended["logs"]
            assert await finish_within(client, second["job_id"]) == "complete", (
                f"trial {trial}: the job handed the lock was stranded")
    assert ran(record) == [f"{x}{n}" for n in range(TRIALS) for x in "ab"]


async def test_a_lost_reply_to_the_enqueue_on_an_idle_project_starts_the_job_at_once(
    served: tuple[LiveServer, RedisProxy], project_dir: Path, tmp_path: Path
) -> None:
    live, proxy = served
    record = tmp_path / "ran"
    async with live.client() as client:
        for trial in range(TRIALS):
            trap = proxy.lose_reply(script(ENQUEUE.source))
            reply = await client.post("/deploy", json=deploy_body(
                project_dir, f"echo j{trial} >> {record}", commit=f"c{trial}"))
            assert trap.fired
            assert reply.status_code == 200, reply.text
            # The lock was free: the retried call answers "started", as the first did.
            assert reply.json() == {"job_id": reply.json()["job_id"]}, reply.json()
            assert await finish_within(client, reply.json()["job_id"]) == "complete"
    assert ran(record) == [f"j{n}" for n in range(TRIALS)]


async def test_a_lost_reply_to_a_claim_still_runs_the_job_once(
    core: Deployster, served: tuple[LiveServer, RedisProxy], project_dir: Path,
    tmp_path: Path,
) -> None:
    """A job queued by someone who runs no dispatcher (the dashboard's
    redeploy) is claimed by the server through the claim script."""
    live, proxy = served
    record = tmp_path / "ran"
    async with live.client() as client:
        for trial in range(TRIALS):
            trap = proxy.lose_reply(script(CLAIM.source))
            result = await core.submit(DeployRequest(
                cd=str(project_dir), commands=deploy_body(
                    project_dir, f"echo q{trial} >> {record}")["commands"],  # type: ignore[arg-type]
                commit_hash=f"q{trial}", ref_name="main"), run_here=False)
            assert await asyncio.to_thread(trap.wait, 20), "the claim script never ran"
            assert await finish_within(client, result.job_id) == "complete"
    assert ran(record) == [f"q{n}" for n in range(TRIALS)]


async def test_a_lost_reply_to_a_cancel_still_answers_cancelled(
    served: tuple[LiveServer, RedisProxy], project_dir: Path, tmp_path: Path
) -> None:
    live, proxy = served
    gate = tmp_path / "gate"
    cancel = script(CANCEL.source)
    async with live.client() as client:
        running = (await client.post("/deploy", json=deploy_body(
            project_dir, f"while [ ! -e {gate} ]; do sleep 0.02; done"))).json()["job_id"]
        waiting = (await client.post("/deploy", json=deploy_body(
            project_dir, "true", commit="w"))).json()["job_id"]
        trap = proxy.lose_reply(cancel)
        reply = await client.post(f"/jobs/{waiting}/cancel")
        assert trap.fired
        # Not "409 already finished": the retry answers what the first call did.
        assert reply.status_code == 200, reply.text
        assert (reply.json()["status"], reply.json()["reason"]) == ("failed", "cancelled")
        gate.touch()
        assert await finish_within(client, running) == "complete"


async def test_a_lost_reply_to_a_status_read_loses_and_repeats_no_line(
    core: Deployster, served: tuple[LiveServer, RedisProxy], project_dir: Path,
) -> None:
    """The seed's /status moves a cursor: a read whose reply was lost must not
    have moved it for good, or the client never sees those lines."""
    live, proxy = served
    status_read = script(STATUS_READ.source)
    printer = "for i in $(seq 1 60); do echo line-$i; sleep 0.05; done"
    async with live.client() as client:
        job_id = (await client.post("/deploy", json=deploy_body(
            project_dir, printer))).json()["job_id"]
        seen: list[str] = []
        deadline = time.monotonic() + 60
        lost = 0
        while time.monotonic() < deadline:
            if lost < 5 and len(seen) > 5 * lost:
                proxy.lose_reply(status_read)
                lost += 1
            reply = (await client.get(f"/status/{job_id}")).json()
            seen.append(reply["logs"])
            if reply["status"] in ("complete", "failed"):
                break
            await asyncio.sleep(0.1)
    lines = [line for line in "".join(seen).splitlines() if line.startswith("line-")]
    assert lines == [f"line-{i}" for i in range(1, 61)]
    job = await core.job(job_id)
    assert job is not None and job.status is JobStatus.COMPLETE


async def test_a_job_whose_start_meets_a_redis_outage_starts_once_redis_answers(
    served: tuple[LiveServer, RedisProxy], project_dir: Path, tmp_path: Path
) -> None:
    """The enqueue claimed the job for this server; reading its record to start
    it fails (every reply lost for 2 s). It must start once Redis answers, not
    sit "running" with no process until its 600 s lock expires."""
    live, proxy = served
    record = tmp_path / "ran"
    async with live.client() as client:
        window = proxy.lose_replies(command("HGETALL"), 2.0)
        reply = await client.post("/deploy", json=deploy_body(
            project_dir, f"echo once >> {record}"))
        assert reply.json() == {"job_id": reply.json()["job_id"]}, reply.text
        assert await asyncio.to_thread(window.wait, 10)
        assert await finish_within(client, reply.json()["job_id"], 30) == "complete"
    assert ran(record) == ["once"]
    assert "never retrieved" not in live.log()
