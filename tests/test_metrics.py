"""What ``GET /metrics`` shows (deployster/metrics.py, README.md#metrics), read
through the core against a real Redis: the counters kept by the scripts that
change the state, the gauges read from that state, and the same figures from
any process on the same Redis. The page over HTTP, after real deploys:
tests/server/test_metrics.py."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from deployster import control, fleet, metrics, recovery
from deployster.ids import first_id_at, new_job_id
from deployster.logstream import LogWriter
from deployster.models import Job, JobStatus, Project, Reason
from deployster.notify.targets import NotifyChange
from deployster.redis_scripts import lua_text
from deployster.service import Deployster
from deployster.settings import Settings
from tests.helpers.inprocess import audit, deploy, ended, put_stubs_on_path, running
from tests.helpers.receivers import Receiver

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: bytes | str) -> Samples:
    """Every sample of a scrape as Prometheus parses it: (name, sorted labels) -> value."""
    page = text.decode() if isinstance(text, bytes) else text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(page) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    """The one sample of ``name`` whose labels include ``labels`` (a project's
    ``node`` label need not be named)."""
    found = [v for (n, given), v in samples.items()
             if n == name and labels.items() <= dict(given).items()]
    assert len(found) == 1, (name, labels, found)
    return found[0]


async def scrape(core: Deployster) -> Samples:
    return parse(await metrics.exposition(core))


def make_job(project: Project, commit: str) -> Job:
    return Job(id=new_job_id(), project_id=project.id, project=project.name, cd=project.path,
               commands=["true", "supervisorctl restart app"], commit_hash=commit,
               ref_name="main", lock_ttl_ms=int(project.lock_ttl * 1000))


async def claimed(core: Deployster, project: Project, commit: str, *,
                  ran_s: float | None = None) -> Job:
    """A job of ``project`` queued and claimed (running, the lock held); with
    ``ran_s``, its claim moved that many seconds into the past."""
    job = make_job(project, commit)
    assert (await core.queue.enqueue(job, runner="r1")).started == job.id
    if ran_s is not None:
        await core.redis.hset(core.keys.job(job.id), "started_ms",
                              int((time.time() - ran_s) * 1000))
    running = await core.jobs.get(job.id)
    assert running is not None
    return running


async def test_the_lua_duration_bounds_are_the_python_buckets() -> None:
    table = re.search(r"DURATION_BOUNDS_MS = \{([^}]*)\}", lua_text("metrics"))
    assert table is not None
    bounds = [int(b) for b in table.group(1).replace("\n", " ").split(",")]
    assert bounds == [round(b * 1000) for b in metrics.DURATION_BUCKETS]


async def test_a_new_project_reads_zero_everywhere(core: Deployster, project_dir: Path) -> None:
    await core.projects.add(str(project_dir))
    samples = await scrape(core)
    app = {"project": "my-app"}
    assert value(samples, "deployster_deploys_started_total", **app) == 0
    # Every end a user may alert on is there from zero (an increase() sees its first).
    for status, reason in [("complete", ""), *(("failed", r.value) for r in Reason)]:
        assert value(samples, "deployster_deploys_finished_total", **app, status=status,
                     reason=reason) == 0
    assert value(samples, "deployster_deploy_duration_seconds_count", **app) == 0
    assert value(samples, "deployster_queue_length", **app) == 0
    assert value(samples, "deployster_lock_held", **app) == 0
    assert value(samples, "deployster_lock_ttl_seconds", **app) == 0
    assert value(samples, "deployster_project_lock_ttl_seconds", **app) == 600
    assert value(samples, "deployster_project_timeout_seconds", **app) == 3600
    assert value(samples, "deployster_handoff_seconds_count") == 0
    assert value(samples, "deployster_runners_up") == 0  # no dispatcher announced itself
    for kind in metrics.NOTIFY_KINDS:  # no notification hash: zeros
        assert value(samples, "deployster_notifications_delivered_total", kind=kind) == 0
        assert value(samples, "deployster_notifications_failed_total", kind=kind) == 0


async def test_ends_durations_queue_and_lock_as_the_scripts_left_them(
    core: Deployster, project_dir: Path
) -> None:
    project = await core.projects.add(str(project_dir), lock_ttl=90)
    app = {"project": "my-app"}
    done = await claimed(core, project, "c1", ran_s=90)  # ran 90 s: the (60, 120] bucket
    await core.queue.finish(done, JobStatus.COMPLETE, exit_code=0)
    broken = await claimed(core, project, "c2", ran_s=3)  # (2.5, 5]
    await core.queue.finish(broken, JobStatus.FAILED, reason=Reason.COMMAND_FAILED, exit_code=1)
    running = await claimed(core, project, "c3")
    waiting, dropped = make_job(project, "c4"), make_job(project, "c5")
    for job in (waiting, dropped):
        assert (await core.queue.enqueue(job, runner="r1")).queued
    await core.queue.cancel(dropped)  # ended while queued: never ran
    samples = await scrape(core)

    assert value(samples, "deployster_deploys_started_total", **app) == 3  # two ended, one runs
    finished = {(s, r): value(samples, "deployster_deploys_finished_total", **app, status=s,
                              reason=r)
                for s, r in [("complete", ""), ("failed", "command_failed"),
                             ("failed", "cancelled"), ("failed", "timed_out")]}
    assert finished == {("complete", ""): 1, ("failed", "command_failed"): 1,
                        ("failed", "cancelled"): 1, ("failed", "timed_out"): 0}
    # Only the two that ran have a duration, each in its bucket.
    bucket = {le: value(samples, "deployster_deploy_duration_seconds_bucket", **app, le=le)
              for le in ("2.5", "5.0", "60.0", "120.0", "+Inf")}
    assert bucket == {"2.5": 0, "5.0": 1, "60.0": 1, "120.0": 2, "+Inf": 2}
    assert 93 <= value(samples, "deployster_deploy_duration_seconds_sum", **app) < 120
    assert value(samples, "deployster_deploy_running", **app) == 1
    assert value(samples, "deployster_lock_held", **app) == 1
    assert 0 < value(samples, "deployster_lock_ttl_seconds", **app) <= 90
    assert value(samples, "deployster_lock_held_seconds", **app) >= 0
    assert value(samples, "deployster_queue_length", **app) == 1
    assert value(samples, "deployster_queue_oldest_age_seconds", **app) >= 0

    await core.queue.finish(running, JobStatus.FAILED, reason=Reason.TIMED_OUT)
    await core.queue.finish((await claimed_next(core, waiting)), JobStatus.COMPLETE)
    after = await scrape(core)
    assert value(after, "deployster_deploys_started_total", **app) == 4
    assert value(after, "deployster_deploy_duration_seconds_count", **app) == 4
    assert value(after, "deployster_deploys_finished_total", **app, status="failed",
                 reason="timed_out") == 1
    assert value(after, "deployster_deploy_running", **app) == 0
    assert value(after, "deployster_lock_held", **app) == 0
    assert value(after, "deployster_queue_length", **app) == 0
    assert value(after, "deployster_queue_oldest_age_seconds", **app) == 0


async def claimed_next(core: Deployster, job: Job) -> Job:
    """``job``, queued behind the lock, claimed once the lock is free."""
    assert await core.queue.claim(job.project_id, "r1") == job.id
    running = await core.jobs.get(job.id)
    assert running is not None and running.status is JobStatus.RUNNING
    return running


async def test_the_oldest_queued_age_is_the_head_of_the_queue(
    core: Deployster, project_dir: Path
) -> None:
    project = await core.projects.add(str(project_dir))
    await claimed(core, project, "c1")
    old = make_job(project, "c2")
    old.id = first_id_at(time.time() - 7200)[:10] + old.id[10:]  # requested 2 hours ago
    await core.queue.enqueue(old, runner="r1")
    await core.queue.enqueue(make_job(project, "c3"), runner="r1")
    samples = await scrape(core)
    assert value(samples, "deployster_queue_length", project="my-app") == 2
    assert value(samples, "deployster_queue_oldest_age_seconds", project="my-app") > 3600


async def test_log_bytes_count_what_the_logs_took(core: Deployster, project_dir: Path) -> None:
    project = await core.projects.add(str(project_dir))
    job = await claimed(core, project, "c1")
    async with LogWriter(core.redis, core.keys, job.id, cap_bytes=1 << 20,
                         fence=job.fence) as log:
        log.write_bytes("héllo\n".encode() * 100)
    samples = await scrape(core)
    assert value(samples, "deployster_log_bytes_total", project="my-app") == 700


async def test_hand_offs_and_notifications_read_from_their_hashes(core: Deployster) -> None:
    async with core.redis.pipeline(transaction=False) as pipe:
        for seconds in (0.0004, 0.003, 0.003, 7.0):
            metrics.count_handoff(pipe, core.keys, seconds)
        await pipe.execute()
    # As notify_settle.lua leaves them (the notifier's own: the test below).
    for kind, delivered in (("webhook", True), ("webhook", True), ("slack", False)):
        await core.redis.hincrby(core.keys.notify_metrics,
                                 metrics.notification_counter(kind, delivered=delivered), 1)
    samples = await scrape(core)
    bucket = {le: value(samples, "deployster_handoff_seconds_bucket", le=le)
              for le in ("0.001", "0.0025", "0.005", "5.0", "+Inf")}
    assert bucket == {"0.001": 1, "0.0025": 1, "0.005": 3, "5.0": 3, "+Inf": 4}
    assert abs(value(samples, "deployster_handoff_seconds_sum") - 7.0064) < 1e-6
    assert value(samples, "deployster_notifications_delivered_total", kind="webhook") == 2
    assert value(samples, "deployster_notifications_failed_total", kind="slack") == 1
    assert value(samples, "deployster_notifications_failed_total", kind="discord") == 0


async def test_runners_and_nodes_up_follow_their_announcements(core: Deployster) -> None:
    # A node that went away 20 s ago: the hash keeps it, down.
    stale = json.loads(fleet.announcement(core))
    stale["heartbeat_ms"] -= 20_000
    await core.redis.hset(core.keys.nodes, "web-9", json.dumps(stale))
    await recovery.announce(core)
    samples = await scrape(core)
    assert value(samples, "deployster_runners_up") == 1
    assert value(samples, "deployster_node_up", node=core.node) == 1
    assert value(samples, "deployster_node_up", node="web-9") == 0
    await recovery.withdraw(core)
    assert value(await scrape(core), "deployster_runners_up") == 0


async def test_two_cores_on_one_redis_report_the_same_totals(
    core: Deployster, settings: Settings, tmp_path: Path
) -> None:
    projects = []
    for n in range(metrics.CHUNK + 5):  # more than one script call's worth
        path = tmp_path / f"app-{n:03d}"
        path.mkdir()
        projects.append(await core.projects.add(str(path)))
    ended = projects[::20]
    for n, project in enumerate(ended):
        job = await claimed(core, project, f"c{n}")
        await core.queue.finish(job, JobStatus.COMPLETE if n % 2 else JobStatus.FAILED,
                                reason=None if n % 2 else Reason.COMMAND_FAILED)
    await claimed(core, projects[-1], "held")
    other = await Deployster.open(settings)
    try:
        mine, theirs = await scrape(core), await scrape(other)
    finally:
        await other.close()
    # Ages and TTLs move between two reads; every count is the same.
    moving = ("_age_seconds", "_ttl_seconds", "_held_seconds")
    assert {k: v for k, v in mine.items() if not k[0].endswith(moving)} == \
        {k: v for k, v in theirs.items() if not k[0].endswith(moving)}
    assert sum(v for (name, _), v in mine.items()
               if name == "deployster_deploys_started_total") == len(ended) + 1
    assert value(mine, "deployster_lock_held", project=projects[-1].name) == 1
    assert len({labels for name, labels in mine
                if name == "deployster_queue_length"}) == len(projects)


async def test_a_removed_project_leaves_the_page_with_its_counters(
    core: Deployster, project_dir: Path
) -> None:
    project = await core.projects.add(str(project_dir))
    job = await claimed(core, project, "c1")
    await core.queue.finish(job, JobStatus.COMPLETE)
    assert await core.redis.exists(core.keys.project_metrics(project.id))
    await control.remove_project(core, project, actor="test")
    samples = await scrape(core)
    assert not any(dict(labels).get("project") == "my-app" for _, labels in samples)
    assert not await core.redis.exists(core.keys.project_metrics(project.id))


async def test_each_project_is_labelled_with_its_node(
    core: Deployster, settings: Settings, project_dir: Path, tmp_path: Path
) -> None:
    here = await core.projects.add(str(project_dir))
    twin = tmp_path / "web-2" / "my-app"  # another node's project of that directory name
    twin.mkdir(parents=True)
    other = await Deployster.open(settings.with_overrides(node="web-2"))
    try:
        there = await other.projects.add(str(twin))
    finally:
        await other.close()
    await claimed(core, here, "c1")
    samples = await scrape(core)
    assert here.node and here.node != "web-2"
    assert value(samples, "deployster_lock_held", node=here.node, project=here.name) == 1
    assert value(samples, "deployster_lock_held", node="web-2", project=there.name) == 0


async def test_the_notifier_counts_each_attempt_as_it_settles_it(
    settings: Settings, project_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    put_stubs_on_path(monkeypatch)
    with Receiver(answers=[500]) as hook:  # down once, then up
        async with running(settings) as (core, dispatcher):
            project = await core.projects.add(str(project_dir), notify=NotifyChange(
                targets=(f"webhook={hook.url}",), events=None, secrets=None))
            job = await deploy(core, dispatcher, project_dir, "true")
            assert await ended(core, job) == "complete"
            await hook.wait_for(1)
            attempts = await audit(core, dispatcher.notifier, project.id, count=2)
            samples = await scrape(core)
    assert [a for a, _, _ in attempts] == ["notify.failed", "notify.sent"]
    assert value(samples, "deployster_notifications_failed_total", kind="webhook") == 1
    assert value(samples, "deployster_notifications_delivered_total", kind="webhook") == 1
    assert value(samples, "deployster_notifications_delivered_total", kind="slack") == 0
