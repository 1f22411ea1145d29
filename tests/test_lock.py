"""The per-project deploy lock (docs/redis.md#the-lock-and-the-fencing-counter)
against a real Redis, and its watchdog (docs/runner.md#the-watchdog)."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from pathlib import Path

from deployster.ids import new_job_id
from deployster.keys import Keys
from deployster.lock import DeployLock, LockState
from deployster.models import Job
from deployster.queue import JobQueue
from deployster.service import Deployster
from deployster.watchdog import LOCK_LOST, OK, Watchdog
from tests.helpers.deploys import deploy_body, wait_for_status
from tests.helpers.locks import hold_lock
from tests.helpers.server import LiveServer

PROJECT = 41


def make_job(project_id: int = PROJECT, ttl_ms: int = 60_000) -> Job:
    job_id = new_job_id()
    return Job(id=job_id, project_id=project_id, project=f"p{project_id}", cd="/tmp",
               commands=["true"], commit_hash=job_id.lower(), ref_name="main",
               lock_ttl_ms=ttl_ms)


async def claimed(queue: JobQueue, project_id: int = PROJECT, ttl_ms: int = 60_000) -> str:
    """Take the lock the way deployster does, by claiming a queued job; returns
    the job, now the lock's owner (or '' when the lock was held)."""
    result = await queue.enqueue(make_job(project_id, ttl_ms), runner="r1")
    return result.started or ""


async def running(core: Deployster, job_id: str) -> Job:
    job = await core.jobs.get(job_id)
    assert job is not None and job.status.value == "running", job
    return job


def test_lock_key_is_the_seed_name_without_a_namespace() -> None:
    assert Keys().lock(7) == "lock:deploy:7"
    assert Keys("blue").lock(7) == "blue:lock:deploy:7"
    # Everything else is under one prefix; the lock is not.
    assert Keys().queue(7).startswith("deployster:")
    assert not Keys().lock(7).startswith("deployster:")


async def test_a_claim_without_namespace_writes_lock_deploy_project_id(
    core: Deployster,
) -> None:
    keys = Keys()
    queue = JobQueue(core.redis, keys)
    project_id = 900_000_000 + uuid.uuid4().int % 99_999_999  # no clash with real ids
    key = f"lock:deploy:{project_id}"
    owner = ""
    try:
        owner = await claimed(queue, project_id)
        assert owner
        assert await core.redis.get(key) == owner
        assert 0 < await core.redis.pttl(key) <= 60_000
        assert await DeployLock(core.redis, keys).release(project_id, owner)
        assert await core.redis.exists(key) == 0
    finally:
        await core.redis.delete(key, keys.fence(project_id), keys.current(project_id),
                                keys.queue(project_id), keys.signatures(project_id))
        if owner:
            await core.redis.delete(keys.job(owner))
            await core.redis.hdel(keys.running, owner)
            await core.redis.hdel(keys.dirty, owner)


async def test_a_second_claim_fails_while_held(core: Deployster) -> None:
    owner = await claimed(core.queue)
    assert owner
    assert not await claimed(core.queue)
    # Not taken again either: a claim by the same runner answers the job that
    # holds the lock (a retry of a claim whose reply was lost), claims nothing.
    assert await core.queue.claim(PROJECT, "r1") == owner
    assert await core.queue.claim(PROJECT, "r2") is None
    assert await core.queue.length(PROJECT) == 1
    state = await core.lock.state(PROJECT)
    assert state.owner == owner
    assert state.ttl_ms is not None and 0 < state.ttl_ms <= 60_000
    # Another project's lock is independent.
    assert await claimed(core.queue, PROJECT + 1)


async def test_free_lock_state(core: Deployster) -> None:
    state = await core.lock.state(PROJECT)
    assert state.owner is None and state.ttl_ms is None


async def test_release_by_non_owner_returns_false_and_keeps_the_lock(
    core: Deployster,
) -> None:
    assert await hold_lock(core, PROJECT, "job-a", 60_000)
    assert await core.lock.release(PROJECT, "job-b") is False
    assert (await core.lock.state(PROJECT)).owner == "job-a"
    assert await core.lock.release(PROJECT, "job-a") is True
    assert (await core.lock.state(PROJECT)).owner is None
    # Releasing twice is harmless and says it did nothing.
    assert await core.lock.release(PROJECT, "job-a") is False
    # Once free, anyone can take it.
    assert await claimed(core.queue)


async def test_renewal_is_compare_and_set_on_the_owner(core: Deployster) -> None:
    watchdog = Watchdog(core.redis, core.keys)
    job = await running(core, await claimed(core.queue, ttl_ms=5_000))
    # The owner renews it: a TTL above the original can only come from the renewal.
    job.lock_ttl_ms = 120_000
    assert await watchdog.beat(job, renew=True) == OK
    state = await core.lock.state(PROJECT)
    assert state.owner == job.id
    assert state.ttl_ms is not None and 5_000 < state.ttl_ms <= 120_000
    # Someone else holds it now: the job cannot prolong it (its beat finds it
    # lost), and the TTL can only have gone down.
    assert await core.lock.release(PROJECT, job.id)
    assert await hold_lock(core, PROJECT, "job-b", 5_000)
    assert await watchdog.beat(job, renew=True) == LOCK_LOST
    state = await core.lock.state(PROJECT)
    assert state.owner == "job-b"
    assert state.ttl_ms is not None and 0 < state.ttl_ms <= 5_000


async def test_renewal_of_a_free_lock_does_not_recreate_it(core: Deployster) -> None:
    job = await running(core, await claimed(core.queue))
    assert await core.lock.release(PROJECT, job.id)
    assert await Watchdog(core.redis, core.keys).beat(job, renew=True) == LOCK_LOST
    assert (await core.lock.state(PROJECT)).owner is None


async def test_short_ttl_lock_expires_by_itself(core: Deployster) -> None:
    job = await running(core, await claimed(core.queue, ttl_ms=150))
    state = await core.lock.state(PROJECT)
    assert state.owner == job.id and state.ttl_ms is not None and state.ttl_ms <= 150
    deadline = time.monotonic() + 10
    while (await core.lock.state(PROJECT)).owner is not None:
        assert time.monotonic() < deadline, "the lock never expired"
        await asyncio.sleep(0.02)
    # Expired means free: the owner cannot renew it and someone else can take it.
    job.lock_ttl_ms = 60_000
    assert await Watchdog(core.redis, core.keys).beat(job, renew=True) == LOCK_LOST
    other = await claimed(core.queue)
    assert other
    assert (await core.lock.state(PROJECT)).owner == other


async def test_release_publishes_a_released_event(core: Deployster) -> None:
    assert await hold_lock(core, PROJECT, "job-a", 60_000)
    async with core.redis.pubsub() as pubsub:
        await pubsub.subscribe(core.keys.events)
        # A refused release publishes nothing; the owner's release does.
        assert await core.lock.release(PROJECT, "job-b") is False
        assert await core.lock.release(PROJECT, "job-a") is True
        events: list[dict[str, object]] = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not events:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
            if message is not None:
                events.append(json.loads(message["data"]))
        # Drain briefly to be sure nothing else (e.g. from the refused release) came.
        while (
            message := await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
        ) is not None:
            events.append(json.loads(message["data"]))
    assert events == [{"type": "released", "project": PROJECT, "job": "job-a"}]


async def test_watchdog_keeps_the_lock_through_a_job_longer_than_its_ttl(
    server: LiveServer, core: Deployster, project_dir: Path
) -> None:
    project = await core.projects.add(str(project_dir), lock_ttl=1.5)
    async with server.client() as client:
        reply = (await client.post("/deploy", json=deploy_body(project_dir, "sleep 4.5"))).json()
        job_id = reply["job_id"]
        assert "queued" not in reply
        samples: list[LockState] = []
        started = time.monotonic()
        while True:
            job = await core.jobs.get(job_id)
            assert job is not None
            if job.status.finished:
                break
            if job.status.value == "running":
                state = await core.lock.state(project.id)
                # Count it only if the job still ran after the read: the end of the
                # job releases the lock, and that hand-off is not a watchdog failure.
                after = await core.jobs.get(job_id)
                if after is not None and after.status.value == "running":
                    samples.append(state)
            assert time.monotonic() - started < 60, "the job never finished"
            await asyncio.sleep(0.1)
        final = await wait_for_status(client, job_id)
    assert final["status"] == "complete", final
    assert "job stopped" not in str(final["logs"])
    # Every sample: the lock was the job's, with time left on it.
    assert samples, "the job was never seen running"
    for state in samples:
        assert state.owner == job_id, samples
        assert state.ttl_ms is not None and 0 < state.ttl_ms <= 1500, samples
    # The TTL went back up between samples: the watchdog renewed it, repeatedly.
    ttls = [state.ttl_ms or 0 for state in samples]
    renewals = sum(1 for a, b in itertools.pairwise(ttls) if b > a)
    assert renewals >= 2, samples
    # The end of the job released it.
    assert (await core.lock.state(project.id)).owner is None
