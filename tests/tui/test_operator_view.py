"""What the operator reads off the dashboard, driven with Pilot against a real
Redis, database and server: whether anything runs the queue, which data is
shown, labels that mean one thing, a log's colours (docs: README.md#the-dashboard)."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from textual.widgets import DataTable, Static

from deployster.service import Deployster
from deployster.settings import Settings
from deployster.tui.app import make_app
from deployster.tui.format import data_source
from deployster.tui.widgets.status_line import StatusLine
from tests.helpers.deploys import deploy_body, wait_for_status
from tests.helpers.server import start_server
from tests.helpers.tui import modal_text, open_project, projects, table_text, wait_until

SIZE = (180, 45)


# ------------------------------------------------- is anything running the queue?


async def test_a_dead_runner_is_said_plainly_and_its_job_stops_counting(
    core: Deployster, settings: Settings, project_dir: Path, tmp_path: Path
) -> None:
    """The header says whether a deploy server is alive. After a kill -9 its
    job is still marked running: the dashboard says there is no runner, that
    the job's runner is gone (its clock stopped at the last heartbeat) and that
    the queued job waits for one, and the unlock modal promises no start. A
    new server takes over, and the header says so."""
    await core.projects.add(str(project_dir))
    first = start_server(settings, tmp_path / "first.log")
    try:
        async with first.client() as client:
            running = (await client.post("/deploy", json=deploy_body(
                project_dir, "sleep 30", commit="aaaa111"))).json()["job_id"]
            await client.post("/deploy", json=deploy_body(project_dir, "true",
                                                           commit="bbbb222"))
        app = make_app(core, poll_interval=0.2)
        async with app.run_test(size=SIZE) as pilot:
            table = await projects(pilot, showing="running")
            status = app.screen.query_one(StatusLine)
            await wait_until(pilot, lambda: "runner ok" in status.text.plain, what="runner ok")
            first.stop(signal.SIGKILL)
            await wait_until(pilot, lambda: "no runner" in status.text.plain, what="no runner")
            assert "1 queued (waiting for a runner)" in status.text.plain
            await wait_until(pilot, lambda: "runner gone" in table_text(table)[0],
                             what="the job's runner gone")
            key = str((await core.projects.find(project_dir.name)).id)
            stopped = str(table.get_cell(key, "running"))
            await asyncio.sleep(1.5)
            await pilot.pause()
            assert str(table.get_cell(key, "running")) == stopped  # its clock stopped

            shown = await modal_text(pilot, "u")
            assert "its runner is gone" in shown
            assert "No deploy server (runner) is alive" in shown
            assert "starts only once one runs" in shown
            await pilot.press("n")

            await open_project(pilot)
            queue = app.screen.query_one("#queue", DataTable)
            await wait_until(pilot, lambda: queue.row_count == 2, what="the queue")
            rows = table_text(queue)
            assert "runner gone" in rows[0] and "queued · no runner" in rows[1]
            title = str(app.screen.query_one("#queue-title", Static).render())
            assert "no runner is alive" in title
            await pilot.press("escape")

            second = start_server(settings, tmp_path / "second.log")
            try:
                await wait_until(pilot, lambda: "runner ok" in status.text.plain,
                                 what="runner ok again")
                async with second.client() as client:
                    ended = await wait_for_status(client, running)
                assert ended["reason"] == "interrupted"
            finally:
                second.stop()
    finally:
        first.stop(signal.SIGKILL)


# ------------------------------------------------------ which data is this?


def hint(app: object) -> str:
    """The line over the projects table saying why it is empty ('' if hidden)."""
    widget = app.screen.query_one("#projects-hint", Static)  # type: ignore[attr-defined]
    return str(widget.render()) if widget.display else ""


async def test_the_data_shown_is_named_and_an_empty_table_says_how_to_fill_it(
    core: Deployster, settings: Settings, project_dir: Path
) -> None:
    app = make_app(core)
    async with app.run_test(size=SIZE) as pilot:
        table = app.screen.query_one("#projects", DataTable)
        # The Redis and database this dashboard reads, on the table's border.
        border = str(table.border_title)
        assert f"redis {settings.redis_url}" in border and "db sqlite:///" in border
        assert f"namespace {settings.namespace}" in border
        await wait_until(pilot, lambda: "No projects yet" in hint(app), what="the hint")
        assert "deployster project add PATH" in hint(app)
        assert "DEPLOYSTER_ALLOWED_ROOTS" in hint(app)
        await core.projects.add(str(project_dir))  # its event brings the row in
        await wait_until(pilot, lambda: table.row_count == 1, what="the project")
        assert hint(app) == ""
        await pilot.press("slash", *"nothing-like-it")
        await wait_until(pilot, lambda: "No project matches 'nothing-like-it'" in hint(app),
                         what="the filter's hint")
        await pilot.press("escape")
        await wait_until(pilot, lambda: hint(app) == "", what="the hint to go")


def test_the_data_named_never_shows_a_password(tmp_path: Path) -> None:
    shown = data_source(Settings(
        data_dir=tmp_path, redis_url="redis://:r3dis-secret@10.0.0.5:6379/0",
        database_url="postgresql://deploy:db-secret@10.0.0.6/deployster", namespace="prod"))
    assert shown == ("redis redis://:***@10.0.0.5:6379/0 · "
                     "db postgresql://deploy:***@10.0.0.6/deployster · namespace prod")
    # Everything in the data dir: the data dir says it all.
    assert data_source(Settings(data_dir=tmp_path)) == \
        f"data {tmp_path} (embedded Redis, SQLite)"
