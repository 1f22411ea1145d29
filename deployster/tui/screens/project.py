"""One project: its queue in order, its history (paged) with the commit deployed
now, the selected job's log."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.coordinate import Coordinate
from textual.widgets import DataTable, Static

from deployster.models import Job, JobStatus, Project
from deployster.overview import LogChunk, ProjectRow

from ..format import (
    clock_duration,
    commit,
    commit_cell,
    duration,
    heartbeat_text,
    job_duration,
    local_time,
    outcome,
    short_id,
    since,
    ttl_text,
)
from ..messages import DataRefreshed
from ..reader import Overview, Reader
from ..widgets.footer import KeysFooter
from ..widgets.log_pane import LogPane
from .base import CoreScreen
from .log import LogScreen

PAGE = 50
REF_WIDTH = 20
NAME_WIDTH = 20  # in the title: the lock's facts after it must fit 80 columns
OUTCOME_STYLE = {JobStatus.COMPLETE: "green", JobStatus.FAILED: "red"}
log = logging.getLogger("deployster.tui")


def ref(job: Job) -> str:
    """A branch name, clipped: a long one must not push the clocks off screen.

    Cells of a request's text (commit, ref) go in as ``Text``: a plain string
    cell is read as markup, and a ref like ``feat/[/x]`` crashed the screen."""
    return job.ref_name if len(job.ref_name) <= REF_WIDTH else job.ref_name[:REF_WIDTH - 1] + "…"


class ProjectScreen(CoreScreen):
    # Narrow terminals: the log goes under the tables instead of beside them.
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (104, "-wide")]
    BINDINGS = [
        Binding("escape", "back", "Back", id="project.back"),
        Binding("l", "open_log", "Full log", id="project.log"),
        Binding("u", "unlock", "Unlock", id="project.unlock"),
        Binding("c", "cancel", "Cancel job", id="project.cancel"),
        Binding("r", "redeploy", "Redeploy job", id="project.redeploy"),
        Binding("m", "more", "More history", id="project.more"),
        # Rarer than the keys before it: last in the bar, which an 80-column
        # terminal cuts (? lists every key).
        Binding("b", "rollback", "Roll back", id="project.rollback"),
    ]

    def __init__(
        self, reader: Reader, overview: Overview, project: Project, *,
        queue: list[Job] | None = None, history: list[Job] | None = None,
        logs: dict[str, list[LogChunk]] | None = None,
    ) -> None:
        """With ``queue``, ``history`` and ``logs`` given, shows them as they are
        and reads nothing (demo data, snapshots)."""
        super().__init__(reader, overview)
        self.project = project
        self.fixed = logs is not None
        self.queue: list[Job] = queue or []
        # Jobs in the queue, the running one included: more than ``self.queue``
        # holds once the queue is longer than the window read (QUEUE_WINDOW).
        self.queue_total = len(self.queue)
        self.history: list[Job] = history or []
        self.history_done = self.fixed
        self.logs = logs or {}
        self.selected_job: Job | None = None
        self._history_lock = asyncio.Lock()

    def compose(self) -> ComposeResult:
        yield Static(self.project.name, id="project-title")
        with Horizontal(id="project-body"):
            with Vertical(id="project-left"):
                yield Static("queue", classes="pane-title", id="queue-title")
                queue: DataTable[Any] = DataTable(id="queue", cursor_type="row")
                queue.add_columns("#", "job", "status", "commit", "waiting", "ref")
                yield queue
                yield Static("history", classes="pane-title", id="history-title")
                hist: DataTable[Any] = DataTable(id="history", cursor_type="row",
                                                 zebra_stripes=True)
                # commit: the one deployed, ↺ for a redeploy or rollback (the
                # log pane's title names the job it ran again).
                hist.add_columns("status", "job", "commit", "started", "duration", "ref")
                yield hist
            yield LogPane(self.reader, id="log-pane")
        yield KeysFooter()

    def on_mount(self) -> None:
        self.query_one("#history", DataTable).focus()
        self._render_title()
        if self.fixed:
            self._render_tables()
        else:
            self.run_worker(self.reload(), group="project", exclusive=True)

    def on_data_refreshed(self, message: DataRefreshed) -> None:
        self.overview = message.overview
        self._render_title()  # the lock's TTL and heartbeat, what is down: no reads
        if not self.fixed:
            self.run_worker(self.reload(), group="project", exclusive=True)

    @property
    def row(self) -> ProjectRow | None:
        return self.overview.row(self.project.id)

    async def reload(self) -> None:
        """The running job and queue, and history's loaded pages, read again.
        While Redis or the database is down the last data stays (the projects
        screen's header says what is down)."""
        try:
            await self._reload()
        except Exception:
            log.warning("project %s: reload failed", self.project.name, exc_info=True)

    async def _reload(self) -> None:
        window = await self.reader.queue(self.project.id)
        row = self.row
        running = row.running if row and row.running and \
            row.running.status is JobStatus.RUNNING else None
        self.queue = ([running] if running else []) + window.jobs
        self.queue_total = (1 if running else 0) + window.total
        async with self._history_lock:  # never interleaved with a page load
            limit = max(PAGE, len(self.history))
            rows = await self.reader.history(self.project.id, limit=limit + 1)
            self.history, self.history_done = rows[:limit], len(rows) <= limit
        self._render_tables()

    async def load_more(self) -> None:
        try:
            await self._load_more()
        except Exception as exc:
            self.report_error("more history", exc)

    async def _load_more(self) -> None:
        async with self._history_lock:
            if self.history_done or not self.history:
                return
            page = await self.reader.history(self.project.id, before=self.history[-1].id,
                                             limit=PAGE + 1)
            self.history_done = len(page) <= PAGE
            self.history.extend(page[:PAGE])
        self._render_tables()

    def _render_tables(self) -> None:
        self._render_title()
        queue = self.query_one("#queue", DataTable)
        cursor, key = queue.cursor_row, _key_at_cursor(queue)
        queue.clear()
        offset = 0 if self.queue and self.queue[0].status is JobStatus.RUNNING else 1
        for i, job in enumerate(self.queue):
            if job.status is JobStatus.RUNNING:
                pos, wait = "▶", clock_duration(since(job.started_at))
            else:
                pos, wait = str(i + offset), clock_duration(since(job.queued_at))
            queue.add_row(pos, short_id(job.id), job.status.value, commit_cell(job), wait,
                          Text(ref(job)), key=job.id)
        if self.queue:
            queue.move_cursor(row=_row_of(self.queue, key, cursor), animate=False)
        hidden = self.queue_total - len(self.queue)
        self.query_one("#queue-title", Static).update(
            f"queue · {self.queue_total} job(s)" + (f" · first {len(self.queue)} shown"
                                                    if hidden > 0 else ""))
        hist = self.query_one("#history", DataTable)
        cursor, key = hist.cursor_row, _key_at_cursor(hist)
        hist.clear()
        for job in self.history:
            hist.add_row(Text(outcome(job), style=OUTCOME_STYLE.get(job.status, "")),
                         short_id(job.id), commit_cell(job),
                         local_time(job.started_at or job.queued_at),
                         duration(job_duration(job)), Text(ref(job)), key=job.id)
        if self.history:
            hist.move_cursor(row=_row_of(self.history, key, cursor), animate=False)
        more = "" if self.history_done else " · m for more"
        row = self.row
        deployed = row.deployed if row else None
        now = (f" · deployed now {commit(deployed)} (job {short_id(deployed.id)})"
               if deployed else "")
        # Text: a commit is a request's text, never markup.
        self.query_one("#history-title", Static).update(
            Text(f"history · {len(self.history)} shown{more}{now}"))
        if self.selected_job is None:
            # The running (else next) job first: what the operator came to watch.
            if self.queue:
                queue.focus()
                self._select(self.queue[0])
            elif self.history:
                self._select(self.history[0])

    def _render_title(self) -> None:
        """Name, lock (holder, TTL, heartbeat) and what is down: the facts to
        know before u, c or r, in the order an 80-column line keeps them."""
        row = self.row
        name = self.project.name
        title = Text(name if len(name) <= NAME_WIDTH else name[:NAME_WIDTH - 1] + "…",
                     style="bold")
        down = [f"{label} {state}" for label, key in (("redis", "redis"), ("db", "database"))
                if (state := self.overview.health.get(key, "ok")) not in ("ok", "…")]
        if down:
            title.append(f" · {' · '.join(down)} · data from {duration(self.since_fetch())} ago",
                         style="bold red")
        if row and row.lock_owner:
            since_fetch = self.since_fetch()
            title.append(f" · lock {short_id(row.lock_owner)} · TTL "
                         f"{ttl_text(row, since_fetch)} · heartbeat ")
            title.append(heartbeat_text(row, since_fetch))
        elif row:
            title.append(" · not locked")
        title.append(f" · {self.project.path}")
        self.query_one("#project-title", Static).update(title)

    def _select(self, job: Job) -> None:
        self.selected_job = job
        pane = self.query_one(LogPane)
        if self.fixed:
            if pane.job_id != job.id:
                pane.show_text(job.id, self.logs.get(job.id, []),
                               live=job.status is JobStatus.RUNNING,
                               redeploy_of=job.redeploy_of)
        else:
            pane.show_job(job.id)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        jobs = self.queue if event.data_table.id == "queue" else self.history
        key = event.row_key.value if event.row_key is not None else None
        for job in jobs:
            if job.id == key:
                if event.data_table.has_focus:
                    self._select(job)
                break
        if event.data_table.id == "history" and event.cursor_row >= len(self.history) - 1 \
                and not self.history_done:
            self.run_worker(self.load_more(), group="more", exclusive=True)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_open_log()

    def on_descendant_focus(self, event: Any) -> None:
        widget = getattr(event, "widget", None)
        # has_focus: a focus event can arrive after focus moved on (mount).
        if isinstance(widget, DataTable) and widget.id in ("queue", "history") \
                and widget.has_focus:
            jobs = self.queue if widget.id == "queue" else self.history
            if jobs and widget.cursor_row < len(jobs):
                self._select(jobs[widget.cursor_row])

    # -------------------------------------------------------------- actions
    def action_back(self) -> None:
        self.app.pop_screen()

    def action_open_log(self) -> None:
        job = self.selected_job
        if job is not None:
            self.app.push_screen(LogScreen(self.reader, job.id, text=self.logs.get(job.id, [])
                                           if self.fixed else None))

    def action_unlock(self) -> None:
        row = self.row
        if row is not None:
            self.ask_unlock(row)

    def action_cancel(self) -> None:
        if self.selected_job is not None:
            self.ask_cancel(self.selected_job, self.project)

    def action_redeploy(self) -> None:
        if self.selected_job is not None:
            self.ask_redeploy(self.selected_job, self.project)

    def action_rollback(self) -> None:
        self.ask_rollback(self.project, self.row, known=self.history if self.fixed else None)

    def action_more(self) -> None:
        self.run_worker(self.load_more(), group="more", exclusive=True)


def _key_at_cursor(table: DataTable[Any]) -> str | None:
    """The job id under the table's cursor, if any."""
    if not 0 <= table.cursor_row < table.row_count:
        return None
    return table.coordinate_to_cell_key(Coordinate(table.cursor_row, 0)).row_key.value


def _row_of(jobs: list[Job], key: str | None, cursor: int) -> int:
    """Where the cursor goes after a reload: on the same job (new jobs at the
    top of history must not move the operator's selection to another job),
    else at the same row."""
    for i, job in enumerate(jobs):
        if job.id == key:
            return i
    return min(cursor, len(jobs) - 1)
