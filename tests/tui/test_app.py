"""The dashboard driven with Pilot against a real Redis and database.

Each control is exercised end to end: what the modal shows, what the operator
sees afterwards, and the state the core reports.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable, Input, Static

from deployster import events, store
from deployster.models import Job, JobStatus, Project
from deployster.redis_conn import redis_from_url
from deployster.service import DeployRequest, Deployster
from deployster.tui.app import binding_sections, make_app
from deployster.tui.screens.confirm import ConfirmScreen
from deployster.tui.screens.help import HelpScreen
from deployster.tui.screens.log import LogScreen
from deployster.tui.screens.project import ProjectScreen
from deployster.tui.screens.projects import ProjectsScreen
from deployster.tui.widgets.log_pane import MAX_LINES, LogPane
from deployster.tui.widgets.log_view import LogView
from deployster.tui.widgets.status_line import StatusLine
from tests.helpers.deploys import deploy_body, wait_for_status
from tests.helpers.locks import hold_lock
from tests.helpers.server import LiveServer, free_port
from tests.helpers.tui import (
    modal_text,
    open_project,
    project_log,
    project_table,
    projects,
    table_text,
    wait_until,
)

SIZE = (180, 45)
STALE_OWNER = "01JDZZZZZZZZZZZZZZZZZZZZF3"


async def queued_behind_a_lock(core: Deployster, project: Project, cd: Path,
                               commands: list[str], commit: str, ref: str) -> str:
    """The id of a job that stays queued: the lock is held, and nobody runs
    jobs here (no dispatcher)."""
    await hold_lock(core, project.id, STALE_OWNER, 300_000)
    queued = await core.submit(DeployRequest(str(cd), commands, commit, ref), run_here=False)
    return queued.job_id


async def the_queued_job(pilot: Pilot[Any]) -> tuple[DataTable[Any], str]:
    """The project view's queue once it lists the one queued job, and that
    job's row; the queue has the focus (its keys act on the job)."""
    await open_project(pilot)
    queue = pilot.app.screen.query_one("#queue", DataTable)
    await wait_until(pilot, lambda: queue.row_count == 1, what="the queued job")
    queue.focus()
    return queue, table_text(queue)[0]


async def test_projects_view_shows_each_project_and_the_header_counts(
    core: Deployster, tmp_path: Path
) -> None:
    for name in ("my-app", "api", "worker"):
        (tmp_path / name).mkdir()
        await core.projects.add(str(tmp_path / name))
    await hold_lock(core, (await core.projects.find("worker")).id, STALE_OWNER, 300_000)
    app = make_app(core)
    async with app.run_test(size=SIZE) as pilot:
        table = await projects(pilot, 3)
        rows = table_text(table)
        assert [r.split(" | ")[0] for r in rows] == ["api", "my-app", "worker"]
        worker = rows[2]
        assert "01JD…ZZF3 STALE" in worker  # no live job holds it: visibly stale
        assert re.search(r"\| (5m 00s|4m 5\ds) \|", worker), worker  # TTL
        status = app.screen.query_one(StatusLine).text.plain
        assert "3 projects · 1 running · 0 queued" in status
        assert "redis ok" in status and "db ok" in status
        api = await core.projects.find("api")
        assert str(table.get_cell(str(api.id), "ttl")) == "—"  # not locked


async def test_ttl_counts_down_every_second(core: Deployster, project_dir: Path) -> None:
    project = await core.projects.add(str(project_dir))
    await hold_lock(core, project.id, STALE_OWNER, 120_000)
    app = make_app(core, poll_interval=60)  # no fetch: the countdown is local
    async with app.run_test(size=SIZE) as pilot:
        table = await projects(pilot)
        before = str(table.get_cell(str(project.id), "ttl"))
        await asyncio.sleep(2.1)
        await pilot.pause()
        after = str(table.get_cell(str(project.id), "ttl"))
        assert before != after
        assert before.startswith(("2m 00s", "1m 59s", "1m 58s"))


async def test_filter_and_sort(core: Deployster, tmp_path: Path) -> None:
    for name in ("web", "api", "api-worker"):
        (tmp_path / name).mkdir()
        await core.projects.add(str(tmp_path / name))
    app = make_app(core)
    async with app.run_test(size=SIZE) as pilot:
        table = await projects(pilot, 3)
        await pilot.press("slash")
        assert app.screen.query_one("#filter", Input).has_focus
        await pilot.press(*"api")
        await wait_until(pilot, lambda: table.row_count == 2, what="the filter")
        assert [r.split(" | ")[0] for r in table_text(table)] == ["api", "api-worker"]
        await pilot.press("enter")  # keep the filter, back to the table
        assert table.has_focus
        await pilot.press("escape")  # clear it
        await wait_until(pilot, lambda: table.row_count == 3, what="all rows again")
        await pilot.press("S")  # reverse the sort (by name)
        assert [r.split(" | ")[0] for r in table_text(table)] == ["web", "api-worker", "api"]
        await pilot.click("#projects", offset=(2, 0))  # click the "project" header
        await pilot.pause()
        names = [r.split(" | ")[0] for r in table_text(table)]
        assert names in (["api", "api-worker", "web"], ["web", "api-worker", "api"])


async def test_unlock_releases_the_lock_and_records_an_audit_event(
    core: Deployster, project_dir: Path
) -> None:
    project = await core.projects.add(str(project_dir))
    await hold_lock(core, project.id, STALE_OWNER, 300_000)
    app = make_app(core)
    async with app.run_test(size=SIZE) as pilot:
        table = await projects(pilot)
        shown = await modal_text(pilot, "u")
        assert STALE_OWNER in shown  # the holder, in full
        assert "TTL" in shown and ("4m" in shown or "5m" in shown)
        assert "STALE" in shown  # heartbeat
        assert "no live job record" in shown  # whether the owning job still runs
        assert "compare-and-set" in shown
        await pilot.press("n")  # cancel first: nothing happens
        await wait_until(pilot, lambda: isinstance(app.screen, ProjectsScreen), what="closed")
        assert (await core.lock.state(project.id)).owner == STALE_OWNER
        await pilot.press("u")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="modal")
        await pilot.press("y")
        await wait_until(pilot, lambda: "—" == str(table.get_cell(str(project.id), "lock")),
                         what="the lock column to clear")
    assert (await core.lock.state(project.id)).owner is None
    events = await store.select_audit_events(core.db)
    assert events[0]["action"] == "lock.release"
    assert events[0]["job_id"] == STALE_OWNER
    assert events[0]["detail"]["released"] is True
    assert events[0]["actor"].startswith("tui:")


async def test_unlock_never_deletes_a_newer_lock(core: Deployster, project_dir: Path) -> None:
    project = await core.projects.add(str(project_dir))
    await hold_lock(core, project.id, STALE_OWNER, 300_000)
    app = make_app(core)
    async with app.run_test(size=SIZE) as pilot:
        await projects(pilot)
        await pilot.press("u")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="modal")
        # While the operator reads the modal, the lock passes to a newer job.
        assert await core.lock.release(project.id, STALE_OWNER)
        newer = "01JDNEWERNEWERNEWERNEWER00"
        assert await hold_lock(core, project.id, newer, 300_000)
        await pilot.press("y")
        await wait_until(pilot, lambda: len(app._notifications) > 0, what="a notification")
        assert any("no longer holds it" in n.message for n in app._notifications)
    assert (await core.lock.state(project.id)).owner == newer


async def test_cancel_a_queued_job_from_the_project_view(
    core: Deployster, project_dir: Path
) -> None:
    project = await core.projects.add(str(project_dir))
    job_id = await queued_behind_a_lock(core, project, project_dir,
                                        ["echo hi", "supervisorctl restart my-app--main"],
                                        "a1b2c3d4", "main")
    app = make_app(core)
    async with app.run_test(size=SIZE) as pilot:
        table = await projects(pilot)
        assert str(table.get_cell(str(project.id), "queue")) == "1"
        queue, row = await the_queued_job(pilot)
        assert "a1b2c3d" in row and "main" in row and "queued" in row
        shown = await modal_text(pilot, "c")
        assert job_id in shown and "removes the job from the queue" in shown
        await pilot.press("y")
        await wait_until(pilot, lambda: isinstance(app.screen, ProjectScreen), what="closed")
        await wait_until(pilot, lambda: queue.row_count == 0, what="the queue to empty")
    job = await core.job(job_id)
    assert job is not None and job.status is JobStatus.FAILED and job.reason == "cancelled"
    events = await store.select_audit_events(core.db)
    assert events[0]["action"] == "job.cancel" and events[0]["job_id"] == job_id


async def test_a_long_queue_shows_its_head_and_its_length(
    core: Deployster, project_dir: Path
) -> None:
    # The project view reads the head of the queue, not all of it: a queue of
    # thousands must not freeze the dashboard.
    project = await core.projects.add(str(project_dir))
    ids = [await queued_behind_a_lock(core, project, project_dir,
                                      ["echo hi", "supervisorctl restart my-app--main"],
                                      f"c{n:06d}", "main") for n in range(60)]
    app = make_app(core)
    async with app.run_test(size=SIZE) as pilot:
        table = await projects(pilot)
        assert str(table.get_cell(str(project.id), "queue")) == "60"
        await open_project(pilot)
        queue = app.screen.query_one("#queue", DataTable)
        await wait_until(pilot, lambda: queue.row_count == 50, what="the head of the queue")
        rows = table_text(queue)
        assert rows[0].split(" | ")[:2] == ["1", f"{ids[0][:4]}…{ids[0][-4:]}"]
        assert "c000049" in rows[49] and not any("c000050" in r for r in rows)
        title = str(app.screen.query_one("#queue-title", Static).render())
        # (then: no deploy server runs here, and the title says so)
        assert title.startswith("queue · 60 job(s) · first 50 shown · no runner")


async def test_the_project_view_reads_on_events_and_counts_time_between_reads(
    core: Deployster, project_dir: Path
) -> None:
    """No poll here (the next one is a minute away): a job queued while the
    project is open shows from its event alone, and its waiting time moves
    every second with nothing read."""
    project = await core.projects.add(str(project_dir))
    await hold_lock(core, project.id, STALE_OWNER, 300_000)
    app = make_app(core, poll_interval=60)
    async with app.run_test(size=SIZE) as pilot:
        await projects(pilot)
        await open_project(pilot)
        queue = app.screen.query_one("#queue", DataTable)
        await core.submit(DeployRequest(str(project_dir), ["supervisorctl restart x"],
                                        "a1b2c3d4", "main"), run_here=False)
        await wait_until(pilot, lambda: queue.row_count == 1, what="the queued job")
        job = queue.coordinate_to_cell_key(queue.cursor_coordinate).row_key
        before = str(queue.get_cell(job, "waiting"))
        await wait_until(pilot, lambda: str(queue.get_cell(job, "waiting")) != before,
                         timeout=3, what="the waiting time to move")


async def test_a_requests_text_is_shown_as_text_never_read_as_markup(
    core: Deployster, tmp_path: Path
) -> None:
    # A commit, ref or project path holding "[" was read as markup in the
    # tables and the modal: "[b]" styled the text, and "feat/[/x]" raised
    # MarkupError, which took the dashboard down.
    path = tmp_path / "apps[" / "x]"
    path.mkdir(parents=True)
    project = await core.projects.add(str(path), name="brackets")
    job_id = await queued_behind_a_lock(
        core, project, path, ["echo [b]hi[/b]", "supervisorctl restart brackets"],
        "[/x]abc123", "feat/[/x]")
    app = make_app(core)
    async with app.run_test(size=SIZE) as pilot:
        table = await projects(pilot)
        assert "apps[/x]" in table_text(table)[0]
        _, row = await the_queued_job(pilot)
        assert "[/x]abc" in row and "feat/[/x]" in row
        shown = await modal_text(pilot, "r")
        assert "Redeploy brackets at [/x]abc?" in shown and "echo [b]hi[/b]" in shown
        assert job_id in shown
        await pilot.press("n")
        await wait_until(pilot, lambda: isinstance(app.screen, ProjectScreen), what="closed")
        assert app.is_running


async def _finished_deploy(server: LiveServer, core: Deployster, project_dir: Path,
                           *commands: str) -> str:
    async with server.client() as client:
        job = (await client.post("/deploy", json=deploy_body(project_dir, *commands))).json()
        final = await wait_for_status(client, job["job_id"])
        assert final["status"] == "complete", final
    for _ in range(200):  # the history writer flushes about once a second
        if await store.select_deployment(core.db, job["job_id"]):
            break
        await asyncio.sleep(0.05)
    return str(job["job_id"])


async def test_redeploy_queues_a_new_job_with_the_same_commands(
    server: LiveServer, core: Deployster, project_dir: Path
) -> None:
    await core.projects.add(str(project_dir), pipeline=[{
        "stage_name": "Production", "git_branch": "main",
        "environment_variables": [{"key": "API_KEY", "value": "hunter2-secret"}]}])
    old = await _finished_deploy(server, core, project_dir, 'echo first-run "$API_KEY"')
    app = make_app(core)
    async with app.run_test(size=SIZE) as pilot:
        await projects(pilot, showing="✔")  # the last deploy
        shown = await modal_text(pilot, "r")
        assert old in shown and 'echo first-run "$API_KEY"' in shown and "abc1234" in shown
        await pilot.press("y")
        await wait_until(pilot, lambda: any("redeploy of" in n.message
                                            for n in app._notifications), what="queued")
    events = await store.select_audit_events(core.db)
    assert events[0]["action"] == "job.redeploy" and events[0]["detail"] == {"from": old}
    new = await core.job(events[0]["job_id"])
    assert new is not None and new.id != old
    assert new.commands[0] == 'echo first-run "$API_KEY"' and new.commit_hash == "abc1234"
    async with server.client() as client:
        final = await wait_for_status(client, new.id)
    assert final["status"] == "complete" and "first-run ***" in str(final["logs"])


async def test_redeploy_of_a_job_whose_commands_held_a_secret_is_refused(
    server: LiveServer, core: Deployster, project_dir: Path
) -> None:
    """The command was stored with the value masked: there is nothing to run
    again, and the operator is told where the value belongs instead."""
    secret = "hunter2-secret"
    await core.projects.add(str(project_dir), pipeline=[{
        "stage_name": "Production", "git_branch": "main",
        "environment_variables": [{"key": "API_KEY", "value": secret}]}])
    old = await _finished_deploy(server, core, project_dir, f"echo first-run # {secret}")
    app = make_app(core)
    async with app.run_test(size=SIZE) as pilot:
        await projects(pilot, showing="✔")  # the last deploy
        await pilot.press("r")
        await wait_until(pilot, lambda: any("cannot be redeployed" in n.message
                                            for n in app._notifications), what="refusal")
        message = next(n.message for n in app._notifications
                       if "cannot be redeployed" in n.message)
        assert "stage variable" in message and secret not in message
        assert not isinstance(app.screen, ConfirmScreen)  # nothing to confirm
    assert not [e for e in await store.select_audit_events(core.db)
                if e["action"] == "job.redeploy"]
    assert [j.id for j in await store.select_deployments(core.db)] == [old]


async def test_log_follows_a_running_job_and_shows_history_of_finished_ones(
    server: LiveServer, core: Deployster, project_dir: Path
) -> None:
    await core.projects.add(str(project_dir))
    script = "for i in 1 2 3 4 5 6 7 8; do echo line-$i; sleep 0.4; done"
    async with server.client() as client:
        job = (await client.post("/deploy", json=deploy_body(project_dir, script))).json()
    app = make_app(core)
    async with app.run_test(size=SIZE) as pilot:
        pane = await project_log(pilot, showing="running", text="line-1")
        assert "line-8" not in pane.text
        title = str(app.screen.query_one("#log-title", Static).render())
        assert "following" in title
        await wait_until(pilot, lambda: "line-8" in pane.text, what="the last line")
        await wait_until(pilot, lambda: "finished" in str(
            app.screen.query_one("#log-title", Static).render()), what="the end")
        # Full-screen log, and its keys.
        await pilot.press("l")
        await wait_until(pilot, lambda: isinstance(app.screen, LogScreen), what="log screen")
        full = app.screen.query_one(LogPane)
        await wait_until(pilot, lambda: "line-8" in full.text, what="the full log")
        await pilot.press("w")
        assert full.wrap and "wrap" in str(app.screen.query_one("#log-title", Static).render())
        await pilot.press("f")
        assert not full.follow
        await pilot.press("g", "G", "escape")
        assert isinstance(app.screen, ProjectScreen)
    assert job["job_id"]


async def test_follow_off_pauses_and_on_resumes_without_losing_lines(
    server: LiveServer, core: Deployster, project_dir: Path
) -> None:
    await core.projects.add(str(project_dir))
    script = "for i in $(seq 1 12); do echo step-$i; sleep 0.3; done"
    async with server.client() as client:
        job = (await client.post("/deploy", json=deploy_body(project_dir, script))).json()
    await asyncio.sleep(0.3)
    app = make_app(core)
    async with app.run_test(size=SIZE) as pilot:
        app.push_screen(LogScreen(app.reader, job["job_id"]))
        await wait_until(pilot, lambda: isinstance(app.screen, LogScreen), what="log screen")
        pane = app.screen.query_one(LogPane)
        await wait_until(pilot, lambda: "step-1" in pane.text, what="output")
        await pilot.press("f")  # pause
        paused_at = pane.text
        await asyncio.sleep(1.0)
        await pilot.pause()
        assert pane.text == paused_at
        assert "paused" in str(app.screen.query_one("#log-title", Static).render())
        await pilot.press("f")  # resume: catches up from the last id
        await wait_until(pilot, lambda: "step-12" in pane.text, what="the end")
        lines = [ln for ln in pane.text.splitlines() if ln.startswith("step-")]
        assert lines == [f"step-{i}" for i in range(1, 13)]


async def test_help_lists_every_key_and_q_quits(core: Deployster, project_dir: Path) -> None:
    await core.projects.add(str(project_dir))
    app = make_app(core)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("question_mark")
        await wait_until(pilot, lambda: isinstance(app.screen, HelpScreen), what="help")
        text = str(app.screen.query_one("#help-keys", Static).render())
        for words in ("Unlock", "Cancel", "Redeploy", "Follow", "Wrap", "Filter", "Quit",
                      "Top", "Bottom", "More history", "Timestamps", "Search", "Next match",
                      "Previous match", "Sort"):
            assert words in text
        await pilot.press("escape")
        assert isinstance(app.screen, ProjectsScreen)
        await pilot.press("q")
    assert app.return_code == 0 or app.return_code is None


async def test_every_action_is_in_the_command_palette(
    core: Deployster, project_dir: Path
) -> None:
    project = await core.projects.add(str(project_dir))
    await hold_lock(core, project.id, STALE_OWNER, 300_000)
    app = make_app(core)
    async with app.run_test(size=SIZE) as pilot:
        await projects(pilot)
        await pilot.press("ctrl+p")
        await pilot.press(*"unlock")
        await pilot.pause(0.5)
        await pilot.press("enter")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen),
                         what="the unlock modal, from the palette")
        await pilot.press("escape")
        # The log pane's actions too (a widget's bindings, not the screen's).
        job_id = "01JDPALETTEPALETTEPALETTE0"
        await _insert_history_row(core, {"id": job_id, "project_id": project.id,
                                         "project": project.name, "cd": project.path,
                                         "log": "one\n"})
        app.push_screen(LogScreen(app.reader, job_id))
        await wait_until(pilot, lambda: isinstance(app.screen, LogScreen), what="log screen")
        pane = app.screen.query_one(LogPane)
        for name, check in (("timestamps", lambda: pane.timestamps),
                            ("wrap", lambda: pane.wrap)):
            await pilot.press("ctrl+p")
            await pilot.press(*name)
            await pilot.pause(0.5)
            await pilot.press("enter")
            await wait_until(pilot, check, what=f"{name}, from the palette")


def test_every_binding_has_a_description() -> None:
    for _, bindings in binding_sections():
        for b in bindings:
            assert b.description, b


@pytest.mark.parametrize("lines", [1_000_000])
async def test_a_million_line_log_shows_a_bounded_tail(
    core: Deployster, project_dir: Path, lines: int
) -> None:
    project = await core.projects.add(str(project_dir))
    job_id = "01JDBIGBIGBIGBIGBIGBIGBIG0"
    body = "".join(f"line {i:07d} of a very chatty build\n" for i in range(lines))
    row = {"id": job_id, "project_id": project.id, "project": project.name,
           "cd": project.path, "commands": '["yarn build"]', "commit_hash": "abc1234",
           "ref_name": "main", "status": "complete", "log": body}
    await _insert_history_row(core, row)
    app = make_app(core)
    async with app.run_test(size=SIZE) as pilot:
        app.push_screen(LogScreen(app.reader, job_id))
        await wait_until(pilot, lambda: isinstance(app.screen, LogScreen), what="log screen")
        pane = app.screen.query_one(LogPane)
        await wait_until(pilot, lambda: f"line {lines - 1:07d}" in pane.text, what="the tail")
        assert len(pane.lines) <= MAX_LINES
        title = str(app.screen.query_one("#log-title", Static).render())
        assert "showing the last" in title
        await pilot.press("g")
        await pilot.press("G")


async def _insert_history_row(core: Deployster, data: dict[str, object]) -> None:
    job = Job(id=str(data["id"]), project_id=int(str(data["project_id"])),
              project=str(data["project"]), cd=str(data["cd"]), commands=["yarn build"],
              commit_hash="abc1234", ref_name="main", status=JobStatus.COMPLETE,
              queued_at="2026-01-01T00:00:00.000Z", started_at="2026-01-01T00:00:01.000Z",
              finished_at="2026-01-01T00:05:00.000Z")
    await store.upsert_deployments(core.db, [store.deployment_row(job, log=str(data["log"]))])
    # As the history writer does: a dashboard reads the history again.
    await core.redis.publish(core.keys.feed, events.encode(events.HISTORY))


async def test_history_is_paged_on_demand(core: Deployster, project_dir: Path) -> None:
    project = await core.projects.add(str(project_dir))
    rows = []
    for n in range(120):
        job = Job(id=f"01JA{n:022d}", project_id=project.id, project=project.name,
                  cd=project.path, commands=["yarn build"], commit_hash=f"{n:07x}",
                  ref_name="main", status=JobStatus.COMPLETE,
                  started_at="2026-01-01T00:00:00.000Z", finished_at="2026-01-01T00:01:00.000Z")
        rows.append(store.deployment_row(job, log="ok\n"))
    await store.upsert_deployments(core.db, rows)
    app = make_app(core)
    async with app.run_test(size=SIZE) as pilot:
        await projects(pilot)
        hist = await project_table(pilot, "history", 50)  # the first page
        assert "m for more" in str(app.screen.query_one("#history-title", Static).render())
        assert table_text(hist)[0].split(" | ")[1] == "01JA…0119"  # newest first
        await pilot.press("m")
        await wait_until(pilot, lambda: hist.row_count == 100, what="the second page")
        await pilot.press("m")
        await wait_until(pilot, lambda: hist.row_count == 120, what="the last page")
        assert "m for more" not in str(app.screen.query_one("#history-title", Static).render())


async def test_no_refresh_while_a_modal_is_open(core: Deployster, project_dir: Path) -> None:
    project = await core.projects.add(str(project_dir))
    await hold_lock(core, project.id, STALE_OWNER, 300_000)
    app = make_app(core, poll_interval=0.1)
    async with app.run_test(size=SIZE) as pilot:
        await projects(pilot)
        await pilot.press("u")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="modal")
        await pilot.pause(0.3)
        before = app.refreshes
        await asyncio.sleep(1.0)
        assert app.refreshes == before  # what the operator confirms does not move
        await pilot.press("escape")
        await wait_until(pilot, lambda: app.refreshes > before, what="refreshes again")
        # At most 4 fetches a second, however often it is woken.
        start, t0 = app.refreshes, asyncio.get_running_loop().time()
        for _ in range(40):
            app.request_refresh()
            await asyncio.sleep(0.025)
        elapsed = asyncio.get_running_loop().time() - t0
        assert app.refreshes - start <= 4 * elapsed + 1


async def test_cancel_the_running_job_from_the_projects_view(
    server: LiveServer, core: Deployster, project_dir: Path
) -> None:
    await core.projects.add(str(project_dir))
    async with server.client() as client:
        job = (await client.post("/deploy", json=deploy_body(project_dir, "sleep 60"))).json()
    app = make_app(core)
    async with app.run_test(size=SIZE) as pilot:
        table = await projects(pilot, showing="running")
        shown = await modal_text(pilot, "c")
        assert job["job_id"] in shown and "stops the running job" in shown
        await pilot.press("y")
        await wait_until(pilot, lambda: table_text(table)[0].split(" | ")[1] == "—",
                         what="the lock to be free")
        # The last deploy comes from SQL, which the history writer fills a
        # moment after the lock is free; its ``history`` event brings it in
        # (without it the dashboard would reuse the old value for a minute).
        await wait_until(pilot, lambda: "✘" in table_text(table)[0],
                         what="the last deploy: failed")
    async with server.client() as client:
        final = await wait_for_status(client, job["job_id"])
    assert final["status"] == "failed" and final.get("reason") == "cancelled"


async def test_redis_down_is_shown_and_the_dashboard_keeps_running(
    core: Deployster, project_dir: Path
) -> None:
    await core.projects.add(str(project_dir))
    app = make_app(core, poll_interval=0.2)
    async with app.run_test(size=SIZE) as pilot:
        table = await projects(pilot)
        working = core.redis
        core.redis = redis_from_url(f"redis://127.0.0.1:{free_port()}/0")  # nobody listens
        try:
            status = app.screen.query_one(StatusLine)
            await wait_until(pilot, lambda: "redis down" in status.text.plain,
                             what="redis down in the header")
            assert table.row_count == 1  # the last rows stay on screen
            # The rows on screen are old, and the header says how old.
            await wait_until(pilot, lambda: "data from" in status.text.plain,
                             what="the age of the data in the header")
            await pilot.press("enter")  # the project view opens; its reads fail quietly
            await wait_until(pilot, lambda: isinstance(app.screen, ProjectScreen), what="open")
            # ... and its title says Redis is down (it has no header of its own).
            title = app.screen.query_one("#project-title", Static)
            await wait_until(pilot, lambda: "redis down" in str(title.render()),
                             what="redis down in the project title")
            await pilot.press("escape")
        finally:
            await core.redis.aclose()
            core.redis = working
        await wait_until(pilot, lambda: "redis ok" in status.text.plain, what="redis ok again")


def log_title(app: object) -> str:
    return str(app.screen.query_one("#log-title", Static).render())  # type: ignore[attr-defined]


async def test_log_search_timestamps_and_escape(
    server: LiveServer, core: Deployster, project_dir: Path
) -> None:
    await core.projects.add(str(project_dir))
    # The command line is in the log too: it spells no "needle" itself.
    script = ("e=eedle; echo alpha; echo n$e-one; sleep 0.3; echo beta; echo N$e-two; "
              "echo gamma; echo n$e-three")
    old = await _finished_deploy(server, core, project_dir, script)
    app = make_app(core)
    async with app.run_test(size=SIZE) as pilot:
        app.push_screen(LogScreen(app.reader, old))
        await wait_until(pilot, lambda: isinstance(app.screen, LogScreen), what="log screen")
        pane = app.screen.query_one(LogPane)
        view = app.screen.query_one(LogView)
        await wait_until(pilot, lambda: "needle-three" in pane.text, what="the log")
        # Timestamps: each line's write time, from the stream (the t field).
        await pilot.press("t")
        assert pane.timestamps and "timestamps" in log_title(app)
        line = view._row_text(view.lines.index("alpha"), 0, None).plain
        assert re.match(r"\d\d:\d\d:\d\d\.\d\d\d alpha$", line), line
        await pilot.press("t")
        assert not pane.timestamps
        # Search: case-insensitive, every match marked, n/N move and wrap around.
        await pilot.press("slash", *"needle", "enter")
        assert view.has_focus
        assert [view.lines[m - view.first] for m in view.matches] == [
            "needle-one", "Needle-two", "needle-three"]
        assert "/needle 1 of 3" in log_title(app)
        assert not pane.follow  # a search stops following: the match stays put
        await pilot.press("n")
        assert "/needle 2 of 3" in log_title(app)
        await pilot.press("n", "n")
        assert "/needle 1 of 3" in log_title(app)  # wrapped around
        await pilot.press("N")
        assert "/needle 3 of 3" in log_title(app)
        # A capital makes it case-sensitive (smart case, as in k9s and less).
        await pilot.press("slash")
        await pilot.press(*["backspace"] * 6, *"Needle", "enter")
        assert "/Needle 1 of 1" in log_title(app)
        await pilot.press("slash")
        await pilot.press(*["backspace"] * 6, *"zebra", "enter")
        assert "/zebra no match" in log_title(app)
        # Escape clears the search first, then goes back.
        await pilot.press("escape")
        assert view.pattern is None and "/zebra" not in log_title(app)
        assert isinstance(app.screen, LogScreen)
        await pilot.press("escape")
        await wait_until(pilot, lambda: isinstance(app.screen, ProjectsScreen), what="back home")


async def test_a_log_from_history_has_no_timestamps_and_says_so(
    core: Deployster, project_dir: Path
) -> None:
    project = await core.projects.add(str(project_dir))
    job_id = "01JDHISTHISTHISTHISTHIST00"
    await _insert_history_row(core, {"id": job_id, "project_id": project.id,
                                     "project": project.name, "cd": project.path,
                                     "log": "one\ntwo\n"})
    app = make_app(core)
    async with app.run_test(size=SIZE) as pilot:
        app.push_screen(LogScreen(app.reader, job_id))
        await wait_until(pilot, lambda: isinstance(app.screen, LogScreen), what="log screen")
        pane = app.screen.query_one(LogPane)
        await wait_until(pilot, lambda: pane.text == "one\ntwo", what="the history log")
        await pilot.press("t")
        assert "no timestamps (history)" in log_title(app)


async def test_wrap_keeps_every_character_and_search_finds_a_wrapped_match(
    core: Deployster, project_dir: Path
) -> None:
    project = await core.projects.add(str(project_dir))
    job_id = "01JDWRAPWRAPWRAPWRAPWRAP00"
    long_line = "x" * 300 + "NEEDLE" + "y" * 100
    await _insert_history_row(core, {"id": job_id, "project_id": project.id,
                                     "project": project.name, "cd": project.path,
                                     "log": "".join(f"line {i}\n" for i in range(200))
                                     + long_line + "\nlast\n"})
    app = make_app(core)
    async with app.run_test(size=(80, 20)) as pilot:
        app.push_screen(LogScreen(app.reader, job_id))
        await wait_until(pilot, lambda: isinstance(app.screen, LogScreen), what="log screen")
        view = app.screen.query_one(LogView)
        await wait_until(pilot, lambda: "last" in view.lines, what="the log")
        await pilot.press("w")
        assert view.wrap and view.virtual_size.height > len(view.lines)
        index = view.lines.index(long_line)
        rows = [r for r in view._rows if r[0] == index]
        pieces = []
        for n, (_, start) in enumerate(rows):
            end = rows[n + 1][1] if n + 1 < len(rows) else None
            pieces.append(view._row_text(index, start, end).plain)
        assert "".join(pieces) == long_line and len(pieces) > 1
        await pilot.press("slash", *"NEEDLE", "enter")
        assert "1 of 1" in log_title(app)
        first_row = view.row_of(index)
        assert view.scroll_offset.y <= first_row < view.scroll_offset.y + view.size.height


async def test_leaving_a_log_while_it_streams_never_crashes(
    server: LiveServer, core: Deployster, project_dir: Path
) -> None:
    """Escape from a project whose log is followed: the pane's children go
    before the pane and its worker, and a chunk arriving in between used to end
    the dashboard with a NoMatches traceback."""
    await core.projects.add(str(project_dir))
    script = "for i in $(seq 1 100); do echo out-$i; sleep 0.05; done; sleep 30"
    async with server.client() as client:
        job = (await client.post("/deploy", json=deploy_body(project_dir, script))).json()
    app = make_app(core)
    async with app.run_test(size=SIZE) as pilot:
        app.push_screen(LogScreen(app.reader, job["job_id"]))
        await wait_until(pilot, lambda: isinstance(app.screen, LogScreen), what="log screen")
        pane = app.screen.query_one(LogPane)
        await wait_until(pilot, lambda: "out-2" in pane.text, what="output")
        # What a screen's removal does first: the pane's children go.
        await pane.query_one("#log").remove()
        await pane.query_one("#log-title").remove()
        await asyncio.sleep(1.0)  # more output arrives for the follower
        await pilot.pause()
        assert app.is_running and app.return_code is None
        await pilot.press("escape")
        await wait_until(pilot, lambda: isinstance(app.screen, ProjectsScreen), what="back")
        assert app.is_running


async def test_a_queued_jobs_log_says_so_and_follows_once_it_runs(
    server: LiveServer, core: Deployster, project_dir: Path
) -> None:
    await core.projects.add(str(project_dir))
    async with server.client() as client:
        await client.post("/deploy", json=deploy_body(project_dir, "sleep 2"))
        second = (await client.post("/deploy", json=deploy_body(
            project_dir, "echo second-output"))).json()
    assert second.get("queued")
    app = make_app(core)
    async with app.run_test(size=SIZE) as pilot:
        app.push_screen(LogScreen(app.reader, second["job_id"]))
        await wait_until(pilot, lambda: isinstance(app.screen, LogScreen), what="log screen")
        pane = app.screen.query_one(LogPane)
        await wait_until(pilot, lambda: "queued: no output yet" in log_title(app),
                         what="queued in the title")  # not "finished"
        await wait_until(pilot, lambda: "second-output" in pane.text, timeout=20,
                         what="its output once it ran")
        await wait_until(pilot, lambda: "finished" in log_title(app), what="the end")


async def test_the_selection_stays_on_its_job_when_history_grows(
    core: Deployster, project_dir: Path
) -> None:
    """A job landing at the top of history must not move the cursor (and so the
    job c and r act on) to another job."""
    project = await core.projects.add(str(project_dir))
    base = {"project_id": project.id, "project": project.name, "cd": project.path,
            "log": "x\n"}
    for i in range(3):
        await _insert_history_row(core, {**base, "id": f"01JD{i:022d}"})
    app = make_app(core, poll_interval=0.2)
    async with app.run_test(size=SIZE) as pilot:
        await projects(pilot)
        await open_project(pilot)
        screen = app.screen
        assert isinstance(screen, ProjectScreen)
        hist = screen.query_one("#history", DataTable)
        await wait_until(pilot, lambda: hist.row_count == 3, what="history")
        hist.focus()
        await pilot.press("down")
        await wait_until(pilot, lambda: screen.selected_job is not None and
                         screen.selected_job.id == f"01JD{1:022d}", what="the second job")
        await _insert_history_row(core, {**base, "id": f"01JD{9:022d}"})  # a newer one
        await wait_until(pilot, lambda: hist.row_count == 4, what="the new job")
        await pilot.pause(0.3)
        assert screen.selected_job is not None
        assert screen.selected_job.id == f"01JD{1:022d}"
        assert hist.cursor_row == 2


async def test_the_unlock_modal_reads_the_lock_again(
    core: Deployster, project_dir: Path
) -> None:
    """No fetch runs while a modal (say ?) is open: the unlock modal must not
    show that old holder, TTL and heartbeat as if they were current."""
    project = await core.projects.add(str(project_dir))
    await hold_lock(core, project.id, STALE_OWNER, 300_000)
    app = make_app(core, poll_interval=60)
    async with app.run_test(size=SIZE) as pilot:
        await projects(pilot, showing="STALE")  # the locked row
        newer = "01JDNEWERNEWERNEWERNEWER00"
        assert await core.lock.release(project.id, STALE_OWNER)
        assert await hold_lock(core, project.id, newer, 120_000)
        shown = await modal_text(pilot, "u")
        assert newer in shown and STALE_OWNER not in shown
        assert re.search(r"TTL\s+(2m 00s|1m 5\ds)", shown), shown


@pytest.mark.parametrize("modal", ["help", "confirm"])
async def test_q_quits_from_a_modal_too(core: Deployster, project_dir: Path, modal: str) -> None:
    """Modals hide the app's bindings: q must still quit (a confirmation is
    left undone), as the keys list's "everywhere" section promises."""
    project = await core.projects.add(str(project_dir))
    await hold_lock(core, project.id, STALE_OWNER, 300_000)
    app = make_app(core)
    async with app.run_test(size=SIZE) as pilot:
        await projects(pilot)
        await pilot.press("question_mark" if modal == "help" else "u")
        kind = HelpScreen if modal == "help" else ConfirmScreen
        await wait_until(pilot, lambda: isinstance(app.screen, kind), what="the modal")
        await pilot.press("q")
        await wait_until(pilot, lambda: not app.is_running, what="the app to quit")
    assert app.return_code in (0, None)
    assert (await core.lock.state(project.id)).owner == STALE_OWNER  # nothing released
