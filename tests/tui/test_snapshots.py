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

from deployster.tui.demo import DEMO_LOG, demo_app
from deployster.tui.format import set_clock
from deployster.tui.screens.log import LogScreen

SIZE = (130, 30)
Compare = Callable[..., bool]


@pytest.fixture(autouse=True)
def frozen_clock() -> Iterator[None]:
    yield
    set_clock(None)


async def settle(pilot: Pilot[Any]) -> None:
    await pilot.pause()
    for screen in pilot.app.screen_stack:
        for widget in screen.query("*"):
            if hasattr(widget, "cursor_blink"):
                widget.cursor_blink = False
    await pilot.pause()


class TestProjectsView:
    def test_projects_view(self, snap_compare: Compare) -> None:
        assert snap_compare(demo_app(), terminal_size=SIZE, run_before=settle)

    def test_projects_view_filtered(self, snap_compare: Compare) -> None:
        async def run_before(pilot: Pilot[Any]) -> None:
            await pilot.press("slash", *"work", "enter")
            await settle(pilot)

        assert snap_compare(demo_app(), terminal_size=SIZE, run_before=run_before)


class TestUnlockModal:
    def test_unlock_modal_on_a_stale_lock(self, snap_compare: Compare) -> None:
        async def run_before(pilot: Pilot[Any]) -> None:
            await pilot.press("down", "down", "down", "u")  # worker: held by a STALE job
            await settle(pilot)

        assert snap_compare(demo_app(), terminal_size=SIZE, run_before=run_before)


class TestLogView:
    def test_log_view(self, snap_compare: Compare) -> None:
        async def run_before(pilot: Pilot[Any]) -> None:
            await pilot.app.push_screen(LogScreen("01JDQ7M2X4Y9K3TB5R8W1FAF3", text=DEMO_LOG))
            await settle(pilot)

        assert snap_compare(demo_app(), terminal_size=SIZE, run_before=run_before)
