"""A job's log: a bounded tail window, followed live while the job runs.

Only the last ``MAX_LINES`` lines (read from at most ``MAX_BYTES`` of the end of
the log) are ever held, so a million-line log costs what a small one does; the
pane's title says when older output was left out. Following reads the stream
from the last id seen (``read_log(after=…)``); pausing it (``f``) stops reading,
and resuming continues where it stopped, so nothing is lost.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, cast

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import RichLog, Static

from deployster.logstream import read_log
from deployster.overview import log_window

from ..format import short_id

if TYPE_CHECKING:
    from ..app import DeploysterApp

MAX_LINES = 5_000
MAX_BYTES = 1024 * 1024
FOLLOW_INTERVAL = 0.25


class LogPane(Vertical):
    BINDINGS = [
        Binding("f", "toggle_follow", "Follow", id="log.follow"),
        Binding("w", "toggle_wrap", "Wrap", id="log.wrap"),
        Binding("g", "top", "Top", id="log.top"),
        Binding("G", "bottom", "Bottom", key_display="G", id="log.bottom"),
    ]

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.job_id: str | None = None
        self.follow = True
        self.wrap = False
        self.live = False  # the job is still running: there may be more
        self.truncated = False
        self.last_id = "0-0"
        self.lines: deque[str] = deque(maxlen=MAX_LINES)
        self._partial = ""
        self._dropped = False

    def compose(self) -> ComposeResult:
        yield Static("no job selected", id="log-title", classes="pane-title")
        yield RichLog(max_lines=MAX_LINES, wrap=False, markup=False, highlight=False,
                      auto_scroll=True, id="log")

    @property
    def dapp(self) -> DeploysterApp:
        return cast("DeploysterApp", self.app)

    @property
    def log_widget(self) -> RichLog:
        return self.query_one("#log", RichLog)

    @property
    def text(self) -> str:
        """What the pane holds (the visible window), for tests and screenshots."""
        return "\n".join([*self.lines, *([self._partial] if self._partial else [])])

    def show_job(self, job_id: str | None) -> None:
        if job_id == self.job_id:
            return
        self.job_id = job_id
        self.lines.clear()
        self._partial = ""
        self.log_widget.clear()
        self.workers.cancel_group(self, "log")
        if job_id is None:
            self._retitle()
            return
        self.run_worker(self._load(job_id), group="log", exclusive=True)

    def show_text(self, job_id: str, text: str) -> None:
        """Show a finished job's log given as text (demo data, snapshots)."""
        self.show_job(None)
        self.job_id = job_id
        self.live = False
        self._append(text, final=True)
        self._retitle()

    async def _load(self, job_id: str) -> None:
        try:
            await self._load_and_follow(job_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # Redis or the database down: say so, keep the UI
            self.query_one("#log-title", Static).update(
                f"log · {short_id(job_id)} · unavailable: {type(exc).__name__} "
                "(select the job again to retry)")
            self.job_id = None

    async def _load_and_follow(self, job_id: str) -> None:
        core = self.dapp.core
        window = await log_window(core, job_id, max_bytes=MAX_BYTES)
        job = await core.job(job_id)
        self.truncated = window.truncated
        self.last_id = window.last_id
        self.live = window.live and job is not None and not job.status.finished
        self._append(window.text, final=not self.live)
        self._retitle()
        while self.live:
            if self.follow:
                await self._poll(job_id)
            await asyncio.sleep(FOLLOW_INTERVAL)

    async def _poll(self, job_id: str) -> None:
        core = self.dapp.core
        chunks: list[str] = []
        async for entry_id, text in read_log(core.redis, core.keys, job_id, after=self.last_id):
            self.last_id = entry_id
            chunks.append(text)
            if sum(map(len, chunks)) > MAX_BYTES:
                chunks = ["".join(chunks)[-MAX_BYTES:]]
                self.truncated = True
        job = await core.job(job_id)
        if job is None or job.status.finished:
            self.live = False
        if chunks or not self.live:
            self._append("".join(chunks), final=not self.live)
            self._retitle()

    def _append(self, text: str, *, final: bool) -> None:
        """Write complete lines; hold a trailing partial line until it ends."""
        combined = self._partial + text
        new = combined.split("\n")
        self._partial = "" if final else new.pop()
        if final and new and new[-1] == "":
            new.pop()
        if len(new) + len(self.lines) > MAX_LINES:
            self.truncated = True
        new = new[-MAX_LINES:]
        if not new:
            return
        self.lines.extend(new)
        self.log_widget.write("\n".join(new), scroll_end=self.follow)

    def _retitle(self) -> None:
        if self.job_id is None:
            title = "no job selected"
        else:
            state = ("following" if self.follow else "paused (f to follow)") if self.live \
                else "finished"
            title = f"log · {short_id(self.job_id)} · {state}"
            if self.wrap:
                title += " · wrap"
            if self.truncated:
                title += f" · showing the last {len(self.lines):,} lines only"
        self.query_one("#log-title", Static).update(title)

    # --------------------------------------------------------------- actions
    def action_toggle_follow(self) -> None:
        self.follow = not self.follow
        self.log_widget.auto_scroll = self.follow
        if self.follow:
            self.log_widget.scroll_end(animate=False)
        self._retitle()

    def action_toggle_wrap(self) -> None:
        self.wrap = not self.wrap
        log = self.log_widget
        log.wrap = self.wrap
        log.clear()
        if self.lines:
            log.write("\n".join(self.lines), scroll_end=self.follow)
        self._retitle()

    def action_top(self) -> None:
        if self.follow:
            self.action_toggle_follow()
        self.log_widget.scroll_home(animate=False)

    def action_bottom(self) -> None:
        self.log_widget.scroll_end(animate=False)
