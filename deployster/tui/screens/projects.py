"""The home screen: one row per project, refreshed by the app's loop.

TTL, heartbeat and elapsed columns tick every second between fetches (counted
from the fetch), so the countdown moves even while nothing is fetched.

In a fleet (the projects span more than one node: README.md#several-hosts) a
node column shows each project's node, ``/`` matches node names too and ``n``
shows one node's projects at a time; with one node none of that shows, as
``deployster project list`` shows its NODE column only then.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.events import Resize
from textual.widgets import DataTable, Input, Static
from textual.widgets.data_table import ColumnKey

from deployster.models import JobStatus
from deployster.overview import ProjectRow

from ..format import (
    DASH,
    GLYPH,
    ago,
    clock_duration,
    commit,
    commit_cell,
    data_source,
    heartbeat_text,
    run_time,
    short_id,
    since,
    tilde,
    ttl_text,
)
from ..messages import DataRefreshed
from ..reader import UP, Overview, Reader, row_facts
from ..widgets.footer import KeysFooter
from ..widgets.projects_table import ProjectsTable
from ..widgets.status_line import StatusLine
from .base import CoreScreen
from .project import ProjectScreen

COLUMNS: list[tuple[str, str]] = [
    ("name", "project"), ("lock", "lock holder"), ("ttl", "TTL"), ("heartbeat", "heartbeat"),
    ("running", "running"), ("queue", "queue"), ("last", "last"), ("deployed", "deployed"),
    ("path", "path"),
]
PATH_WIDTH = 40
NAME_WIDTH = 20  # longer names end in "…": they must not push the lock columns away
WIDTHS = {"lock": 17, "ttl": 8, "heartbeat": 12, "running": 22, "queue": 5, "last": 14,
          "deployed": 9}
# Under ``COMPACT_BELOW`` columns (an 80x24 terminal) the facts an operator acts
# on come first and narrower: the holder's id only (STALE shows in heartbeat),
# the queue and the last outcome before what is running; elapsed time and
# commit only, ages without "ago". The commit deployed and the path, last, are
# what scrolls off.
COMPACT_BELOW = 104
COMPACT_COLUMNS: list[tuple[str, str]] = [
    ("name", "project"), ("lock", "holder"), ("ttl", "TTL"), ("heartbeat", "heartbeat"),
    ("queue", "queue"), ("last", "last"), ("running", "running"), ("deployed", "deployed"),
    ("path", "path"),
]
COMPACT_NAME_WIDTH = 12
COMPACT_WIDTHS = {"lock": 10, "ttl": 7, "heartbeat": 12, "queue": 5, "last": 10,
                  "running": 12, "deployed": 9}
# A fleet's: the node after the project's name; in the compact layout after
# the facts acted on (it scrolls in with the rest, and n shows one node).
NODE_WIDTH = 12
COMPACT_NODE_WIDTH = 8
FLEET_COLUMNS = [COLUMNS[0], ("node", "node"), *COLUMNS[1:]]
_AFTER_LAST = [k for k, _ in COMPACT_COLUMNS].index("last") + 1
COMPACT_FLEET_COLUMNS = [*COMPACT_COLUMNS[:_AFTER_LAST], ("node", "node"),
                         *COMPACT_COLUMNS[_AFTER_LAST:]]


@lru_cache(maxsize=4096)
def short_path(path: str) -> str:
    path = tilde(path)
    return path if len(path) <= PATH_WIDTH else "…" + path[-(PATH_WIDTH - 1):]

_NONE_LAST = float("inf")

SORT_KEYS: dict[str, Callable[[ProjectRow], Any]] = {
    "name": lambda r: r.project.name.lower(),
    "node": lambda r: (r.project.node, r.project.name.lower()),
    "path": lambda r: r.project.path,
    "lock": lambda r: (r.lock_owner is None, not r.stale, r.lock_owner or ""),
    "ttl": lambda r: r.lock_ttl_ms if r.lock_ttl_ms is not None else _NONE_LAST,
    "heartbeat": lambda r: -(r.heartbeat_age or 0) if r.lock_owner else _NONE_LAST,
    "running": lambda r: -(since(r.running.started_at) or 0) if r.running else _NONE_LAST,
    "queue": lambda r: -r.queue_length,
    "last": lambda r: -(since(r.last.finished_at) or 0) if r.last else 0,
    "deployed": lambda r: -(since(r.deployed.finished_at) or 0) if r.deployed else 0,
}


def ticking(row: ProjectRow) -> bool:
    """Whether a row's clocks move by the second: a lock (TTL, heartbeat), a
    running job (elapsed) or a deploy less than an hour ago (its age)."""
    if row.lock_owner is not None or row.running is not None:
        return True
    last = row.last
    return last is not None and (since(last.finished_at or last.started_at) or 0) < 3600


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


CLOCK_COLUMNS = ("ttl", "heartbeat", "running", "last")  # what moves with time alone


@lru_cache(maxsize=1024)
def _last_cell(status: JobStatus, when: str) -> Text:
    """The last deploy's cell: its outcome and age (made once a text: the
    ages of every ticking row are built each second; never mutated)."""
    ok = status is JobStatus.COMPLETE
    return Text.assemble((GLYPH[status], "green" if ok else "red"), f" {when}")


def clock_cells(row: ProjectRow, since_fetch: float, *, compact: bool = False,
                gone: bool = False) -> dict[str, Any]:
    """The cells of ``row_cells`` whose text moves with time (``CLOCK_COLUMNS``):
    the rest changes only with the row's facts. ``gone``: the running job's
    runner is not alive (its clock stopped at the runner's last heartbeat)."""
    job = row.running
    if job is not None and job.status is JobStatus.RUNNING:
        # Elapsed first: a long ref name is what gets cut, not the clock.
        elapsed = clock_duration(run_time(job, gone=gone))
        # Text, not a markup string: commit and ref are a request's text.
        if gone:  # what matters then: nobody runs it (its commit is on its screen)
            running: Text | str = Text.assemble(
                f"{elapsed} ", ("gone" if compact else "runner gone", "bold red"))
        else:
            running = Text(f"{elapsed} {commit(job)}" if compact else
                           f"{elapsed} {commit(job)} {job.ref_name}")
    else:
        running = DASH
    if row.last is None:
        last: Text | str = DASH
    else:
        when = ago(row.last.finished_at or row.last.started_at)
        last = _last_cell(row.last.status, when.removesuffix(" ago") if compact else when)
    return {
        "ttl": ttl_text(row, since_fetch),
        "heartbeat": heartbeat_text(row, since_fetch),
        "running": running,
        "last": last,
    }


def row_cells(row: ProjectRow, since_fetch: float, *, compact: bool = False,
              gone: bool = False, node: bool = False) -> dict[str, Any]:
    """Every cell of ``row``, by column key; ``node``: with its node's (a fleet)."""
    if row.lock_owner is None:
        lock: Text | str = DASH
    elif compact:
        lock = Text(short_id(row.lock_owner), style="bold red" if row.stale else "")
    elif row.stale:
        lock = Text.assemble(short_id(row.lock_owner) + " ", ("STALE", "bold reverse red"))
    elif gone:  # its heartbeat is fresh, but its runner is not alive: it will stop
        lock = Text.assemble(short_id(row.lock_owner) + " ", ("gone", "bold red"))
    else:
        lock = Text.assemble(short_id(row.lock_owner) + " ", ("running", "yellow"))
    name = _clip(row.project.name, COMPACT_NAME_WIDTH if compact else NAME_WIDTH)
    cells: dict[str, Any] = {
        "name": Text(name, style="bold"),
        "path": Text(short_path(row.project.path)),  # a directory may hold "[/x]"
        "lock": lock,
        **clock_cells(row, since_fetch, compact=compact, gone=gone),
        "queue": str(row.queue_length) if row.queue_length else "0",
        # The newest complete job's commit (↺: it was a redeploy or rollback).
        "deployed": commit_cell(row.deployed) if row.deployed else DASH,
    }
    if node:  # a plain string: a node name is letters, digits, '.', '_', '-'
        cells["node"] = _clip(row.project.node, COMPACT_NODE_WIDTH if compact
                              else NODE_WIDTH) or DASH
    return cells


class ProjectsScreen(CoreScreen):
    BINDINGS = [
        Binding("enter", "open", "Open", id="projects.open"),
        Binding("u", "unlock", "Unlock", id="projects.unlock"),
        Binding("c", "cancel", "Cancel running", id="projects.cancel"),
        Binding("r", "redeploy", "Redeploy last", id="projects.redeploy"),
        Binding("slash", "filter", "Filter", key_display="/", id="projects.filter"),
        # In a fleet only (``check_action``): one node's projects, the next's, all.
        Binding("n", "next_node", "Node", id="projects.node"),
        Binding("s", "sort", "Sort", id="projects.sort"),
        # Rarer than the keys before it: last in the bar, which an 80-column
        # terminal cuts (? lists every key).
        Binding("b", "rollback", "Roll back", id="projects.rollback"),
        Binding("S", "reverse", "Reverse sort", key_display="S", show=False,
                id="projects.reverse"),
        Binding("escape", "clear_filter", "Clear filter", show=False, id="projects.clear"),
        Binding("ctrl+r", "refresh", "Refresh now", show=False, id="projects.refresh"),
    ]

    def __init__(self, reader: Reader, overview: Overview) -> None:
        super().__init__(reader, overview)
        self.filter_text = ""
        self.node_filter: str | None = None  # n: this node's projects only
        # A node column (the projects span several nodes): the overview's
        # ``fleet`` as the table's columns were last made for it.
        self.fleet = overview.fleet
        self.sort_column = "name"
        self.sort_reverse = False
        self._keys: list[str] = []
        self._shown: dict[str, ProjectRow] = {}
        self._cells: dict[str, dict[str, Any]] = {}
        self._facts: dict[str, tuple[object, ...]] = {}
        # What the rows on screen were drawn from (the overview, filter and
        # sort): while it holds, a tick redraws the rows in ``_ticking`` only.
        self._drawn: tuple[object, ...] = ()
        self._ticking: list[tuple[str, ProjectRow]] = []
        self._tick = 0
        self.compact = False  # the narrow layout (set from the screen's width)

    def compose(self) -> ComposeResult:
        yield StatusLine(id="status-line")
        yield Input(placeholder=self._placeholder(), id="filter")
        # Shown when the table has nothing to show: how to get a row into it.
        yield Static(id="projects-hint", markup=False)
        table = ProjectsTable(id="projects", cursor_type="row", zebra_stripes=True)
        settings = self.reader.settings
        if settings is not None:  # which data this is, on the table's border
            table.border_title = Text(data_source(settings))
        self._add_columns(table)
        yield table
        yield KeysFooter()

    def _placeholder(self) -> str:
        what = "name, path or node" if self.fleet else "name or path"
        return f"filter projects ({what}) — enter to keep, esc to clear"

    @property
    def columns(self) -> list[tuple[str, str]]:
        if self.compact:
            return COMPACT_FLEET_COLUMNS if self.fleet else COMPACT_COLUMNS
        return FLEET_COLUMNS if self.fleet else COLUMNS

    def _add_columns(self, table: ProjectsTable) -> None:
        widths = {**COMPACT_WIDTHS, "node": COMPACT_NODE_WIDTH} if self.compact \
            else {**WIDTHS, "node": NODE_WIDTH}
        for key, label in self.columns:
            # Fixed widths for the ticking columns: the layout never jumps.
            table.add_column(label, key=key, width=widths.get(key))

    def on_resize(self, event: Resize) -> None:
        compact = event.size.width < COMPACT_BELOW
        if compact != self.compact:
            self.compact = compact
            self._remake_columns()

    def _remake_columns(self) -> None:
        """Make the columns again (the layout or the fleet changed), then the rows."""
        selected = self.selected_key()  # the rows are made again: keep it
        table = self.table
        table.clear(columns=True)
        self._add_columns(table)
        self._keys, self._cells, self._facts, self._drawn = [], {}, {}, ()
        self.render_rows()
        if selected in self._keys:
            table.move_cursor(row=self._keys.index(selected), animate=False)

    def _fleet_changed(self) -> None:
        """The projects came to span several nodes, or one: the node column,
        the filter's hint and the ``n`` key follow."""
        self.fleet = self.overview.fleet
        if not self.fleet:
            self.node_filter = None
            if self.sort_column == "node":
                self.sort_column, self.sort_reverse = "name", False
        self.query_one("#filter", Input).placeholder = self._placeholder()
        self._show_node_filter()
        self.refresh_bindings()
        self._remake_columns()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # n (by node) is a fleet's: with one node it is neither shown nor bound.
        return self.fleet if action == "next_node" else True

    @property
    def table(self) -> ProjectsTable:
        return self.query_one("#projects", ProjectsTable)

    def on_mount(self) -> None:
        self.query_one("#filter", Input).display = False
        self.query_one("#projects-hint", Static).display = False
        self.clock = self.set_interval(1.0, self.render_rows)  # the clocks tick
        self.table.focus()
        self.render_rows()

    def on_data_refreshed(self, message: DataRefreshed) -> None:
        self.overview = message.overview
        # Changed facts (a lock taken, a job queued or finished) show at once;
        # the clocks (TTL, heartbeat, ages) move with the one-second tick, so a
        # burst of events costs fetches, not a repaint of every row each time.
        # Under another screen nothing is drawn: what a hidden screen paints
        # is repainted on the one above it (``on_screen_resume`` catches up).
        if self.is_active:
            self.render_rows(clocks=False)

    def on_screen_suspend(self) -> None:
        self.clock.pause()

    def on_screen_resume(self) -> None:
        self.clock.resume()
        self.render_rows()

    # ---------------------------------------------------------------- render
    def visible_rows(self) -> list[ProjectRow]:
        rows = self.overview.rows
        if self.node_filter is not None:
            rows = [r for r in rows if r.project.node == self.node_filter]
        if self.filter_text:
            needle = self.filter_text.lower()
            fleet = self.fleet  # a single node's name is no project's: not matched
            rows = [r for r in rows
                    if needle in r.project.name.lower() or needle in r.project.path.lower()
                    or (fleet and needle in r.project.node.lower())]
        return sorted(rows, key=SORT_KEYS[self.sort_column], reverse=self.sort_reverse)

    def render_rows(self, *, clocks: bool = True) -> None:
        """Redraw what changed: rows whose facts changed, and with ``clocks`` the
        rows whose clocks tick (every row once a minute, for the older ages)."""
        shown = self.overview
        self._tick += clocks
        everything = clocks and self._tick % 60 == 1
        since_fetch = self.since_fetch()
        self.query_one(StatusLine).show(shown.rows, shown.health, self.reader.wall_clock(),
                                        since_fetch, shown.runners, shown.nodes)
        # The rows, not the overview: a fetch that found nothing new hands
        # over the same list (app.py), and then nothing is drawn again.
        drawn = (shown.rows, shown.runners, shown.health, self.filter_text, self.sort_column,
                 self.sort_reverse, self.node_filter)
        if not everything and self._same_view(drawn):
            # Time alone moved: the rows, their order and facts are as drawn.
            if clocks:
                self._tick_clocks(since_fetch)
            return
        if shown.fleet != self.fleet:  # remade with the node column (or without)
            self._fleet_changed()
            return
        rows = self.visible_rows()
        self._show_hint(bool(rows))
        table = self.table
        keys = [str(r.project.id) for r in rows]
        self._shown = {str(r.project.id): r for r in rows}
        if keys == self._keys:
            # Only cells whose text changed: an idle project costs no redraw.
            changes: list[tuple[str, str, Any]] = []
            for r in rows:
                key = str(r.project.id)
                gone = shown.runner_gone(r.running)
                facts = (*row_facts(r), gone)
                if self._facts.get(key) == facts and not (
                        everything or (clocks and ticking(r))):
                    continue
                self._facts[key] = facts
                cells = row_cells(r, since_fetch, compact=self.compact, gone=gone,
                                  node=self.fleet)
                old = self._cells.get(key, {})
                changes += [(key, column, value) for column, value in cells.items()
                            if old.get(column) != value]
                self._cells[key] = cells
            table.update_cells(changes)
        else:
            selected = self.selected_key()
            table.clear()
            self._cells = {}
            for r in rows:
                key = str(r.project.id)
                gone = shown.runner_gone(r.running)
                self._facts[key] = (*row_facts(r), gone)
                cells = self._cells[key] = row_cells(r, since_fetch, compact=self.compact,
                                                     gone=gone, node=self.fleet)
                table.add_row(*(cells[k] for k, _ in self.columns), key=key)
            self._keys = keys
            if selected in keys:
                table.move_cursor(row=keys.index(selected), animate=False)
        # A row that does not tick now never will until its facts change (a
        # deploy only gets older): a new overview draws it again.
        self._ticking = [(str(r.project.id), r) for r in rows if ticking(r)]
        self._drawn = drawn
        self._label_columns()

    def _show_hint(self, any_rows: bool) -> None:
        """Say why the table is empty, and what to do: clear the filter, or
        register a project (once a fetch answered: before, nothing is known)."""
        hint = self.query_one("#projects-hint", Static)
        text: Text | None = None
        if any_rows:
            pass
        elif (self.filter_text or self.node_filter is not None) and self.overview.rows:
            what = " and ".join([*([f"node {self.node_filter!r}"]
                                   if self.node_filter is not None else []),
                                 *([repr(self.filter_text)] if self.filter_text else [])])
            text = Text(f"No project matches {what}: esc clears the filter.")
        elif self.overview.health == UP and not self.overview.rows:
            settings = self.reader.settings
            roots = ", ".join(tilde(r) for r in settings.allowed_roots) if settings else ""
            text = Text.assemble(
                "No projects yet. Register one with ", ("deployster project add PATH", "bold"),
                " (run with the same settings as this dashboard), or deploy to a directory "
                "under ", ("DEPLOYSTER_ALLOWED_ROOTS", "bold"),
                f" ({roots})" if roots else " (not set here)",
                ": the first deploy registers it.")
        if text is None:
            if hint.display:
                hint.display = False
        elif not hint.display or hint.content != text:
            hint.update(text)
            hint.display = True

    def _same_view(self, drawn: tuple[object, ...]) -> bool:
        """Whether ``drawn`` (rows, filter, sort) is what is on screen."""
        old = self._drawn
        return bool(old) and old[0] is drawn[0] and old[1:] == drawn[1:]

    def _tick_clocks(self, since_fetch: float) -> None:
        """Redraw the clocks (``CLOCK_COLUMNS``) of the rows that tick, the
        cells whose text changed only."""
        still = []
        changes: list[tuple[str, str, Any]] = []
        shown = self.overview
        for key, row in self._ticking:
            if not ticking(row):
                continue
            still.append((key, row))
            cells = self._cells[key]
            for column, value in clock_cells(row, since_fetch, compact=self.compact,
                                             gone=shown.runner_gone(row.running)).items():
                if cells[column] is not value and cells[column] != value:
                    cells[column] = value
                    changes.append((key, column, value))
        self._ticking = still
        self.table.update_cells(changes)

    def _label_columns(self) -> None:
        table = self.table
        arrow = "▼" if self.sort_reverse else "▲"
        changed = False
        for key, label in self.columns:
            header = table.columns[ColumnKey(key)]
            text = Text(f"{label} {arrow}" if key == self.sort_column else label)
            if header.label != text:
                header.label = text
                changed = True
        if changed:
            table.invalidate()

    def selected_key(self) -> str | None:
        table = self.table
        if not self._keys or table.cursor_row >= len(self._keys):
            return None
        return self._keys[table.cursor_row]

    def selected(self) -> ProjectRow | None:
        key = self.selected_key()
        return self._shown.get(key) if key else None

    # -------------------------------------------------------------- actions
    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_open()

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        key = str(event.column_key.value)
        if key == self.sort_column:
            self.sort_reverse = not self.sort_reverse
        else:
            self.sort_column, self.sort_reverse = key, False
        self.render_rows()

    def action_open(self) -> None:
        row = self.selected()
        if row is not None:
            self.app.push_screen(ProjectScreen(self.reader, self.overview, row.project))

    def action_unlock(self) -> None:
        row = self.selected()
        if row is not None:
            self.ask_unlock(row)

    def action_cancel(self) -> None:
        row = self.selected()
        if row is None:
            return
        if row.running is None or row.running.status.finished:
            self.app.notify(f"nothing running in {row.project.name}; open it (enter) to cancel "
                            "a queued job")
            return
        self.ask_cancel(row.running, row.project)

    def action_redeploy(self) -> None:
        row = self.selected()
        if row is None:
            return
        if row.last is None:
            self.app.notify(f"{row.project.name} has no past deploy to run again")
            return
        self.ask_redeploy(row.last, row.project)

    def action_rollback(self) -> None:
        row = self.selected()
        if row is not None:
            self.ask_rollback(row.project, row,
                              known=[row.deployed] if row.deployed else None)

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.display = True
        box.focus()

    def action_next_node(self) -> None:
        """Show the next node's projects only (in name order), after the last
        one every project again."""
        nodes = self.overview.project_nodes
        if len(nodes) < 2:
            return
        current = self.node_filter
        at = nodes.index(current) + 1 if current in nodes else 0
        self.node_filter = nodes[at] if at < len(nodes) else None
        self._show_node_filter()
        self.render_rows()

    def _show_node_filter(self) -> None:
        """The node shown, on the table's bottom border (nothing: every node)."""
        node = self.node_filter
        self.table.border_subtitle = None if node is None else Text(
            f"node {node or DASH} only · n: the next · esc: all")

    def on_input_changed(self, event: Input.Changed) -> None:
        self.filter_text = event.value.strip()
        self.render_rows()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.table.focus()
        if not event.value.strip():
            event.input.display = False

    def action_clear_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.value = ""
        box.display = False
        self.filter_text = ""
        if self.node_filter is not None:
            self.node_filter = None
            self._show_node_filter()
        self.table.focus()
        self.render_rows()

    def action_sort(self) -> None:
        columns = FLEET_COLUMNS if self.fleet else COLUMNS
        keys = [k for k, _ in columns]
        self.sort_column = keys[(keys.index(self.sort_column) + 1) % len(keys)]
        self.sort_reverse = False
        self.notify(f"sorted by {dict(columns)[self.sort_column]}", timeout=1.5)
        self.render_rows()

    def action_reverse(self) -> None:
        self.sort_reverse = not self.sort_reverse
        self.render_rows()

    def action_refresh(self) -> None:
        self.request_refresh()


__all__ = ["ProjectsScreen", "row_cells"]
