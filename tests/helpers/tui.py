"""Helpers for the dashboard's Pilot tests: what a test reads off the screen."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from textual.pilot import Pilot
from textual.widgets import DataTable


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
