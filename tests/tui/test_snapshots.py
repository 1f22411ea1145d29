"""SVG snapshots of the dashboard (pytest-textual-snapshot), one class per view.

The data is fixed (``deployster.tui.demo``), the clock is frozen and the cursor
does not blink, so the pictures are identical on every run. Update them with
``pytest tests/tui/test_snapshots.py --snapshot-update`` and review the diff.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable

from deployster.tui.demo import RUNNER, demo_app, demo_log_screen, demo_project_screen
from deployster.tui.format import set_clock
from deployster.tui.reader import UP, Overview
from deployster.tui.widgets.log_pane import LogPane
from tests.helpers.tui import wait_until

SIZE = (130, 30)
Compare = Callable[..., bool]


@pytest.fixture(autouse=True)
def frozen_clock() -> Iterator[None]:
    yield
    set_clock(None)


async def settle(pilot: Pilot[Any]) -> None:
    """No blinking cursor, and wait until two renders 0.05 s apart agree: the
    footer recomposes a moment after focus moves, later on a busy machine."""
    await pilot.pause()
    for screen in pilot.app.screen_stack:
        for widget in screen.query("*"):
            if hasattr(widget, "cursor_blink"):
                widget.cursor_blink = False
    last = ""
    for _ in range(40):
        await pilot.pause(0.05)
        svg = pilot.app.export_screenshot()
        if svg == last:
            return
        last = svg


class TestProjectsView:
    def test_projects_view(self, snap_compare: Compare) -> None:
        assert snap_compare(demo_app(), terminal_size=SIZE, run_before=settle)

    def test_projects_view_filtered(self, snap_compare: Compare) -> None:
        async def run_before(pilot: Pilot[Any]) -> None:
            await pilot.press("slash", *"work", "enter")
            await settle(pilot)

        assert snap_compare(demo_app(), terminal_size=SIZE, run_before=run_before)


    def test_projects_view_empty(self, snap_compare: Compare) -> None:
        """No project yet: the table's border names the data, a hint says
        how to register one."""
        app = demo_app(refresh_rows=False)
        app.overview = Overview([], UP, 0.0, runners=frozenset({RUNNER}))
        assert snap_compare(app, terminal_size=SIZE, run_before=settle)


class TestUnlockModal:
    def test_unlock_modal_on_a_stale_lock(self, snap_compare: Compare) -> None:
        async def run_before(pilot: Pilot[Any]) -> None:
            await pilot.press(*["down"] * 9, "u")  # worker (the last row): a STALE lock
            await settle(pilot)

        assert snap_compare(demo_app(), terminal_size=SIZE, run_before=run_before)


class TestRollbackModal:
    def test_rollback_modal_names_both_commits(self, snap_compare: Compare) -> None:
        async def run_before(pilot: Pilot[Any]) -> None:
            await pilot.app.push_screen(demo_project_screen())
            await pilot.pause()
            await pilot.press("b")  # my-app: back from 9c8d7e6 to e4f5a6b
            await settle(pilot)

        assert snap_compare(demo_app(), terminal_size=SIZE, run_before=run_before)


class TestProjectView:
    def test_project_view(self, snap_compare: Compare) -> None:
        async def run_before(pilot: Pilot[Any]) -> None:
            await pilot.app.push_screen(demo_project_screen())
            await settle(pilot)

        assert snap_compare(demo_app(), terminal_size=SIZE, run_before=run_before)

    def test_project_view_a_failed_job_selected(self, snap_compare: Compare) -> None:
        async def run_before(pilot: Pilot[Any]) -> None:
            # Each key once the screen shows what the one before it did, not
            # after a pause that a busy machine may outrun.
            screen = demo_project_screen()
            await pilot.app.push_screen(screen)
            queue, history = (screen.query_one(f"#{table}", DataTable)
                              for table in ("queue", "history"))
            pane = screen.query_one(LogPane)
            running, failed = screen.queue[0], screen.history[1]
            assert failed.reason == "command_failed"
            await wait_until(pilot, lambda: queue.has_focus and pane.job_id == running.id
                             and history.row_count == len(screen.history),
                             what="the project view, its running job selected")
            await pilot.press("tab")
            await wait_until(pilot, lambda: history.has_focus, what="the history focused")
            await pilot.press("down")  # its second row
            await wait_until(pilot, lambda: history.cursor_row == 1 and pane.job_id == failed.id,
                             what="the failed job selected, its log shown")
            await settle(pilot)

        assert snap_compare(demo_app(), terminal_size=SIZE, run_before=run_before)


class TestLogView:
    def test_log_view(self, snap_compare: Compare) -> None:
        async def run_before(pilot: Pilot[Any]) -> None:
            await pilot.app.push_screen(demo_log_screen())
            await settle(pilot)

        assert snap_compare(demo_app(), terminal_size=SIZE, run_before=run_before)

    def test_log_view_search_and_timestamps(self, snap_compare: Compare) -> None:
        async def run_before(pilot: Pilot[Any]) -> None:
            await pilot.app.push_screen(demo_log_screen())
            await pilot.pause()
            await pilot.press("t", "slash", *"my-app", "enter", "n")
            await settle(pilot)

        assert snap_compare(demo_app(), terminal_size=SIZE, run_before=run_before)


class TestHelp:
    def test_help_explains_columns_and_keys(self, snap_compare: Compare) -> None:
        async def run_before(pilot: Pilot[Any]) -> None:
            await pilot.press("question_mark")
            await settle(pilot)

        assert snap_compare(demo_app(), terminal_size=SIZE, run_before=run_before)


class TestNoRunner:
    """No deploy server alive: the header says so, the running jobs' runner is
    gone (their clocks stopped), the queued jobs wait for one."""

    def test_projects_view_no_runner(self, snap_compare: Compare) -> None:
        assert snap_compare(demo_app(runners=frozenset()), terminal_size=SIZE,
                            run_before=settle)

    def test_project_view_no_runner(self, snap_compare: Compare) -> None:
        async def run_before(pilot: Pilot[Any]) -> None:
            await pilot.app.push_screen(demo_project_screen(runners=frozenset()))
            await settle(pilot)

        assert snap_compare(demo_app(runners=frozenset()), terminal_size=SIZE,
                            run_before=run_before)


class TestSmallTerminal:
    """80x24: the compact projects table, the log under the project's tables,
    the unlock modal without padding; ? and q first in the key bar."""

    SMALL = (80, 24)

    def test_projects_view_80x24(self, snap_compare: Compare) -> None:
        assert snap_compare(demo_app(), terminal_size=self.SMALL, run_before=settle)

    def test_project_view_80x24(self, snap_compare: Compare) -> None:
        async def run_before(pilot: Pilot[Any]) -> None:
            await pilot.app.push_screen(demo_project_screen())
            await settle(pilot)

        assert snap_compare(demo_app(), terminal_size=self.SMALL, run_before=run_before)

    def test_unlock_modal_80x24(self, snap_compare: Compare) -> None:
        async def run_before(pilot: Pilot[Any]) -> None:
            await pilot.press(*["down"] * 9, "u")  # worker (the last row): a STALE lock
            await settle(pilot)

        assert snap_compare(demo_app(), terminal_size=self.SMALL, run_before=run_before)


class TestFleet:
    """Three nodes, web-3 down (README.md#several-hosts): a node column, the
    header counting the nodes up and naming the one down, n showing one node's
    projects, the project's node in its screen's title. With one node none of
    that shows (the views above)."""

    def test_projects_view_fleet(self, snap_compare: Compare) -> None:
        assert snap_compare(demo_app(fleet=True), terminal_size=SIZE, run_before=settle)

    def test_projects_view_one_node(self, snap_compare: Compare) -> None:
        async def run_before(pilot: Pilot[Any]) -> None:
            await pilot.pause()  # the table has the focus (not the filter box)
            await pilot.press("n", "n")  # web-1's projects, then web-2's
            await settle(pilot)

        assert snap_compare(demo_app(fleet=True), terminal_size=SIZE, run_before=run_before)

    def test_project_view_fleet(self, snap_compare: Compare) -> None:
        async def run_before(pilot: Pilot[Any]) -> None:
            await pilot.app.push_screen(demo_project_screen(fleet=True))
            await settle(pilot)

        assert snap_compare(demo_app(fleet=True), terminal_size=SIZE, run_before=run_before)

    def test_projects_view_fleet_80x24(self, snap_compare: Compare) -> None:
        assert snap_compare(demo_app(fleet=True), terminal_size=(80, 24), run_before=settle)
