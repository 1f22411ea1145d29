"""One project: its queue in order, its history (paged) with the commit deployed
now, the selected job's log.

The screen reads its queue and history again only when they may have moved:
the project's row changed (a lock, the queue's length, the job running or last
finished), an event named the project, or a minute passed. Tables are drawn
again only when what they show changed; between reads a one-second clock
moves the queue's times and the lock's TTL and heartbeat in the title, and
only while there is something to count.
"""

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

from deployster.estimate import StartEstimate
from deployster.models import Job, JobStatus, Project
from deployster.overview import LogChunk, ProjectRow

from ..format import (
    DASH,
    clock_duration,
    commit,
    commit_cell,
    duration,
    heartbeat_text,
    job_duration,
    local_time,
    outcome,
    run_time,
    short_id,
    since,
    ttl_text,
)
from ..messages import DataRefreshed
from ..reader import Overview, Reader, row_facts
from ..widgets.footer import KeysFooter
from ..widgets.log_pane import LogPane
from ..widgets.status_line import show_line
from .base import CoreScreen
from .log import LogScreen

PAGE = 50
RELOAD_EVERY = 60.0  # seconds: the queue and history read again even with no sign of change
REF_WIDTH = 20
NAME_WIDTH = 20  # in the title: the lock's facts after it must fit 80 columns
NODE_WIDTH = 12  # the same, for a fleet's node after the name
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
        logs: dict[str, list[LogChunk]] | None = None, wait: StartEstimate | None = None,
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
        # The queue's start estimate and when it was read (the reader's monotonic
        # clock, s; fixed in snapshots): the running job's rest shrinks with it.
        self.wait = wait or StartEstimate()
        self._wait_read = reader.monotonic()
        self.history: list[Job] = history or []
        self.history_done = self.fixed
        self.logs = logs or {}
        self.selected_job: Job | None = None
        self._history_lock = asyncio.Lock()
        # What the last read was made for (``_reload_due``), and when.
        self._loaded: tuple[object, ...] | None = None
        self._loaded_at = 0.0
        # What the tables show now: drawn again only when this changes.
        self._queue_shown: list[tuple[str, tuple[object, ...]]] = []
        self._queue_times: dict[str, tuple[str, str]] = {}
        self._history_shown: list[Job] | None = None

    def compose(self) -> ComposeResult:
        yield Static(self.project.name, id="project-title")
        with Horizontal(id="project-body"):
            with Vertical(id="project-left"):
                yield Static("queue", classes="pane-title", id="queue-title")
                queue: DataTable[Any] = DataTable(id="queue", cursor_type="row")
                for label in ("#", "job", "status", "commit", "waiting", "starts in", "ref"):
                    queue.add_column(label, key=label)
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
        self.clock = self.set_interval(1.0, self._tick, pause=True)
        self._render_title()
        if self.fixed:
            self._render_tables()
        elif self._reload_due():
            self._start_reload()

    def on_data_refreshed(self, message: DataRefreshed) -> None:
        self.overview = message.overview
        # Under another screen (the full log) nothing is read or drawn: what a
        # hidden screen paints is repainted on the one above it.
        if self.is_active:
            self._refreshed()

    def on_screen_suspend(self) -> None:
        self.clock.pause()

    def on_screen_resume(self) -> None:
        self._refreshed()
        self.query_one(LogPane).wake()  # not read while it was hidden

    def _refreshed(self) -> None:
        # The title (the lock's TTL and heartbeat, what is down) and whether a
        # runner is alive: no reads, and nothing drawn unless it changed.
        self._render_tables()
        if not self.fixed and self._reload_due():
            self._start_reload()
            self.query_one(LogPane).wake()

    def _reload_due(self) -> bool:
        """Whether the queue and history may have moved since the last read."""
        row = self.row
        facts = (row_facts(row) if row else None, self.overview.changes(self.project.id))
        return facts != self._loaded or \
            self.reader.monotonic() - self._loaded_at > RELOAD_EVERY

    def _start_reload(self) -> None:
        row = self.row
        self._loaded = (row_facts(row) if row else None, self.overview.changes(self.project.id))
        self._loaded_at = self.reader.monotonic()
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
            self._loaded = None  # read again at the next fetch
            log.warning("project %s: reload failed", self.project.name, exc_info=True)

    async def _reload(self) -> None:
        window = await self.reader.queue(self.project.id)
        row = self.row
        running = row.running if row and row.running and \
            row.running.status is JobStatus.RUNNING else None
        self.queue = ([running] if running else []) + window.jobs
        self.queue_total = (1 if running else 0) + window.total
        self.wait, self._wait_read = window.wait, self.reader.monotonic()
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

    def _queue_rows(self) -> list[tuple[str, tuple[object, ...]]]:
        """The queue table's rows (job id, cells), less the times, which tick."""
        offset = 0 if self.queue and self.queue[0].status is JobStatus.RUNNING else 1
        return [(job.id, ("▶" if job.status is JobStatus.RUNNING else str(i + offset),
                          short_id(job.id), self._queue_status(job), commit_cell(job),
                          Text(ref(job))))
                for i, job in enumerate(self.queue)]

    def _queue_status(self, job: Job) -> Text:
        """A queue row's status, and whether anything will move it: a
        running job whose runner is gone, a queued job with no runner alive."""
        if self.overview.runner_gone(job):
            return Text("runner gone", style="bold red")
        if job.status is JobStatus.QUEUED and self.overview.no_runner:
            return Text("queued · no runner", style="bold yellow")
        return Text(job.status.value)

    def _queue_time(self, job: Job) -> str:
        """The ``waiting`` column: how long a queued job has waited; for the
        running job, how long it has run, said so ("run")."""
        if job.status is JobStatus.RUNNING:
            gone = self.overview.runner_gone(job)
            return f"run {clock_duration(run_time(job, gone=gone))}"
        return clock_duration(since(job.queued_at))

    def _queue_eta(self, job: Job, position: int) -> str:
        """The ``starts in`` column (deployster/estimate.py): about when a
        queued job starts; for the running job, what it has left of a typical
        run. A dash without history, or for a running job past it."""
        wait = self.wait.aged(self.reader.monotonic() - self._wait_read)
        if job.status is JobStatus.RUNNING:
            return f"~{clock_duration(wait.remaining_ms / 1000)} left" \
                if wait.typical_ms is not None and wait.remaining_ms > 0 else DASH
        starts_in = wait.starts_in(position)
        return DASH if starts_in is None else f"~{clock_duration(starts_in)}"

    def _queue_clocks(self) -> list[tuple[str, str]]:
        """Each queue row's two ticking cells: waiting (or run) and starts in."""
        offset = 0 if self.queue and self.queue[0].status is JobStatus.RUNNING else 1
        return [(self._queue_time(job), self._queue_eta(job, i + offset))
                for i, job in enumerate(self.queue)]

    def _render_queue(self) -> None:
        queue = self.query_one("#queue", DataTable)
        rows = self._queue_rows()
        if rows == self._queue_shown:
            self._tick_queue()
            return
        cursor, key = queue.cursor_row, _key_at_cursor(queue)
        queue.clear()
        self._queue_times = {}
        for (job_id, (pos, short, status, commit_text, ref_text)), clocks in zip(
                rows, self._queue_clocks(), strict=True):
            self._queue_times[job_id] = clocks
            queue.add_row(pos, short, status, commit_text, *clocks, ref_text, key=job_id)
        self._queue_shown = rows
        if self.queue:
            queue.move_cursor(row=_row_of(self.queue, key, cursor), animate=False)

    def _tick_queue(self) -> None:
        """The queue's times, the cells whose text moved only."""
        queue = self.query_one("#queue", DataTable)
        for job, clocks in zip(self.queue, self._queue_clocks(), strict=True):
            was = self._queue_times.get(job.id)
            if was == clocks:
                continue
            self._queue_times[job.id] = clocks
            for column, text, before in zip(("waiting", "starts in"), clocks,
                                            was or ("", ""), strict=True):
                if text != before:
                    queue.update_cell(job.id, column, text)

    def _render_history(self) -> None:
        if self.history == self._history_shown:
            return
        hist = self.query_one("#history", DataTable)
        cursor, key = hist.cursor_row, _key_at_cursor(hist)
        hist.clear()
        for job in self.history:
            # A job that never started (cancelled or superseded while queued)
            # has no start time and no duration: "—", not its queue time.
            hist.add_row(Text(outcome(job), style=OUTCOME_STYLE.get(job.status, "")),
                         short_id(job.id), commit_cell(job), local_time(job.started_at),
                         duration(job_duration(job)), Text(ref(job)), key=job.id)
        self._history_shown = list(self.history)
        if self.history:
            hist.move_cursor(row=_row_of(self.history, key, cursor), animate=False)

    def _render_tables(self) -> None:
        self._render_title()
        self._render_queue()
        # The queue's length, how much of it is shown (its head: the window
        # read, overview.QUEUE_WINDOW jobs), and whether anything will run it.
        hidden = self.queue_total - len(self.queue)
        shown = f" · first {len(self.queue)} shown" if hidden > 0 else ""
        waiting = any(j.status is JobStatus.QUEUED for j in self.queue)
        idle = ""
        if waiting and self.overview.no_runner:
            idle = " · no runner is alive: they wait until a deploy server runs (deployster serve)"
        elif waiting and (down := self.node_down(self.project)) is not None:
            idle = f" · node {down.name} is down: they wait until it is back"
        show_line(self.query_one("#queue-title", Static),
                  Text(f"queue · {self.queue_total} job(s){shown}{idle}"))
        self._render_history()
        more = "" if self.history_done else " · m for more"
        row = self.row
        deployed = row.deployed if row else None
        now = (f" · deployed now {commit(deployed)} (job {short_id(deployed.id)})"
               if deployed else "")
        # Text: a commit is a request's text, never markup.
        show_line(self.query_one("#history-title", Static),
                  Text(f"history · {len(self.history)} shown{more}{now}"))
        self._wind_clock()
        selected = self.selected_job
        if selected is not None:
            # The record as read now (its status moves), for c and r.
            self.selected_job = next((j for j in (*self.queue, *self.history)
                                      if j.id == selected.id), selected)
        elif self.queue:
            # The running (else next) job first: what the operator came to watch.
            self.query_one("#queue", DataTable).focus()
            self._select(self.queue[0])
        elif self.history:
            self._select(self.history[0])

    def _wind_clock(self) -> None:
        """Run the one-second clock while something on screen counts time: a
        queued or running job, a lock's TTL and heartbeat."""
        row = self.row
        if self.queue or (row is not None and row.lock_owner is not None):
            self.clock.resume()
        else:
            self.clock.pause()

    def _tick(self) -> None:
        self._render_title()
        self._tick_queue()

    def _render_title(self) -> None:
        """Name, its node in a fleet (and whether it is down), lock (holder,
        TTL, heartbeat) and what is down: the facts to know before u, c or r,
        in the order an 80-column line keeps them."""
        row = self.row
        name = self.project.name
        title = Text(name if len(name) <= NAME_WIDTH else name[:NAME_WIDTH - 1] + "…",
                     style="bold")
        if self.overview.fleet:
            node = self.project.node or DASH
            title.append(" on ")
            title.append(node if len(node) <= NODE_WIDTH else node[:NODE_WIDTH - 1] + "…",
                         style="bold")
            if (gone := self.node_down(self.project)) is not None:
                title.append(f" (down {duration(self.node_age(gone))})", style="bold red")
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
        show_line(self.query_one("#project-title", Static), title)

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
                                           if self.fixed else None, job=job))

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
