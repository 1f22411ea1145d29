"""What the operator reads off the dashboard, driven with Pilot against a real
Redis, database and server: whether anything runs the queue, which data is
shown, labels that mean one thing, a log's colours (docs: README.md#the-dashboard)."""

from __future__ import annotations

import asyncio
import re
import signal
from pathlib import Path

from textual.geometry import Spacing
from textual.widgets import DataTable, Static
from textual.widgets._toast import Toast

from deployster.control import cancel_job
from deployster.history import HistoryWriter
from deployster.service import DeployRequest, Deployster
from deployster.settings import Settings
from deployster.tui.app import make_app
from deployster.tui.format import data_source
from deployster.tui.screens.help import HelpScreen
from deployster.tui.screens.log import LogScreen
from deployster.tui.widgets.status_line import StatusLine
from tests.helpers.deploys import deploy_body, wait_for_status
from tests.helpers.locks import hold_lock
from tests.helpers.server import LiveServer, start_server
from tests.helpers.tui import (
    modal_text,
    open_project,
    project_log,
    project_table,
    projects,
    screen_text,
    style_on_screen,
    table_text,
    wait_until,
)

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


# ------------------------------------------------------ labels that mean one thing


async def test_the_cursor_stays_on_its_project_when_the_sort_moves_it(
    core: Deployster, tmp_path: Path
) -> None:
    """A new sort order moves the selected project, and so does its queue
    growing under a sort by queue length: the cursor (what u, c and r act
    on) moves with it."""
    names = ("alpha", "beta", "gamma")
    for name in names:
        (tmp_path / name).mkdir()
        await core.projects.add(str(tmp_path / name))
    gamma = await core.projects.find("gamma")
    await hold_lock(core, gamma.id, "01JDZZZZZZZZZZZZZZZZZZZZF3", 300_000)
    app = make_app(core, poll_interval=0.2)
    async with app.run_test(size=SIZE) as pilot:
        table = await projects(pilot, 3)
        await pilot.press("down", "down")  # gamma, the third row by name

        def selected() -> str:
            return table_text(table)[table.cursor_row].split(" | ")[0]

        assert selected() == "gamma"
        await pilot.press("s")  # by lock: the locked one first
        assert table.cursor_row == 0 and selected() == "gamma"
        await pilot.press("S")  # reversed: last
        assert table.cursor_row == 2 and selected() == "gamma"
        await pilot.press(*"ssss")  # TTL, heartbeat, running, queue
        assert app.screen.sort_column == "queue"  # type: ignore[attr-defined]
        assert table.cursor_row == 2 and selected() == "gamma"
        await core.submit(DeployRequest(str(tmp_path / "gamma"), ["supervisorctl restart x"],
                                        "a1b2c3d4", "main"), run_here=False)
        await wait_until(pilot, lambda: table_text(table)[0].startswith("gamma"),
                         what="gamma to move to the top")
        assert table.cursor_row == 0 and selected() == "gamma"
        await pilot.press("down")
        below = selected()
        await pilot.resize_terminal(90, 30)  # the compact table: made again
        await wait_until(pilot, lambda: "holder" in str(table.ordered_columns[1].label),
                         what="the compact columns")
        assert table.cursor_row == 1 and selected() == below


async def test_the_queue_says_what_its_times_are_and_the_full_log_names_its_job(
    server: LiveServer, core: Deployster, project_dir: Path
) -> None:
    """The queue's waiting column: how long a queued job has waited, and for
    the running one how long it has run, labelled "run". The full-screen log
    names the project, the job and its status, which moves as the job ends."""
    await core.projects.add(str(project_dir))
    async with server.client() as client:
        running = (await client.post("/deploy", json=deploy_body(
            project_dir, "sleep 2", commit="aaaa111"))).json()["job_id"]
        await client.post("/deploy", json=deploy_body(project_dir, "true", commit="bbbb222"))
    app = make_app(core)
    async with app.run_test(size=SIZE) as pilot:
        await projects(pilot, showing="running")
        await open_project(pilot)
        queue = app.screen.query_one("#queue", DataTable)
        await wait_until(pilot, lambda: queue.row_count == 2, what="the queue")
        first, second = (row.split(" | ") for row in table_text(queue))
        assert first[2] == "running" and re.fullmatch(r"run 0:0\d", first[4]), first
        assert second[2] == "queued" and re.fullmatch(r"0:0\d", second[4]), second
        assert str(queue.ordered_columns[4].label) == "waiting"
        # A first deploy: no history to say when the queued job starts.
        assert str(queue.ordered_columns[5].label) == "starts in"
        assert first[5] == second[5] == "—"
        await pilot.press("l")  # the running job's log, full screen
        await wait_until(pilot, lambda: isinstance(app.screen, LogScreen), what="the log")
        title = app.screen.query_one("#log-screen-title", Static)
        assert f"{project_dir.name} · job {running} · ▶ running" in str(title.render())
        await wait_until(pilot, lambda: "✔ complete" in str(title.render()), what="its end")


async def test_a_job_cancelled_while_queued_shows_no_start_time(
    core: Deployster, project_dir: Path
) -> None:
    project = await core.projects.add(str(project_dir))
    await hold_lock(core, project.id, "01JDZZZZZZZZZZZZZZZZZZZZF3", 300_000)
    queued = await core.submit(DeployRequest(str(project_dir), ["supervisorctl restart x"],
                                             "a1b2c3d4", "main"), run_here=False)
    await cancel_job(core, queued.job_id)
    await HistoryWriter(core).flush()  # as a server's history writer does
    app = make_app(core)
    async with app.run_test(size=SIZE) as pilot:
        await projects(pilot)
        hist = await project_table(pilot, "history", 1)
        status, _, _, started, took, _ = table_text(hist)[0].split(" | ")
        assert (status, started, took) == ("✘ cancelled", "—", "—")


async def test_help_explains_the_columns(core: Deployster, project_dir: Path) -> None:
    await core.projects.add(str(project_dir))
    app = make_app(core)
    async with app.run_test(size=SIZE) as pilot:
        await projects(pilot)
        await pilot.press("question_mark")
        await wait_until(pilot, lambda: isinstance(app.screen, HelpScreen), what="help")
        await pilot.pause(0.2)
        shown = screen_text(app)
        for term, says in (("TTL", "time left on the lock"),
                           ("heartbeat", "how long ago the job holding the lock"),
                           ("STALE", "the lock is held but nobody renews it")):
            assert re.search(rf"\b{term} +{says}", shown), shown


async def test_a_notification_leaves_the_tables_border_alone(
    core: Deployster, project_dir: Path
) -> None:
    await core.projects.add(str(project_dir))
    app = make_app(core)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        table = await projects(pilot)
        await pilot.press("s")  # "sorted by lock holder"
        await wait_until(pilot, lambda: bool(app.screen.query(Toast)), what="the toast")
        await pilot.pause(0.3)
        toast = app.screen.query_one(Toast)
        inside = table.region.shrink(Spacing(1, 1, 1, 1))  # the round border's inside
        assert inside.contains_region(toast.region), (toast.region, table.region)


# ------------------------------------------------------------------- colour


# A build's output as tools print it: colours, a progress bar redrawn with
# carriage returns, and what must not reach the screen as a command (a screen
# clear and cursor home, a cursor move, a window title, a bell).
COLOURFUL = (r"printf '\033[32mgreen-word\033[0m plain-word\n'; "
             r"printf '\033[1;31mstill-red'; printf '\n'; printf 'red-too\033[0m\n'; "
             r"printf '10%%\r50%%\r\033[33m100%%\033[0m\n'; "
             r"printf '\033[2J\033[Hafter-clear \033[5Aup \033]0;title\007titled \a!\n'; "
             r"echo done-here")


async def test_a_logs_colours_show_and_its_control_sequences_do_not(
    server: LiveServer, core: Deployster, project_dir: Path
) -> None:
    await core.projects.add(str(project_dir))
    async with server.client() as client:
        job = (await client.post("/deploy", json=deploy_body(project_dir, COLOURFUL))).json()
        await wait_for_status(client, job["job_id"])
    app = make_app(core)
    async with app.run_test(size=SIZE) as pilot:
        pane = await project_log(pilot, showing="✔", text="done-here")
        await pilot.pause(0.2)
        lines = pane.log_view.lines
        assert "green-word plain-word" in lines and "100%" in lines
        assert "after-clear up titled �!" in lines  # the bell shown, not rung
        assert "\x1b" not in screen_text(app)
        plain = style_on_screen(app, "plain-word").color
        assert style_on_screen(app, "green-word").color not in (None, plain)
        red = style_on_screen(app, "still-red")
        assert red.bold and red.color not in (None, plain)
        # A colour left on carries to the next line, as in a terminal.
        assert style_on_screen(app, "red-too").color == red.color
        assert style_on_screen(app, "100%").color not in (None, plain)
        # The header is still there: nothing cleared the screen.
        assert screen_text(app).splitlines()[0].startswith(project_dir.name)
