"""Helpers for the dashboard's Pilot tests: what a test reads off the screen,
and the steps most of them take to get there."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from rich.style import Style
from textual.app import App
from textual.pilot import Pilot
from textual.widgets import DataTable, Static

from deployster.tui.screens.confirm import ConfirmScreen
from deployster.tui.screens.project import ProjectScreen
from deployster.tui.widgets.log_pane import LogPane


async def wait_until(pilot: Pilot[Any], predicate: Callable[[], object], *,
                     timeout: float = 15, what: str = "condition") -> None:
    """Let the app run until ``predicate()`` is true (it reads what the user sees)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        await pilot.pause()
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def table_text(table: DataTable[Any]) -> list[str]:
    """Each row of a DataTable as the plain text a user reads."""
    rows = []
    for key in table.rows:
        cells = table.get_row(key)
        rows.append(" | ".join(str(getattr(c, "plain", c)) for c in cells))
    return rows


def screen_text(app: App[Any]) -> str:
    """The screen as the terminal shows it, one line per row (plain text)."""
    return "\n".join("".join(segment.text for segment in strip)
                     for strip in app.screen._compositor.render_strips())


def style_on_screen(app: App[Any], word: str) -> Style:
    """The style ``word`` is drawn in, where it is lowest on screen (a log's
    output, under the command that printed it); fails if it is nowhere."""
    found = [segment.style or Style.null()
             for strip in app.screen._compositor.render_strips()
             for segment in strip if word in segment.text]
    if not found:
        raise AssertionError(f"{word!r} is not on screen:\n{screen_text(app)}")
    return found[-1]


def confirm_text(app: App[Any]) -> str:
    """The text of the confirmation modal on screen (fails if none is open)."""
    screen = app.screen
    assert isinstance(screen, ConfirmScreen)
    return "\n".join(str(s.render()) for s in screen.query(Static))


async def modal_text(pilot: Pilot[Any], *keys: str) -> str:
    """Press ``keys`` (none: the modal is opening already), wait for the
    confirmation modal, and return its text."""
    await pilot.press(*keys)
    await wait_until(pilot, lambda: isinstance(pilot.app.screen, ConfirmScreen), what="modal")
    return confirm_text(pilot.app)


async def projects(pilot: Pilot[Any], count: int = 1, *, showing: str = "") -> DataTable[Any]:
    """The projects table (the screen the dashboard opens on) once it lists
    ``count`` projects, the first row showing ``showing`` (e.g. "✔": the last
    deploy completed)."""
    table = pilot.app.screen.query_one("#projects", DataTable)
    await wait_until(pilot, lambda: table.row_count == count and showing in table_text(table)[0],
                     what=f"{count} project row(s) showing {showing!r}")
    return table


async def open_project(pilot: Pilot[Any]) -> None:
    """Enter on the selected project: its view (queue, history, log) is on screen."""
    await pilot.press("enter")
    await wait_until(pilot, lambda: isinstance(pilot.app.screen, ProjectScreen),
                     what="project")


async def project_table(pilot: Pilot[Any], table: str, rows: int) -> DataTable[Any]:
    """Open the selected project and return its ``table`` ("queue" or
    "history") once it lists ``rows`` rows."""
    await open_project(pilot)
    found = pilot.app.screen.query_one(f"#{table}", DataTable)
    await wait_until(pilot, lambda: found.row_count == rows, what=f"{rows} row(s) in {table}")
    return found


async def project_log(pilot: Pilot[Any], *, showing: str, text: str) -> LogPane:
    """Open the one project once its row shows ``showing`` ("running", "✔"…),
    and return its log pane once the pane shows ``text``."""
    await projects(pilot, showing=showing)
    await open_project(pilot)
    pane = pilot.app.screen.query_one(LogPane)
    await wait_until(pilot, lambda: text in pane.text, what=f"{text!r} in the log")
    return pane
