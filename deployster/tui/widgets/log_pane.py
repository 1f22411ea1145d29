"""A job's log: a bounded tail window, followed live while the job runs.

Only the last ``MAX_LINES`` lines (read from at most ``MAX_BYTES`` of the end of
the log) are ever held, and the view renders only the rows on screen, so a
million-line log costs what a small one does; the pane's title says when older
output was left out. Following reads the stream from the last id seen
(``log_entries(after=…)``); pausing it (``f``) stops reading, and resuming
continues where it stopped, so nothing is lost. A job that prints nothing is
read less and less often (``FOLLOW_INTERVAL`` doubling up to
``FOLLOW_IDLE_INTERVAL``); its screen wakes the pane (``wake``) when the
job's project moved (it started, it ended).

The keys are k9s's: ``f`` follow, ``w`` wrap, ``t`` timestamps (each stream
entry's write time), ``/`` search with ``n``/``N`` to the next/previous match,
``g``/``G`` top/bottom.
"""

from __future__ import annotations

import asyncio
import contextlib

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Input, Static

from deployster.models import Job, JobStatus
from deployster.overview import LogChunk

from ..format import short_id
from ..reader import Reader
from .log_view import LogView
from .status_line import show_line

MAX_LINES = 50_000
MAX_BYTES = 1024 * 1024
FOLLOW_INTERVAL = 0.25  # seconds between reads of a job that prints
FOLLOW_IDLE_INTERVAL = 1.0  # at most, for one that printed nothing lately (a queued job)


class LogPane(Vertical):
    class JobRead(Message):
        """The pane read its job's record, and its status is not the one it
        read before (the first read too): its screen may say so."""

        def __init__(self, job: Job) -> None:
            super().__init__()
            self.job = job

    BINDINGS = [
        Binding("f", "toggle_follow", "Follow", id="log.follow"),
        Binding("w", "toggle_wrap", "Wrap", id="log.wrap"),
        Binding("t", "toggle_timestamps", "Timestamps", id="log.timestamps"),
        Binding("slash", "search", "Search", key_display="/", id="log.search"),
        Binding("n", "next_match", "Next match", id="log.next"),
        Binding("N", "previous_match", "Previous match", key_display="N", show=False,
                id="log.previous"),
        Binding("g", "top", "Top", id="log.top"),
        Binding("G", "bottom", "Bottom", key_display="G", id="log.bottom"),
        Binding("escape", "clear_search", "Clear search", id="log.clear"),
    ]

    def __init__(self, reader: Reader, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.reader = reader
        self.job_id: str | None = None
        self.redeploy_of: str | None = None  # the job shown redeploys this one
        self.follow = True
        self.live = False  # the job is still running: there may be more
        self.queued = False  # the job waits in its queue: no output yet
        self.truncated = False
        self.last_id = "0-0"
        self.query_text = ""
        self._partial = ""
        self._partial_t: int | None = None
        self._wake = asyncio.Event()
        self._status: tuple[str, str | None] | None = None  # the job's, as last read

    def compose(self) -> ComposeResult:
        yield Static("no job selected", id="log-title", classes="pane-title")
        yield Input(placeholder="search the log — enter to find, n/N next/previous, "
                    "esc to clear", id="log-search")
        view = LogView(max_lines=MAX_LINES, id="log")
        view.tz = self.reader.wall_clock().tzinfo  # times of day as the header's clock
        yield view

    @property
    def log_view(self) -> LogView:
        return self.query_one("#log", LogView)

    @property
    def wrap(self) -> bool:
        return self.log_view.wrap

    @property
    def timestamps(self) -> bool:
        return self.log_view.timestamps

    @property
    def lines(self) -> list[str]:
        return self.log_view.lines

    @property
    def text(self) -> str:
        """What the pane holds (the window), for tests and screenshots."""
        return "\n".join([*self.lines, *([self._partial] if self._partial else [])])

    def show_job(self, job_id: str | None) -> None:
        if job_id == self.job_id:
            return
        self.job_id = job_id
        self.redeploy_of = None
        self.truncated = False
        self.queued = False
        self._status = None
        self._partial, self._partial_t = "", None
        self.log_view.clear()
        self.workers.cancel_group(self, "log")
        if job_id is None:
            self._retitle()
            return
        async def load() -> None:  # made when the worker runs: a worker replaced
            await self._load(job_id)  # before it started leaves no coroutine unawaited
        self.run_worker(load, group="log", exclusive=True)  # type: ignore[arg-type]  # textual's WorkType infers Never here

    def show_text(self, job_id: str, text: str | list[LogChunk], *, live: bool = False,
                  redeploy_of: str | None = None) -> None:
        """Show a job's log given as text or chunks (demo data, snapshots); ``live``
        and ``redeploy_of`` only say so in the title (following, paused…):
        nothing is read."""
        self.show_job(None)
        self.job_id = job_id
        self.redeploy_of = redeploy_of
        self.live = live
        self._append(text if isinstance(text, list) else [LogChunk(text, None)], final=True)
        self._retitle()

    async def _load(self, job_id: str) -> None:
        try:
            await self._load_and_follow(job_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # Redis or the database down: say so, keep the UI
            titles = self.query("#log-title")
            if not titles:
                # The pane is being taken down with its screen (escape while
                # following): its children went first. Nothing left to tell.
                return
            titles.first(Static).update(
                f"log · {short_id(job_id)} · unavailable: {type(exc).__name__} "
                "(select the job again to retry)")
            self.job_id = None

    async def _load_and_follow(self, job_id: str) -> None:
        window = await self.reader.log_window(job_id, max_bytes=MAX_BYTES)
        job = await self.reader.job(job_id)
        self._read(job)
        self.truncated = window.truncated
        self.last_id = window.last_id
        self.redeploy_of = job.redeploy_of if job is not None else None
        # A queued job has no stream yet: it is followed too, until it has run.
        self.live = job is not None and not job.status.finished
        self.queued = job is not None and job.status is JobStatus.QUEUED
        self._append(window.chunks, final=not self.live)
        self._retitle()
        interval = FOLLOW_INTERVAL
        while self.live:
            # Under another screen (the full log over the project's) the
            # pane is not read: its screen wakes it when it is on top again.
            moved = await self._poll(job_id) if self.follow and self.screen.is_active \
                else False
            interval = FOLLOW_INTERVAL if moved else min(interval * 2, FOLLOW_IDLE_INTERVAL)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval)

    def wake(self) -> None:
        """Read the followed job now (its project moved: it may have started or
        ended), not at the next slow poll."""
        self._wake.set()

    async def _poll(self, job_id: str) -> bool:
        """Read what the job printed since the last read; whether anything moved."""
        chunks: list[LogChunk] = []
        size = 0
        async for entry_id, chunk in self.reader.log_entries(job_id, after=self.last_id):
            self.last_id = entry_id
            chunks.append(chunk)
            size += len(chunk.text)
            while size > MAX_BYTES and len(chunks) > 1:  # a burst: keep its end only
                size -= len(chunks.pop(0).text)
                self.truncated = True
        job = await self.reader.job(job_id)
        self._read(job)
        if job is None or job.status.finished:
            self.live = False
        queued = job is not None and job.status is JobStatus.QUEUED
        if chunks or not self.live or queued != self.queued:
            self.queued = queued
            self._append(chunks, final=not self.live)
            self._retitle()
            return True
        return False

    def _read(self, job: Job | None) -> None:
        status = (job.status.value, job.reason) if job is not None else None
        if job is not None and status != self._status:
            self.post_message(self.JobRead(job))
        self._status = status

    def _append(self, chunks: list[LogChunk], *, final: bool) -> None:
        """Write complete lines, each with the time its first byte was written;
        hold a trailing partial line until it ends."""
        lines: list[str] = []
        stamps: list[int | None] = []
        partial, partial_t = self._partial, self._partial_t
        for chunk in chunks:
            pieces = chunk.text.split("\n")
            for piece in pieces[:-1]:
                lines.append(partial + piece)
                stamps.append(partial_t if partial else chunk.t)
                partial, partial_t = "", None
            if pieces[-1]:
                if not partial:
                    partial_t = chunk.t
                partial += pieces[-1]
        if final and partial:
            lines.append(partial)
            stamps.append(partial_t)
            partial, partial_t = "", None
        self._partial, self._partial_t = partial, partial_t
        if self.log_view.append(lines, stamps):
            self.truncated = True

    def _retitle(self) -> None:
        view = self.log_view
        if self.job_id is None:
            title = "no job selected"
        else:
            if not self.live:
                state = "finished"
            elif self.queued:
                state = "queued: no output yet"
            else:
                state = "following" if self.follow else "paused (f to follow)"
            title = f"log · {short_id(self.job_id)}"
            if self.redeploy_of:  # a redeploy or rollback: of which job
                title += f" · redeploy of {short_id(self.redeploy_of)}"
            title += f" · {state}"
            if view.wrap:
                title += " · wrap"
            if view.timestamps:
                title += " · timestamps" if view.has_stamps else " · no timestamps (history)"
            if view.pattern is not None:
                where = "no match" if not view.matches else (
                    f"{(view.current or 0) + 1} of {len(view.matches)}"
                    if view.current is not None else f"{len(view.matches)} lines")
                title += f" · /{self.query_text} {where}"
            if self.truncated:
                title += f" · showing the last {len(view.lines):,} lines only"
        show_line(self.query_one("#log-title", Static), title)

    # --------------------------------------------------------------- actions
    def _pause(self) -> None:
        if self.follow:
            self.action_toggle_follow()

    def action_toggle_follow(self) -> None:
        self.follow = not self.follow
        view = self.log_view
        view.auto_scroll = self.follow
        if self.follow:
            view.scroll_end(animate=False, immediate=True, x_axis=False)
        self._retitle()

    def action_toggle_wrap(self) -> None:
        self.log_view.set_wrap(not self.log_view.wrap)
        self._retitle()

    def action_toggle_timestamps(self) -> None:
        self.log_view.set_timestamps(not self.log_view.timestamps)
        self._retitle()

    def action_top(self) -> None:
        self._pause()
        self.log_view.scroll_home(animate=False, immediate=True)

    def action_bottom(self) -> None:
        self.log_view.scroll_end(animate=False, immediate=True)

    def action_search(self) -> None:
        box = self.query_one("#log-search", Input)
        box.display = True
        box.value = self.query_text
        box.focus()
        self.refresh_bindings()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id != "log-search":
            return
        event.stop()
        self.query_text = event.value.strip()
        if not self.query_text:
            self.action_clear_search()
            return
        event.input.display = False
        view = self.log_view
        view.focus()
        if view.search(self.query_text):
            self._pause()  # the match stays where the operator is looking
            view.go_to_match(view.current or 0)
        self._retitle()
        self.refresh_bindings()

    def action_next_match(self) -> None:
        self._step(1)

    def action_previous_match(self) -> None:
        self._step(-1)

    def _step(self, step: int) -> None:
        view = self.log_view
        if view.pattern is None:
            self.notify("no search: press / first", timeout=2)
            return
        self._pause()
        if not view.next_match(step):
            self.notify(f"no match for {self.query_text!r}", timeout=2)
        self._retitle()

    @property
    def searching(self) -> bool:
        boxes = self.query("#log-search")
        return bool(boxes and boxes.first().display) or self.log_view.pattern is not None

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # Nothing to clear: escape goes on to the screen (back) and the footer
        # shows that instead.
        return self.searching if action == "clear_search" else True

    def action_clear_search(self) -> None:
        self.query_one("#log-search", Input).display = False
        self.query_text = ""
        self.log_view.search("")
        self.log_view.focus()
        self._retitle()
        self.refresh_bindings()
