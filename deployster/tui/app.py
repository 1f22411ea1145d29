"""The dashboard app, built by ``make_app`` so tests, screenshots and benchmarks
drive the same thing the operator runs.

Refresh follows dolphie's pattern: one loop fetches the overview, and the next
fetch is scheduled only after the last one finished, at most ``MAX_RATE`` times
a second. Events from the core's pub/sub channel wake it early; a slow poll
covers what has no event (TTL, heartbeats): every ``poll_interval`` while a
lock is held, a job runs or something is down, ``IDLE_FACTOR`` times slower
while nothing is (the clocks count down locally meanwhile). While a modal is
open the loop skips the fetch, so what the operator is confirming does not
move under them. A fetch that found what the last one did hands the screens
the same rows (``Overview.rows`` is the last list): they redraw nothing.

The app owns the data: it makes the one ``Reader`` (``reader.py``) every
screen and widget is given in its constructor, and sends each fetch's
``Overview`` to the screens in a ``DataRefreshed`` message. No screen or
widget reads the app's state or imports the app: it is the one module that
knows every screen (it gives the ``?`` screen its sections, too), and
``tests/tui/test_imports.py`` keeps the imports one-way.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import getpass
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Any

from textual.app import App
from textual.binding import Binding, BindingType
from textual.screen import ModalScreen

from deployster.events import HISTORY, PROJECTS, SUBSCRIBED
from deployster.service import Deployster
from deployster.settings import Settings
from deployster.store import LastDeploys

from .commands import DeploysterCommands
from .messages import DataRefreshed, RefreshRequested
from .reader import STARTING, UP, Overview, Reader
from .screens.confirm import ConfirmScreen
from .screens.help import HelpScreen, Sections
from .screens.log import LogScreen
from .screens.project import ProjectScreen
from .screens.projects import ProjectsScreen
from .widgets.log_pane import LogPane

MAX_RATE = 4.0  # fetches per second, at most
POLL_INTERVAL = 1.0  # seconds between fetches without an event, while anything moves
# Nothing locked, running or down: what has no event (a lock expiring, a
# heartbeat) cannot change, and a fetch a second was most of the idle CPU.
IDLE_FACTOR = 5.0
LAST_MAX_AGE = 60.0  # seconds the last finished deploys are reused without an event


class DeploysterApp(App[None]):
    CSS_PATH = "styles/app.tcss"
    TITLE = "deployster"
    COMMANDS = App.COMMANDS | {DeploysterCommands}
    BINDINGS = [
        Binding("q", "quit", "Quit", id="quit"),
        Binding("question_mark", "help", "Keys", key_display="?", id="help"),
        Binding("ctrl+p", "command_palette", "Commands", show=False, id="palette"),
    ]

    def __init__(
        self,
        core: Deployster,
        *,
        live: bool = True,
        poll_interval: float = POLL_INTERVAL,
        actor: str | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] | None = None,
        settings: Settings | None = None,
    ) -> None:
        super().__init__()
        self.reader = Reader(core, actor=actor or f"tui:{_user()}", live=live,
                             monotonic=monotonic,
                             wall_clock=wall_clock or (lambda: datetime.now().astimezone()),
                             settings=settings)
        self.poll_interval = poll_interval
        self.overview = Overview([], STARTING, monotonic())
        self.refreshes = 0
        self._wake = asyncio.Event()
        # Events heard, by project (None: one that names no project): a screen
        # reads again what an event may have changed (``Overview.changes``).
        self._events: dict[int | None, int] = {}
        # The last finished deploys (and the last complete ones: what is
        # deployed) change only when the history writer has copied a job to
        # SQL: they are queried again after its ``history`` event (or a
        # projects change), and at least every minute.
        self._last_at = -LAST_MAX_AGE  # when they were last queried
        self._last_stale = True  # the next fetch queries them
        self._frozen = False

    @property
    def core(self) -> Deployster:
        """The core the reader reads (the bench swaps in a new one: cold caches)."""
        return self.reader.core

    @core.setter
    def core(self, core: Deployster) -> None:
        self.reader.core = core

    # ------------------------------------------------------------- lifecycle
    def get_default_screen(self) -> ProjectsScreen:
        # The home screen is the bottom of the stack: no blank default screen
        # behind it, which Textual would count as a background to repaint (a
        # full-screen repaint on every refresh).
        return ProjectsScreen(self.reader, self.overview)

    def on_mount(self) -> None:
        if self.reader.live:
            self._wake.set()  # the first fetch right away
            self.run_worker(self._refresh_loop(), group="refresh", exclusive=True)
            self.run_worker(self._event_loop(), group="events", exclusive=True)

    def request_refresh(self) -> None:
        """Ask for a fetch soon (coalesced: many requests, one fetch)."""
        self._wake.set()

    def on_refresh_requested(self, _message: RefreshRequested) -> None:
        self.request_refresh()

    async def _refresh_loop(self) -> None:
        min_gap = 1.0 / MAX_RATE
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.next_poll())
            self._wake.clear()
            started = time.monotonic()
            if not isinstance(self.screen, ModalScreen):
                await self.refresh_data()
            # The next fetch is scheduled only now, after this one finished.
            await asyncio.sleep(max(0.0, min_gap - (time.monotonic() - started)))

    def next_poll(self) -> float:
        """Seconds until the next fetch if no event comes first."""
        shown = self.overview
        # A node down is not "moving": its age counts locally (widgets/status_line.py)
        # and one gone for good would keep the poll fast forever.
        moving = shown.health != UP or any(r.lock_owner is not None or r.running is not None
                                           for r in shown.rows)
        return self.poll_interval if moving else self.poll_interval * IDLE_FACTOR

    async def _event_loop(self) -> None:
        while True:
            try:
                async for event in self.reader.events():
                    if event.get("type") in (HISTORY, PROJECTS, SUBSCRIBED):
                        self.history_changed()
                    project = event.get("project")
                    self._heard(project if isinstance(project, int) else None)
                    self._wake.set()
            except Exception:  # Redis went away (the poll shows it): subscribe again
                self.history_changed()  # events may have been missed meanwhile
                self._heard(None)
            await asyncio.sleep(1.0)

    def _heard(self, project: int | None) -> None:
        self._events[project] = self._events.get(project, 0) + 1

    def history_changed(self) -> None:
        """The SQL history moved (or projects changed): the next fetch queries
        the last finished deploys again instead of reusing them."""
        self._last_stale = True

    async def refresh_data(self) -> None:
        """Fetch the overview once and send it to every screen."""
        now = time.monotonic()
        reuse = not self._last_stale and now - self._last_at < LAST_MAX_AGE
        before = self.overview
        last = {r.project.id: LastDeploys(r.last, r.deployed)
                for r in before.rows if r.last} if reuse else None
        # Cleared before the query: an event landing while it runs marks the
        # result stale again, so the next fetch cannot miss that write.
        self._last_stale = False
        try:
            # The nodes: one HGETALL beside the rest, nothing per project.
            rows, runners, nodes = await asyncio.gather(
                self.reader.project_rows(last=last), self.reader.runners(),
                self.reader.nodes())
        except Exception:  # any outage: keep the last rows, say what is down
            if last is None:
                self._last_stale = True
            self.overview = replace(before, health=await self.reader.health())
        else:
            if rows == before.rows:  # nothing moved: the screens see the same list
                rows = before.rows
            if before.nodes is not None and nodes == before.nodes:
                nodes = before.nodes
            self.overview = Overview(rows, UP, self.reader.monotonic(), dict(self._events),
                                     runners, nodes)
            if last is None:
                self._last_at = now
            if not self._frozen:
                # Everything loaded so far (Textual, the rows, the core) lives as
                # long as the app: out of the collector's sight, a full collection
                # no longer walks it and stalls a frame (the Instagram trick).
                gc.freeze()
                self._frozen = True
        self.refreshes += 1
        for screen in self.screen_stack:
            screen.post_message(DataRefreshed(self.overview))

    # --------------------------------------------------------------- actions
    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(binding_sections()))


def binding_sections() -> Sections:
    """Every key, by where it works: what ``?`` lists."""

    def only(items: list[BindingType]) -> list[Binding]:
        return [b for b in items if isinstance(b, Binding)]

    return [
        ("everywhere", only(DeploysterApp.BINDINGS)),
        ("projects", only(ProjectsScreen.BINDINGS)),
        ("project", only(ProjectScreen.BINDINGS)),
        ("log (project screen and full log)", only(LogPane.BINDINGS + LogScreen.BINDINGS)),
        ("confirmation", only(ConfirmScreen.BINDINGS)),
    ]


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in a container: still act, as "operator"
        return "operator"


def make_app(core: Deployster, **options: Any) -> DeploysterApp:
    """The dashboard over ``core``; options as for ``DeploysterApp``."""
    return DeploysterApp(core, **options)
