"""A job's log, full screen: follow (f), wrap (w), timestamps (t), search (/, n, N),
top/bottom (g/G); its title names the project, the job and its status (as the
log pane last read it)."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Static

from deployster.models import Job, JobStatus
from deployster.overview import LogChunk

from ..format import DASH, commit, status_text
from ..messages import DataRefreshed
from ..reader import Reader
from ..widgets.footer import KeysFooter
from ..widgets.log_pane import LogPane
from ..widgets.log_view import LogView
from ..widgets.status_line import show_line

STATUS_STYLE = {JobStatus.COMPLETE: "green", JobStatus.FAILED: "red",
                JobStatus.RUNNING: "yellow"}


class LogScreen(Screen[None]):
    BINDINGS = [Binding("escape", "back", "Back", id="log.back")]

    def __init__(self, reader: Reader, job_id: str, *,
                 text: str | list[LogChunk] | None = None, job: Job | None = None) -> None:
        """``job``: its record as the caller has it, for the title until the
        pane reads it again (with ``text``: for good)."""
        super().__init__()
        self.reader = reader
        self.job_id = job_id
        self.text = text  # given: show it instead of reading the job's log
        self.job = job

    def compose(self) -> ComposeResult:
        yield Static(id="log-screen-title", markup=False)
        yield LogPane(self.reader, id="log-pane")
        yield KeysFooter()

    def _retitle(self) -> None:
        job = self.job
        if job is None:
            title = Text(f"job {self.job_id}", style="bold")
        else:
            title = Text.assemble((job.project, "bold"), f" · job {job.id} · ",
                                  (status_text(job), STATUS_STYLE.get(job.status, "")),
                                  f" · {commit(job)} on {job.ref_name or DASH}")
        show_line(self.query_one("#log-screen-title", Static), title)

    def on_log_pane_job_read(self, message: LogPane.JobRead) -> None:
        self.job = message.job
        self._retitle()

    def on_mount(self) -> None:
        self._retitle()
        pane = self.query_one(LogPane)
        if self.text is None:
            pane.show_job(self.job_id)
        else:
            job = self.job
            pane.show_text(self.job_id, self.text,
                           live=job is not None and job.status is JobStatus.RUNNING,
                           redeploy_of=job.redeploy_of if job else None)
        pane.query_one(LogView).focus()

    def on_data_refreshed(self, _message: DataRefreshed) -> None:
        # A fetch follows events (a job started or ended) or the slow poll:
        # the job followed may have moved, read it now.
        self.query_one(LogPane).wake()

    def on_screen_resume(self) -> None:
        self.query_one(LogPane).wake()  # not read while ? was open

    def action_back(self) -> None:
        self.app.pop_screen()
