"""The line above the projects table: counts, Redis/database health, the clock."""

from __future__ import annotations

from datetime import datetime

from rich.text import Text
from textual.widget import Widget

from deployster.overview import ProjectRow

from ..format import duration

# The rows on screen are older than this (the last fetches failed): say so.
OLD_DATA = 3.0


def summary(rows: list[ProjectRow], health: dict[str, str], now: datetime,
            age: float = 0.0) -> Text:
    """Health first: on an 80-column terminal what is cut is the end of the
    line, and "redis down" must never be what goes."""
    running = sum(1 for r in rows if r.lock_owner is not None)
    queued = sum(r.queue_length for r in rows)
    stale = sum(1 for r in rows if r.stale)
    text = Text.assemble((" deployster ", "bold reverse"), " ")
    for label, key in (("redis", "redis"), ("db", "database")):
        state = health.get(key, "…")
        text.append(f" {label} {state}", style="green" if state == "ok" else "bold red")
        text.append(" ·")
    if age > OLD_DATA:
        text.append(f" data from {duration(age)} ago ·", style="bold red")
    projects = "project" if len(rows) == 1 else "projects"
    text.append(f" {len(rows)} {projects} · {running} running · {queued} queued")
    if stale:
        text.append(f" · {stale} STALE", style="bold red")
    text.append(f"   {now:%H:%M:%S}")
    return text


class StatusLine(Widget):
    """One fixed line: redrawn only when its text changes, never re-laid out (a
    layout pass would repaint the whole projects table)."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.text = Text()

    def render(self) -> Text:
        return self.text

    def show(self, rows: list[ProjectRow], health: dict[str, str], now: datetime,
             age: float = 0.0) -> None:
        text = summary(rows, health, now, age)
        if text != self.text:
            self.text = text
            self.refresh()
