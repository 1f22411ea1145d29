"""The command palette: every action of the current screen, by its description —
the screen's own, those of the dashboard's widgets on it (the log pane's follow,
wrap, timestamps, search…) and the app's."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from textual.app import App
from textual.binding import Binding
from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.widget import Widget


class DeploysterCommands(Provider):
    def _owners(self) -> list[Widget | App[Any]]:
        # Widgets of ours that declare actions of their own (not those they
        # inherit: a table's cursor keys are not commands).
        screen = self.screen
        ours: list[Widget | App[Any]] = [w for w in screen.query("*")
                if type(w).__module__.startswith("deployster.tui") and "BINDINGS" in vars(type(w))]
        return [screen, *ours, screen.app]

    def _commands(self) -> list[tuple[str, Callable[[], object], str]]:
        found: list[tuple[str, Callable[[], object], str]] = []
        seen: set[str] = set()
        for owner in self._owners():
            for b in owner.BINDINGS:
                if not isinstance(b, Binding) or not b.description or b.description in seen:
                    continue
                if owner.check_action(b.action, ()) is False:
                    continue  # not available now (say, clearing a search never made)
                seen.add(b.description)
                run = partial(owner.run_action, b.action)
                found.append((b.description, run, f"key: {b.key_display or b.key}"))
        return found

    async def discover(self) -> Hits:
        for name, run, help_text in self._commands():
            yield DiscoveryHit(name, run, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for name, run, help_text in self._commands():
            score = matcher.match(name)
            if score > 0:
                yield Hit(score, matcher.highlight(name), run, help=help_text)
