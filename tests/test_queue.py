"""The per-project FIFO and the lock hand-off (docs/redis.md#the-queue), against a real Redis,
then over HTTP: serial within a project, parallel across projects, and queued
jobs surviving a server restart."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from deployster import overview
from deployster.errors import QueueFull
from deployster.ids import new_job_id
from deployster.models import Job, JobStatus
from deployster.service import Deployster
from deployster.settings import Settings
from tests.helpers.deploys import deploy_body, wait_for_status
from tests.helpers.locks import hold_lock
from tests.helpers.server import LiveServer, start_server

PROJECT = 17


def make_job(
    project_id: int = PROJECT, *, ttl_ms: int = 60_000, commit: str | None = None,
    ref: str = "main",
) -> Job:
    job_id = new_job_id()
    return Job(
        id=job_id,
        project_id=project_id,
        project=f"p{project_id}",
        cd="/tmp",
        commands=["true", "supervisorctl restart p"],
        # A distinct commit per job unless asked: identical queued requests dedupe.
        commit_hash=commit or job_id.lower(),
        ref_name=ref,
        lock_ttl_ms=ttl_ms,
    )


async def status_of(core: Deployster, job_id: str) -> JobStatus:
    job = await core.jobs.get(job_id)
    assert job is not None
    return job.status


# ------------------------------------------------------------ JobQueue itself


async def test_claims_come_out_in_fifo_order(core: Deployster) -> None:
    jobs = [make_job() for _ in range(4)]
    for job in jobs:
        result = await core.queue.enqueue(job, runner=None)
        assert result.started is None
    assert await core.queue.queued_ids(PROJECT) == [j.id for j in jobs]
    claimed = []
    for _ in jobs:
        job_id = await core.queue.claim(PROJECT, "r1")
        assert job_id is not None
        claimed.append(job_id)
        assert (await core.lock.state(PROJECT)).owner == job_id
        assert await core.lock.release(PROJECT, job_id)
    assert claimed == [j.id for j in jobs]
    assert await core.queue.claim(PROJECT, "r1") is None
    assert await core.queue.length(PROJECT) == 0
    assert PROJECT not in await core.queue.projects_with_queue()


async def test_enqueue_with_runner_starts_only_when_the_lock_is_free(
    core: Deployster,
) -> None:
    first, second = make_job(ttl_ms=45_000), make_job()
    a = await core.queue.enqueue(first, runner="r1")
    assert a.started == first.id and not a.queued and a.position == 0
    record = await core.jobs.get(first.id)
    assert record is not None
    assert record.status is JobStatus.RUNNING and record.fence >= 1
    state = await core.lock.state(PROJECT)
    assert state.owner == first.id
    assert state.ttl_ms is not None and 0 < state.ttl_ms <= 45_000  # the job's own TTL
    assert await core.jobs.running() == {first.id: "r1"}

    b = await core.queue.enqueue(second, runner="r1")
    assert b.started is None and b.queued and b.position == 1
    assert await status_of(core, second.id) is JobStatus.QUEUED
    assert (await core.lock.state(PROJECT)).owner == first.id


async def test_enqueue_with_runner_starts_the_oldest_queued_job(core: Deployster) -> None:
    older, newer = make_job(), make_job()
    await core.queue.enqueue(older, runner=None)
    result = await core.queue.enqueue(newer, runner="r1")
    assert result.started == older.id
    assert result.queued and result.position == 1
    assert await status_of(core, older.id) is JobStatus.RUNNING
    assert await status_of(core, newer.id) is JobStatus.QUEUED


async def test_enqueue_without_runner_never_claims(core: Deployster) -> None:
    job = make_job()
    result = await core.queue.enqueue(job, runner=None)
    assert result.started is None and result.queued and result.position == 1
    assert (await core.lock.state(PROJECT)).owner is None
    assert await status_of(core, job.id) is JobStatus.QUEUED
    assert await core.queue.queued_ids(PROJECT) == [job.id]
    assert PROJECT in await core.queue.projects_with_queue()


async def test_claim_while_the_lock_is_held_returns_none(core: Deployster) -> None:
    assert await hold_lock(core, PROJECT, "operator", 60_000)
    job = make_job()
    await core.queue.enqueue(job, runner="r1")
    assert await core.queue.claim(PROJECT, "r1") is None
    assert await core.queue.queued_ids(PROJECT) == [job.id]
    assert await status_of(core, job.id) is JobStatus.QUEUED
    assert (await core.lock.state(PROJECT)).owner == "operator"
    # Freed, it goes.
    assert await core.lock.release(PROJECT, "operator")
    assert await core.queue.claim(PROJECT, "r1") == job.id


async def test_finish_releases_the_lock_and_starts_the_next_in_one_call(
    core: Deployster,
) -> None:
    first, second, third = make_job(), make_job(), make_job()
    for job in (first, second, third):
        await core.queue.enqueue(job, runner="r1")
    running = await core.jobs.get(first.id)
    assert running is not None and running.status is JobStatus.RUNNING

    result = await core.queue.finish(
        running, JobStatus.FAILED, reason="command_failed", exit_code=3, runner="r1"
    )
    assert result.ended and result.next_job == second.id
    ended = await core.jobs.get(first.id)
    assert ended is not None
    assert ended.status is JobStatus.FAILED
    assert ended.reason == "command_failed" and ended.exit_code == 3
    assert ended.finished_at
    assert (await core.lock.state(PROJECT)).owner == second.id
    assert await status_of(core, second.id) is JobStatus.RUNNING
    assert await core.queue.queued_ids(PROJECT) == [third.id]
    assert await core.jobs.running() == {second.id: "r1"}
    nxt = await core.jobs.get(second.id)
    assert nxt is not None and nxt.fence > running.fence
    # The next job's record comes with the answer, as claimed: its runner
    # starts it without reading it again.
    assert result.next_record == await core.redis.hgetall(core.keys.job(second.id))


async def test_finish_without_runner_frees_the_lock_and_leaves_the_queue(
    core: Deployster,
) -> None:
    first, second = make_job(), make_job()
    await core.queue.enqueue(first, runner="r1")
    await core.queue.enqueue(second, runner=None)
    running = await core.jobs.get(first.id)
    assert running is not None
    result = await core.queue.finish(running, JobStatus.COMPLETE, runner=None)
    assert result.ended and result.next_job is None and result.next_record is None
    assert (await core.lock.state(PROJECT)).owner is None
    assert await status_of(core, first.id) is JobStatus.COMPLETE
    assert await core.queue.queued_ids(PROJECT) == [second.id]


async def test_finish_with_a_stale_fence_changes_nothing(core: Deployster) -> None:
    first, second = make_job(), make_job()
    await core.queue.enqueue(first, runner="r1")
    await core.queue.enqueue(second, runner="r1")
    running = await core.jobs.get(first.id)
    assert running is not None
    stale = await core.jobs.get(first.id)
    assert stale is not None
    stale.fence = running.fence - 1

    result = await core.queue.finish(stale, JobStatus.FAILED, reason="lock_lost", runner="r2")
    assert not result.ended and result.next_job is None
    after = await core.jobs.get(first.id)
    assert after is not None
    assert after.status is JobStatus.RUNNING and after.reason is None
    assert (await core.lock.state(PROJECT)).owner == first.id
    assert await core.queue.queued_ids(PROJECT) == [second.id]
    assert await core.jobs.running() == {first.id: "r1"}

    # A second finish of an already-ended job is refused the same way.
    assert (await core.queue.finish(running, JobStatus.COMPLETE, runner="r1")).ended
    again = await core.queue.finish(running, JobStatus.FAILED, runner="r1")
    assert not again.ended and again.next_job is None
    assert await status_of(core, first.id) is JobStatus.COMPLETE


async def test_a_job_no_longer_queued_is_skipped(core: Deployster) -> None:
    cancelled, waiting = make_job(), make_job()
    await core.queue.enqueue(cancelled, runner=None)
    await core.queue.enqueue(waiting, runner=None)
    # An operator cancelled it while it waited: its id is still in the list.
    await core.jobs.set_fields(cancelled.id, status="failed", reason="cancelled")
    assert await core.queue.claim(PROJECT, "r1") == waiting.id
    assert (await core.lock.state(PROJECT)).owner == waiting.id
    assert await status_of(core, cancelled.id) is JobStatus.FAILED
    assert await core.queue.queued_ids(PROJECT) == []


async def test_projects_have_independent_queues(core: Deployster) -> None:
    a, b = make_job(PROJECT), make_job(PROJECT + 1)
    assert (await core.queue.enqueue(a, runner="r1")).started == a.id
    assert (await core.queue.enqueue(b, runner="r1")).started == b.id
    assert (await core.lock.state(PROJECT)).owner == a.id
    assert (await core.lock.state(PROJECT + 1)).owner == b.id


# ------------------------------------------------------------------ over HTTP

# Appends "start <n> <ns>" and "end <n> <ns>" to a file in the project directory.
def timed(n: int, sleep: float, file: str = "order.log") -> str:
    return (
        f'echo "start {n} $(date +%s%N)" >> {file}; sleep {sleep}; '
        f'echo "end {n} $(date +%s%N)" >> {file}'
    )


def parse(path: Path) -> list[tuple[str, int, int]]:
    out = []
    for line in path.read_text().splitlines():
        kind, n, ns = line.split()
        out.append((kind, int(n), int(ns)))
    return out


async def test_jobs_of_one_project_run_one_at_a_time_in_posting_order(
    server: LiveServer, core: Deployster, project_dir: Path
) -> None:
    await core.projects.add(str(project_dir))
    async with server.client() as client:
        ids = []
        for n in range(1, 9):
            reply = await client.post("/deploy", json=deploy_body(project_dir, timed(n, 0.15)))
            assert reply.status_code == 200, reply.text
            body = reply.json()
            assert body.get("queued", False) is (n > 1), body  # the first one starts at once
            ids.append(body["job_id"])
        finals = [await wait_for_status(client, job_id, timeout=60) for job_id in ids]
    assert [f["status"] for f in finals] == ["complete"] * 8, finals
    events = parse(project_dir / "order.log")
    expected = [(kind, n) for n in range(1, 9) for kind in ("start", "end")]
    assert [(kind, n) for kind, n, _ in events] == expected
    stamps = [ns for _, _, ns in events]
    assert stamps == sorted(stamps)  # no start before the previous end


async def test_jobs_of_different_projects_run_in_parallel(
    server: LiveServer, core: Deployster, project_dir: Path, tmp_path: Path
) -> None:
    other_dir = tmp_path / "other-app"
    other_dir.mkdir()
    await core.projects.add(str(project_dir))
    await core.projects.add(str(other_dir))
    async with server.client() as client:
        a = (await client.post("/deploy", json=deploy_body(project_dir, timed(1, 1.5)))).json()
        b = (await client.post("/deploy", json=deploy_body(other_dir, timed(2, 1.5)))).json()
        assert "queued" not in a and "queued" not in b  # each project's lock was free
        finals = [await wait_for_status(client, j["job_id"]) for j in (a, b)]
    assert [f["status"] for f in finals] == ["complete", "complete"], finals
    (_, _, start_a), (_, _, end_a) = parse(project_dir / "order.log")
    (_, _, start_b), (_, _, end_b) = parse(other_dir / "order.log")
    # The two runs overlapped: each started before the other ended.
    assert start_a < end_b and start_b < end_a


async def wait_until(client: httpx.AsyncClient, job_id: str, status: str,
                     timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reply = (await client.get(f"/status/{job_id}")).json()
        if reply["status"] == status:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached {status}")


async def test_queued_jobs_survive_a_server_restart(
    server: LiveServer, core: Deployster, project_dir: Path, settings: Settings,
    tmp_path: Path,
) -> None:
    project = await core.projects.add(str(project_dir))
    async with server.client() as client:
        long = (await client.post("/deploy", json=deploy_body(project_dir, "sleep 60"))).json()
        queued = []
        for n in range(1, 4):
            body = deploy_body(project_dir, f"echo queued-{n} >> ran.log")
            reply = (await client.post("/deploy", json=body)).json()
            assert reply.get("queued") is True, reply
            queued.append(reply["job_id"])
        await wait_until(client, long["job_id"], "running")

    server.stop()  # SIGTERM, waits for the process to exit
    assert server.process.returncode is not None
    # Nothing ran meanwhile, and the queue is still there, in order.
    assert not (project_dir / "ran.log").exists()
    assert await core.queue.queued_ids(project.id) == queued
    for job_id in queued:
        assert await status_of(core, job_id) is JobStatus.QUEUED

    second = start_server(settings, tmp_path / "s2.log")
    try:
        async with second.client() as client:
            first_final = await wait_for_status(client, long["job_id"], timeout=30)
            finals = [await wait_for_status(client, job_id, timeout=30) for job_id in queued]
    finally:
        second.stop()
    assert first_final["status"] in ("complete", "failed"), first_final
    assert [f["status"] for f in finals] == ["complete"] * 3, finals
    assert (project_dir / "ran.log").read_text().splitlines() == [
        "queued-1", "queued-2", "queued-3"
    ]


# ------------------------------------------------------------ batching and the cap


async def test_concurrent_enqueues_reach_the_queue_in_call_order(core: Deployster) -> None:
    # Calls made while a batch is in flight go out as one pipeline: the queue
    # must still hold them in the order they were made, every one exactly once.
    jobs = [make_job() for _ in range(300)]
    results = await asyncio.gather(*(core.queue.enqueue(j, runner=None) for j in jobs))
    assert [r.job_id for r in results] == [j.id for j in jobs]
    assert [r.position for r in results] == list(range(1, 301))
    assert await core.queue.queued_ids(PROJECT) == [j.id for j in jobs]


async def test_enqueue_recovers_when_redis_forgets_its_scripts(core: Deployster) -> None:
    first = make_job()
    await core.queue.enqueue(first, runner=None)
    await core.redis.script_flush()  # as after a Redis restart without persistence
    second = make_job()
    result = await core.queue.enqueue(second, runner=None)
    assert result.position == 2
    assert await core.queue.queued_ids(PROJECT) == [first.id, second.id]


async def test_a_full_queue_refuses_and_stores_nothing(core: Deployster) -> None:
    for _ in range(3):
        await core.queue.enqueue(make_job(), runner=None, cap=3)
    before = await core.queue.queued_ids(PROJECT)
    extra = make_job()
    try:
        await core.queue.enqueue(extra, runner=None, cap=3)
    except QueueFull as exc:
        assert exc.http_status == 429 and exc.headers()["Retry-After"].isdigit()
    else:
        raise AssertionError("a fourth job entered a queue capped at 3")
    assert await core.queue.queued_ids(PROJECT) == before
    assert await core.jobs.get(extra.id) is None


async def test_http_429_with_retry_after_when_the_queue_is_full(
    core: Deployster, settings: Settings, project_dir: Path, tmp_path: Path
) -> None:
    await core.projects.add(str(project_dir))
    gate = tmp_path / "gate"
    server = start_server(settings, tmp_path / "server.log", {"DEPLOYSTER_MAX_QUEUE": "2"})
    try:
        async with server.client() as client:
            holder = (await client.post("/deploy", json=deploy_body(
                project_dir, f"while [ ! -e {gate} ]; do sleep 0.05; done", commit="hold"
            ))).json()
            queued = [(await client.post("/deploy", json=deploy_body(
                project_dir, "echo queued", commit=f"q{i}"))).json() for i in range(2)]
            assert all(q.get("queued") for q in queued)
            full = await client.post("/deploy", json=deploy_body(
                project_dir, "echo over", commit="over"))
            assert full.status_code == 429
            assert full.json()["code"] == "queue_full" and "retry" in full.json()["error"]
            assert int(full.headers["retry-after"]) > 0
            # An identical request to a queued job is still answered by that job.
            again = await client.post("/deploy", json=deploy_body(
                project_dir, "echo queued", commit="q0"))
            assert again.status_code == 200 and again.json()["job_id"] == queued[0]["job_id"]
            gate.touch()
            for job in (holder, *queued):
                assert (await wait_for_status(client, job["job_id"]))["status"] == "complete"
            # Room again: the queue accepts work once it drains.
            later = await client.post("/deploy", json=deploy_body(
                project_dir, "echo later", commit="later"))
            assert later.status_code == 200
            assert (await wait_for_status(client, later.json()["job_id"]))["status"] == "complete"
    finally:
        server.stop()


# ------------------------------------------------------------ indexed queue


async def test_supersede_ends_exactly_the_queued_jobs_of_its_ref_among_many(
    core: Deployster,
) -> None:
    refs = ["main", "dev", "feat/x", "release:1"]  # a ':' in a ref is just a character
    jobs = [make_job(ref=refs[i % len(refs)]) for i in range(200)]
    for job in jobs:
        await core.queue.enqueue(job, runner=None)
    # One job of 'dev' left on its own first: cancelled.
    devs = [j for j in jobs if j.ref_name == "dev"]
    await core.queue.cancel(devs[3])
    newest = make_job(ref="dev")
    result = await core.queue.enqueue(newest, runner=None, policy="supersede")
    others = [j.id for j in jobs if j.ref_name != "dev"]
    assert await core.queue.queued_ids(PROJECT) == [*others, newest.id]
    assert result.position == len(others) + 1
    for job in devs:
        record = await core.jobs.get(job.id)
        assert record is not None and record.status is JobStatus.FAILED
        if job is devs[3]:
            assert record.reason == "cancelled" and record.superseded_by is None
        else:
            assert record.reason == "superseded" and record.superseded_by == newest.id
    for job_id in others:
        assert await status_of(core, job_id) is JobStatus.QUEUED
    # The ref's index moved on with the queue: the next supersede of 'dev'
    # replaces only the job that superseded the rest; one of 'main' all of main.
    again = make_job(ref="dev")
    await core.queue.enqueue(again, runner=None, policy="supersede")
    assert (await core.jobs.get(newest.id)).superseded_by == again.id  # type: ignore[union-attr]
    main = make_job(ref="main")
    await core.queue.enqueue(main, runner=None, policy="supersede")
    left = [j.id for j in jobs if j.ref_name in ("feat/x", "release:1")]
    assert await core.queue.queued_ids(PROJECT) == [*left, again.id, main.id]
    # A claimed job has left its ref's set: superseding its ref leaves it running.
    claimed = await core.queue.claim(PROJECT, "r1")
    assert claimed == left[0]
    await core.queue.enqueue(make_job(ref="feat/x"), runner=None, policy="supersede")
    assert await status_of(core, claimed) is JobStatus.RUNNING


async def test_positions_close_up_after_cancels(core: Deployster) -> None:
    assert await hold_lock(core, PROJECT, "nobody", 60_000)
    jobs = [make_job() for _ in range(10)]
    for job in jobs:
        await core.queue.enqueue(job, runner="r1")
    for gone in (jobs[0], jobs[4], jobs[9]):
        assert await core.queue.cancel(gone) == "queued"
    left = [j for j in jobs if j not in (jobs[0], jobs[4], jobs[9])]
    for place, job in enumerate(left, 1):
        assert await core.queue.position(PROJECT, job.id) == place
        read = await core.read_status(job.id)
        assert (read.status, read.position) == (JobStatus.QUEUED, place)
    assert await core.queue.position(PROJECT, jobs[4].id) is None
    assert (await core.read_status(jobs[4].id)).position is None
    last = make_job()
    assert (await core.queue.enqueue(last, runner="r1")).position == len(left) + 1
    # Emptied by cancels, the project leaves the set the sweep visits.
    for job in [*left, last]:
        await core.queue.cancel(job)
    assert await core.queue.length(PROJECT) == 0
    assert PROJECT not in await core.queue.projects_with_queue()


async def test_the_dashboard_reads_a_window_of_a_long_queue(core: Deployster) -> None:
    jobs = [make_job() for _ in range(120)]
    await asyncio.gather(*(core.queue.enqueue(j, runner=None) for j in jobs))
    window = await overview.queued_jobs(core, PROJECT, limit=50)
    assert window.total == 120
    assert [j.id for j in window.jobs] == [j.id for j in jobs[:50]]
    assert all(j.status is JobStatus.QUEUED for j in window.jobs)


# ------------------------------------------------------------ the list queue of old


async def store_legacy(core: Deployster, jobs: list[Job]) -> None:
    """``jobs`` as a version that kept the queue as a list left them: records
    queued, ids pushed on the list, the project in ``queues``."""
    for job in jobs:
        job.status, job.queued_at = JobStatus.QUEUED, "2026-01-01T00:00:00.000Z"
        await core.redis.hset(core.keys.job(job.id), mapping={
            "signature": job.signature(), **job.to_redis()})
        await core.redis.rpush(core.keys.legacy_queue(job.project_id), job.id)
        await core.redis.sadd(core.keys.queues, job.project_id)


async def test_upgrade_moves_a_list_queue_in_order_once(core: Deployster) -> None:
    jobs = [make_job(ref="main" if i % 2 else "dev") for i in range(30)]
    other = [make_job(PROJECT + 1) for _ in range(3)]
    await store_legacy(core, jobs + other)
    # Cancelled while it waited in the old list: its id stayed there.
    await core.jobs.set_fields(jobs[5].id, status="failed", reason="cancelled")
    waiting = [j.id for j in jobs if j is not jobs[5]]

    assert await core.queue.upgrade() == len(waiting) + len(other)
    assert await core.queue.queued_ids(PROJECT) == waiting
    assert await core.queue.queued_ids(PROJECT + 1) == [j.id for j in other]
    assert not await core.redis.exists(core.keys.legacy_queue(PROJECT))
    assert await core.queue.upgrade() == 0  # a second start changes nothing
    assert await core.queue.queued_ids(PROJECT) == waiting
    # The moved jobs are indexed by ref: supersede finds them.
    newest = make_job(ref="dev")
    result = await core.queue.enqueue(newest, runner=None, policy="supersede")
    mains = [j.id for j in jobs if j.ref_name == "main" and j is not jobs[5]]
    assert await core.queue.queued_ids(PROJECT) == [*mains, newest.id]
    assert result.position == len(mains) + 1
    # And they run in their old order.
    assert await core.queue.claim(PROJECT, "r1") == mains[0]


async def test_no_job_is_lost_around_an_upgrade(core: Deployster) -> None:
    old = [make_job() for _ in range(50)]
    await store_legacy(core, old)
    # A new server's enqueue racing the upgrade: either runs first, nothing is
    # lost, and the old jobs stay ahead (an enqueue moves the list first).
    new = make_job()
    moved, _ = await asyncio.gather(core.queue.upgrade(), core.queue.enqueue(new, runner=None))
    assert moved in (0, len(old))
    assert await core.queue.queued_ids(PROJECT) == [*(j.id for j in old), new.id]
    # An older server still running beside it pushes to the list after the
    # upgrade: the project's next enqueue, or claim, moves that job too.
    late, later = make_job(), make_job()
    await store_legacy(core, [late])
    after = make_job()
    result = await core.queue.enqueue(after, runner=None)
    assert result.position == len(old) + 3
    await store_legacy(core, [later])
    assert await core.queue.claim(PROJECT, "r1") == old[0].id
    assert await core.queue.queued_ids(PROJECT) == [
        *(j.id for j in old[1:]), new.id, late.id, after.id, later.id]
    assert not await core.redis.exists(core.keys.legacy_queue(PROJECT))
