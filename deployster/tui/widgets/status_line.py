"""The line above the projects table: Redis/database health, whether a deploy
server runs the queues (in a fleet: how many nodes are up, which are down),
counts, the clock."""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

from rich.text import Text
from textual.widget import Widget
from textual.widgets import Static

from deployster.fleet import Node
from deployster.overview import ProjectRow

from ..format import duration

# The rows on screen are older than this (the last fetches failed): say so.
OLD_DATA = 3.0


def show_line(line: Static, text: Text | str) -> None:
    """Put ``text`` on a one-line ``Static`` (its height fixed by the CSS) if it
    is not what it shows already: an equal text costs no repaint, and a new
    one no layout pass (which would repaint the whole screen)."""
    if line.content != text:
        line.update(text, layout=False)


class Counts(NamedTuple):
    """What the line counts over every project's row."""

    projects: int
    running: int  # locks held
    queued: int
    stale: int

    @classmethod
    def of(cls, rows: list[ProjectRow]) -> Counts:
        return cls(len(rows), sum(1 for r in rows if r.lock_owner is not None),
                   sum(r.queue_length for r in rows), sum(1 for r in rows if r.stale))


def runner_text(runners: frozenset[str] | None) -> Text:
    """Whether a deploy server (a runner: ``deployster serve``) is alive for
    the data shown: without one, queued jobs wait and nothing ends a job."""
    if runners is None:
        return Text("runner …", style="dim")
    if not runners:
        return Text("no runner", style="bold red")
    return Text("runner ok" if len(runners) == 1 else f"{len(runners)} runners", style="green")


def nodes_text(nodes: tuple[Node, ...] | None, now: datetime) -> Text | None:
    """With more than one node announced (README.md#several-hosts): how many
    are up, then each one down with its heartbeat's age as of ``now`` (the
    rule is ``fleet.Node.up``'s); None for one node or none."""
    if nodes is None or len(nodes) < 2:
        return None
    now_ms = int(now.timestamp() * 1000)
    down = [n for n in nodes if not n.up(now_ms)]
    text = Text(f"nodes {len(nodes) - len(down)}/{len(nodes)} up",
                style="bold red" if down else "green")
    for node in down:
        text.append(f" · {node.name} down {duration(node.age(now_ms))}", style="bold red")
    return text


def summary(counts: Counts, health: dict[str, str], now: datetime, age: float = 0.0,
            runners: frozenset[str] | None = None,
            nodes: tuple[Node, ...] | None = None) -> Text:
    """Health first: on an 80-column terminal what is cut is the end of the
    line, and "redis down" or "no runner" must never be what goes. In a fleet
    the nodes stand for the runners (each node runs one), unless none is alive."""
    text = Text.assemble((" deployster ", "bold reverse"), " ")
    for label, key in (("redis", "redis"), ("db", "database")):
        state = health.get(key, "…")
        text.append(f" {label} {state}", style="green" if state == "ok" else "bold red")
        text.append(" ·")
    fleet = nodes_text(nodes, now)
    if fleet is None or not runners:
        text.append(" ")
        text.append(runner_text(runners))
        text.append(" ·")
    if fleet is not None:
        text.append(" ")
        text.append(fleet)
        text.append(" ·")
    if age > OLD_DATA:
        text.append(f" data from {duration(age)} ago ·", style="bold red")
    projects = "project" if counts.projects == 1 else "projects"
    text.append(f" {counts.projects} {projects} · {counts.running} running · "
                f"{counts.queued} queued")
    if counts.queued and runners is not None and not runners:
        text.append(" (waiting for a runner)", style="bold red")
    if counts.stale:
        text.append(f" · {counts.stale} STALE", style="bold red")
    text.append(f"   {now:%H:%M:%S}")
    return text


class StatusLine(Widget):
    """One fixed line: redrawn only when its text changes, never re-laid out (a
    layout pass would repaint the whole projects table)."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.text = Text()
        self._rows: list[ProjectRow] | None = None  # what ``_counts`` counted
        self._counts = Counts(0, 0, 0, 0)

    def render(self) -> Text:
        return self.text

    def show(self, rows: list[ProjectRow], health: dict[str, str], now: datetime,
             age: float = 0.0, runners: frozenset[str] | None = None,
             nodes: tuple[Node, ...] | None = None) -> None:
        if rows is not self._rows:  # counted once a fetch, not once a tick
            self._rows, self._counts = rows, Counts.of(rows)
        text = summary(self._counts, health, now, age, runners, nodes)
        if text != self.text:
            self.text = text
            self.refresh()
