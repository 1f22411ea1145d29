"""Notifications (README.md#notifications): job events reach their targets,
signed, at least once, retried, and never slow or change a job.

In process: a core and a dispatcher of the test's own (its notifier with
it), real Redis and SQLite, real jobs (``sh``), and local HTTP receivers as the
targets (``tests/helpers/receivers.py``). The restart of a real server is in
``tests/server/test_notify_restart.py``; the command line in
``tests/test_notify_cli.py``; GitHub deployments in ``tests/test_github.py``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from deployster.control import cancel_job, release_lock
from deployster.models import NOTIFY_EVENTS
from deployster.notify.outbox import Notifier
from deployster.notify.targets import NotifyChange
from deployster.service import DeployRequest, Deployster
from deployster.settings import Settings
from tests.helpers.inprocess import audit, deploy, ended, put_stubs_on_path, running, until
from tests.helpers.receivers import Receiver

SECRET = "hook-secret-4f9a2c"
STAGE_SECRET = "stage-value-8d1e77"


@pytest.fixture(autouse=True)
def stubs_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    put_stubs_on_path(monkeypatch)


def notify(*targets: str, events: str | None = None, secret: str | None = None,
           **more: Any) -> NotifyChange:
    return NotifyChange(targets=targets, events=events,
                        secrets=(secret,) if secret else None, **more)


# ------------------------------------------------------------------ webhooks


async def test_a_webhook_gets_the_events_it_wants_signed_with_the_log_tail_masked(
    settings: Settings, project_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    pipeline = [{"stage_name": "Production", "git_branch": "main",
                 "environment_variables": [{"key": "API_KEY", "value": STAGE_SECRET}]}]
    with Receiver() as hook, Receiver() as everything:
        async with running(settings) as (core, dispatcher):
            project = await core.projects.add(
                str(project_dir), pipeline=pipeline,
                notify=notify(f"webhook={hook.url}", secret=SECRET))
            project = await core.projects.edit(project, notify=NotifyChange(
                targets=(f"webhook={hook.url}", f"webhook={everything.url}?token=abc")))
            # The secret of a target kept in the list stays; the new one has none.
            assert [t.secret for t in project.notify or ()] == [SECRET, None]
            project = await core.projects.edit(project, notify=NotifyChange(events="all"))
            await core.projects.edit(project, notify=NotifyChange(
                targets=(f"webhook={hook.url}", f"webhook={everything.url}?token=abc"),
                events="all", secrets=(SECRET, "other-secret")))
            ok = await deploy(core, dispatcher, project_dir, 'echo "key is $API_KEY"',
                              "echo done")
            assert await ended(core, ok) == "complete"
            bad = await deploy(core, dispatcher, project_dir, "echo boom; exit 3",
                               commit="def5678")
            node = core.node
            assert await ended(core, bad) == "failed (command_failed)"
            got = await hook.wait_for(4)
    assert hook.events() == [("started", ok), ("complete", ok), ("started", bad),
                             ("failed", bad)]
    assert everything.events() == hook.events()
    assert all(r.signed_with(SECRET) for r in got)
    assert all(r.signed_with("other-secret") for r in everything.accepted)
    assert not any(r.signed_with("wrong") for r in got)
    complete = got[1].json
    assert {k: complete[k] for k in ("event", "job_id", "project", "commit", "ref", "stage",
                                     "status", "reason", "exit_code", "started_by", "node")} \
        == {"event": "complete", "job_id": ok, "project": "my-app", "commit": "abc1234",
            "ref": "main", "stage": "Production", "status": "complete", "reason": None,
            "exit_code": 0, "started_by": "admin", "node": node}
    assert complete["duration"] > 0
    assert "key is ***" in complete["log_tail"] and STAGE_SECRET not in complete["log_tail"]
    failed = got[3].json
    assert (failed["status"], failed["reason"], failed["exit_code"]) == \
        ("failed", "command_failed", 3)
    assert "boom" in failed["log_tail"]
    assert got[3].headers["x-deployster-event"] == "failed"
    assert got[3].headers["content-type"] == "application/json"
    assert len({r.headers["x-deployster-delivery"] for r in got}) == 4
    # Nothing of the secrets in the server's log lines.
    logged = caplog.text
    assert "notification sent" in logged
    assert SECRET not in logged and "token=abc" not in logged and STAGE_SECRET not in logged


async def test_a_project_gets_only_the_events_its_targets_want(
    settings: Settings, project_dir: Path
) -> None:
    with Receiver() as hook:
        async with running(settings) as (core, dispatcher):
            await core.projects.add(str(project_dir), notify=notify(f"webhook={hook.url}"))
            first = await deploy(core, dispatcher, project_dir, "sleep 0.3")
            second = await deploy(core, dispatcher, project_dir, "true", commit="b")
            assert await ended(core, second) == "complete"
            await hook.wait_for(2)
            await asyncio.sleep(0.3)  # a stray third would have arrived by now
    # The default: complete and failed; the queued and started events were
    # never even written to the outbox.
    assert hook.events() == [("complete", first), ("complete", second)]


async def test_a_project_without_targets_writes_nothing_to_the_outbox(
    settings: Settings, project_dir: Path, tmp_path: Path
) -> None:
    quiet_dir = tmp_path / "quiet"
    quiet_dir.mkdir()
    with Receiver() as hook:
        async with running(settings) as (core, dispatcher):
            await core.projects.add(str(quiet_dir))
            await core.projects.add(str(project_dir), notify=notify(f"webhook={hook.url}",
                                                                    events="all"))
            job = await deploy(core, dispatcher, quiet_dir, "true")
            assert await ended(core, job) == "complete"
            outbox = core.keys.outbox
            # The events written so far have been read; none was this job's.
            assert await core.redis.xlen(outbox) == 0
            assert await core.redis.hgetall(core.keys.notify_routes) == {
                str((await core.projects.find("my-app")).id): ",".join(["", *NOTIFY_EVENTS, ""])}
    assert hook.requests == []


async def test_server_wide_targets_serve_projects_without_their_own(
    settings: Settings, project_dir: Path, tmp_path: Path
) -> None:
    other_dir, silent_dir = tmp_path / "other", tmp_path / "silent"
    other_dir.mkdir()
    silent_dir.mkdir()
    with Receiver() as default, Receiver() as own:
        wide = settings.with_overrides(notify=(f"webhook={default.url}",), notify_on="all",
                                       notify_secret=SECRET)
        async with running(wide) as (core, dispatcher):
            await core.projects.add(str(project_dir))
            await core.projects.add(str(other_dir), notify=notify(f"discord={own.url}"))
            await core.projects.add(str(silent_dir), notify=NotifyChange(off=True))
            jobs = [await deploy(core, dispatcher, d, "true") for d in
                    (project_dir, other_dir, silent_dir)]
            for job in jobs:
                assert await ended(core, job) == "complete"
            await default.wait_for(2)
            await own.wait_for(1)
            await asyncio.sleep(0.3)
    assert default.events() == [("started", jobs[0]), ("complete", jobs[0])]
    assert all(r.signed_with(SECRET) for r in default.accepted)
    assert len(own.accepted) == 1 and "complete" in own.accepted[0].json["content"]


async def test_a_target_that_answers_500_gets_the_event_once_it_is_up(
    settings: Settings, project_dir: Path
) -> None:
    with Receiver(answers=[500]) as hook:
        async with running(settings) as (core, dispatcher):
            project = await core.projects.add(str(project_dir),
                                              notify=notify(f"webhook={hook.url}"))
            job = await deploy(core, dispatcher, project_dir, "true")
            assert await ended(core, job) == "complete"
            await hook.wait_for(1)
            # The 200 is sent before the notifier records the attempt: wait for
            # both attempts to be in the audit log, not for the answer alone.
            attempts = await audit(core, dispatcher.notifier, project.id, count=2)
            # The job's end was recorded before the first attempt: a failing
            # target never changes it.
            assert await ended(core, job) == "complete"
    assert [r.json["event"] for r in hook.requests] == ["complete"] * 2
    assert hook.requests[0].body == hook.requests[1].body  # the same bytes, the same signature
    assert hook.events() == [("complete", job)]
    assert attempts == [("notify.failed", "complete", 500), ("notify.sent", "complete", 200)]


async def test_a_4xx_is_given_up_at_once_and_the_next_event_still_goes(
    settings: Settings, project_dir: Path
) -> None:
    with Receiver(answers=[404]) as hook:
        async with running(settings) as (core, dispatcher):
            project = await core.projects.add(
                str(project_dir), notify=notify(f"webhook={hook.url}", events="started,complete"))
            job = await deploy(core, dispatcher, project_dir, "true")
            await hook.wait_for(1)
            attempts = await audit(core, dispatcher.notifier, project.id, count=2)
    assert [r.json["event"] for r in hook.requests] == ["started", "complete"]
    assert hook.events() == [("complete", job)]
    assert attempts == [("notify.gave_up", "started", 404), ("notify.sent", "complete", 200)]


async def test_a_hung_target_delays_no_deploy_and_no_other_target(
    settings: Settings, project_dir: Path
) -> None:
    with Receiver() as stuck, Receiver() as fine:
        stuck.hang()
        async with running(settings.with_overrides(notify_timeout=60)) as (core, dispatcher):
            await core.projects.add(str(project_dir), notify=notify(
                f"webhook={stuck.url}", f"slack={fine.url}", events="all"))
            first = await deploy(core, dispatcher, project_dir, "sleep 0.2")
            second = await deploy(core, dispatcher, project_dir, "true", commit="b")
            assert await ended(core, second) == "complete"
            assert await ended(core, first) == "complete"
            # Both jobs ran to their end while the stuck target has not answered
            # the first event of either (one attempt in flight per job: a job's
            # later events wait behind its first); the other target got them all.
            await fine.wait_for(5)
            await stuck.wait_for(2, accepted=False)
            assert stuck.waiting == len(stuck.requests) == 2
            assert sorted((r.json["event"], r.json["job_id"]) for r in stuck.requests) == \
                sorted([("started", first), ("queued", second)])
            stuck.release()
            await stuck.wait_for(5)
    # Once it answered, the stuck target got every event, in each job's order.
    assert [e for e, j in stuck.events() if j == first] == ["started", "complete"]
    assert [e for e, j in stuck.events() if j == second] == ["queued", "started", "complete"]


async def test_slack_and_discord_get_one_line_and_the_tail_on_failure(
    settings: Settings, project_dir: Path
) -> None:
    with Receiver() as slack, Receiver() as discord:
        public = settings.with_overrides(public_url="https://deploy.example.com/")
        async with running(public) as (core, dispatcher):
            await core.projects.add(str(project_dir), notify=notify(
                f"slack={slack.url}", f"discord={discord.url}"))
            good = await deploy(core, dispatcher, project_dir, "echo fine")
            assert await ended(core, good) == "complete"
            bad = await deploy(core, dispatcher, project_dir, "echo '<!channel> @everyone'",
                               "echo broke; exit 2", commit="fff0000")
            assert await ended(core, bad) == "failed (command_failed)"
            await slack.wait_for(2)
            await discord.wait_for(2)
    ok_text, failed_text = (r.json["text"] for r in slack.accepted)
    assert "\n" not in ok_text and f"deploy {good} (main @ abc1234) complete" in ok_text
    assert f"<https://deploy.example.com/jobs/{good}/logs|log>" in ok_text
    line, _, block = failed_text.partition("\n")
    assert f"deploy {bad} (main @ fff0000) failed: command_failed, exit 2" in line
    assert block.startswith("```") and "broke" in block and "echo fine" not in block
    assert "&lt;!channel&gt;" in block and "<!channel>" not in block
    ok_content, failed_content = (r.json for r in discord.accepted)
    assert "\n" not in ok_content["content"] and good in ok_content["content"]
    assert "broke" in failed_content["content"] and len(failed_content["content"]) <= 2000
    assert failed_content["allowed_mentions"] == {"parse": []}


async def test_superseded_cancelled_and_an_operators_lock_release_are_events(
    settings: Settings, project_dir: Path
) -> None:
    with Receiver() as hook:
        async with running(settings) as (core, dispatcher):
            project = await core.projects.add(
                str(project_dir), queue_policy="supersede",
                notify=notify(f"webhook={hook.url}",
                              events="superseded,cancelled,lock_released"))
            gate = project_dir / "gate"
            holder = await deploy(core, dispatcher, project_dir,
                                  f"while [ ! -e {gate} ]; do sleep 0.05; done")
            old = await deploy(core, dispatcher, project_dir, "true", commit="old")
            new = await deploy(core, dispatcher, project_dir, "true", commit="new")
            await cancel_job(core, new, actor="cli:alice", wait=0)
            await until(lambda: _running(core, holder))
            await release_lock(core, project.id, holder, actor="tui:bob")
            gate.touch()
            await hook.wait_for(3)
            await ended(core, holder)  # lock_lost, or complete if the gate came first
    assert hook.events() == [("superseded", old), ("cancelled", new), ("lock_released", holder)]
    superseded, cancelled, released = (r.json for r in hook.accepted)
    assert superseded["superseded_by"] == new and superseded["reason"] == "superseded"
    assert cancelled["reason"] == "cancelled" and cancelled["started_at"] is None
    assert released["released_by"] == "tui:bob"


async def _running(core: Deployster, job_id: str) -> bool:
    job = await core.job(job_id)
    return job is not None and job.status.value == "running"


async def test_two_notifiers_on_one_redis_send_each_delivery_once(
    settings: Settings, project_dir: Path
) -> None:
    with Receiver() as hook:
        async with running(settings) as (core, dispatcher):
            other = await Deployster.open(settings)
            second = Notifier(other)
            await second.start()
            try:
                await core.projects.add(str(project_dir), notify=notify(
                    f"webhook={hook.url}", events="all"))
                jobs = [await deploy(core, dispatcher, project_dir, "true", commit=f"c{n}")
                        for n in range(6)]
                for job in jobs:
                    assert await ended(core, job) == "complete"
                await hook.wait_for(len(jobs) * 2 + 5)
                await asyncio.sleep(0.5)  # a duplicate would have come by now
            finally:
                await second.stop()
                await other.close()
    sent = hook.events()
    assert len(sent) == len(set(sent))
    for job in jobs:
        assert [e for e, j in sent if j == job] in (["started", "complete"],
                                                   ["queued", "started", "complete"])


async def cancelled_while_queued(core: Deployster, project_dir: Path) -> str:
    """A job queued (not run here) and cancelled: its id (a `cancelled` event)."""
    job = await core.submit(DeployRequest(cd=str(project_dir),
                                          commands=["supervisorctl restart x"]),
                            run_here=False)
    queued = await core.job(job.job_id)
    assert queued is not None
    await core.queue.cancel(queued)
    return job.job_id


async def test_an_event_is_expanded_once(core: Deployster, project_dir: Path) -> None:
    project = await core.projects.add(str(project_dir),
                                      notify=notify("webhook=http://127.0.0.1:9/h",
                                                    events="cancelled"))
    job_id = await cancelled_while_queued(core, project_dir)
    [(entry_id, fields)] = await core.redis.xrange(core.keys.outbox)
    assert fields["e"] == "cancelled" and fields["p"] == str(project.id)
    first, second = Notifier(core), Notifier(core)
    assert await first.expand(entry_id, fields) == 1
    assert await second.expand(entry_id, fields) == 0  # built, but not stored again
    lane = await core.redis.zrange(core.keys.notify_due, 0, -1)
    assert len(lane) == 1
    assert await core.redis.lrange(core.keys.notify_lane(lane[0]), 0, -1) == [f"{entry_id}.0"]
    body = json.loads(await core.redis.hget(core.keys.notify_delivery(f"{entry_id}.0"), "body"))
    assert body["event"] == "cancelled" and body["job_id"] == job_id


async def test_an_event_that_cannot_be_expanded_does_not_hold_up_the_rest(
    core: Deployster, project_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with Receiver() as hook:
        await core.projects.add(str(project_dir), notify=notify(f"webhook={hook.url}",
                                                                events="cancelled"))
        await core.redis.xadd(core.keys.outbox, {"e": "cancelled", "j": "x", "p": "not-a-number"})
        job_id = await cancelled_while_queued(core, project_dir)
        notifier = Notifier(core)
        await notifier.start()
        try:
            await hook.wait_for(1)
        finally:
            await notifier.stop()
    assert hook.events() == [("cancelled", job_id)]
    assert await core.redis.xlen(core.keys.outbox) == 0
    assert "could not be turned into deliveries; it is dropped" in caplog.text
