"""A job's log, full screen: follow (f), wrap (w), timestamps (t), search (/, n, N),
top/bottom (g/G)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen

from deployster.overview import LogChunk

from ..messages import DataRefreshed
from ..reader import Reader
from ..widgets.footer import KeysFooter
from ..widgets.log_pane import LogPane
from ..widgets.log_view import LogView


class LogScreen(Screen[None]):
    BINDINGS = [Binding("escape", "back", "Back", id="log.back")]

    def __init__(self, reader: Reader, job_id: str, *,
                 text: str | list[LogChunk] | None = None) -> None:
        super().__init__()
        self.reader = reader
        self.job_id = job_id
        self.text = text  # given: show it instead of reading the job's log

    def compose(self) -> ComposeResult:
        yield LogPane(self.reader, id="log-pane")
        yield KeysFooter()

    def on_mount(self) -> None:
        pane = self.query_one(LogPane)
        if self.text is None:
            pane.show_job(self.job_id)
        else:
            pane.show_text(self.job_id, self.text)
        pane.query_one(LogView).focus()

    def on_data_refreshed(self, _message: DataRefreshed) -> None:
        # A fetch follows events (a job started or ended) or the slow poll:
        # the job followed may have moved, read it now.
        self.query_one(LogPane).wake()

    def on_screen_resume(self) -> None:
        self.query_one(LogPane).wake()  # not read while ? was open

    def action_back(self) -> None:
        self.app.pop_screen()
