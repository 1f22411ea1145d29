"""``?``: what the columns say, and every key of every screen, read from the
bindings themselves."""

from __future__ import annotations

from rich.table import Table as RichTable
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from deployster.fleet import NODE_STALE_S
from deployster.overview import STALE_AFTER

# (section title, its keys): given by the app (``binding_sections`` in app.py), which
# knows every screen; this screen knows none of them.
Sections = list[tuple[str, list[Binding]]]

# What the words in the tables and titles mean: the facts to read before u,
# c or r (README.md#the-dashboard).
TERMS: list[tuple[str, str]] = [
    ("lock holder", "the job holding the project's deploy lock: one job deploys a "
                    "project at a time"),
    ("TTL", "time left on the lock: it expires on its own at 0 unless its job's "
            "watchdog renews it (every third of the project's lock TTL)"),
    ("heartbeat", "how long ago the job holding the lock last said it is alive (its "
                  "runner beats every second)"),
    ("STALE", f"the lock is held but nobody renews it: its job is not running, or its "
              f"heartbeat is over {STALE_AFTER:g} s old. Check the runner, then u "
              "releases it"),
    ("runner", "a deploy server (deployster serve, or tui --serve) running the queues. "
               "'no runner': none is alive for this data, queued jobs wait for one"),
    ("runner gone", "the job is marked running but its server is not alive; its clock "
                    "stopped at the last heartbeat. The next server start ends it "
                    "(interrupted)"),
    ("node", "with projects on several hosts' servers (a fleet sharing one Redis and "
             "PostgreSQL): the host whose server runs the project's jobs, and only it. n "
             "shows one node's projects at a time, / matches node names too"),
    ("nodes 2/3 up", f"in the header, once more than one node has announced itself: how "
                     f"many nodes are up (a heartbeat in the last {NODE_STALE_S:g} s), then "
                     "each one down with its last heartbeat's age. A node down runs nothing: "
                     "its queued jobs wait for it"),
    ("queue", "jobs waiting for the project's lock; in a project's queue, 'waiting' is "
              "how long each has waited, and 'run' how long the running job has run"),
    ("starts in", "about when a queued job starts: the running job's rest plus a typical "
                  "run (the median of the last ten complete) per job ahead; '—' without "
                  "history. For the running job: what it has left of a typical run"),
    ("last", "the last finished deploy: ✔ complete or ✘ failed (the reason), and when"),
    ("deployed", "the commit deployed now (the newest complete job's); ↺ marks a "
                 "redeploy or rollback"),
    ("started", "in a history: when the job started, — if it never did (cancelled "
                "or superseded while queued)"),
]


class HelpScreen(ModalScreen[None]):
    BINDINGS = [
        Binding("escape", "dismiss", "Close", id="help.close"),
        Binding("question_mark", "dismiss", "Close", key_display="?", id="help.close2"),
        # q quits, as the "everywhere" section says (a modal hides the app's keys).
        Binding("q", "app.quit", "Quit", id="help.quit"),
    ]

    def __init__(self, sections: Sections) -> None:
        super().__init__()
        self.sections = sections

    def compose(self) -> ComposeResult:
        # A grid: a meaning wraps under itself, not under its term.
        terms = RichTable.grid(padding=(0, 2))
        terms.add_column(style="bold cyan", no_wrap=True)
        terms.add_column()
        for term, meaning in TERMS:
            terms.add_row(f"  {term}", meaning)
        table = Text()
        for section, bindings in self.sections:
            table.append(f"{section}\n", style="bold underline")
            for b in bindings:
                table.append(f"  {b.key_display or b.key:<12}", style="bold cyan")
                table.append(f"{b.description}\n")
            table.append("\n")
        with VerticalScroll(id="help-dialog"):
            yield Static("Columns and keys  (esc to close)", id="help-title")
            yield Static(Text("what the columns say", style="bold underline"))
            yield Static(terms, id="help-terms")
            yield Static(table, id="help-keys")

    async def action_dismiss(self, result: None = None) -> None:
        self.dismiss(None)
