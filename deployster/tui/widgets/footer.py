"""The key bar: Textual's footer, with ``?`` (every key) and ``q`` (quit) first.

On a narrow terminal the end of the bar is what gets cut. The screen's own keys
can go there, since ``?`` lists them all; the way to see them and the way out
cannot. Under ``PALETTE_FROM`` columns ``^p`` leaves the bar too (``?`` lists it).
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.events import Resize
from textual.widgets import Footer
from textual.widgets._footer import FooterKey

FIRST = ("help", "quit", "back")  # in this order: every key, the way out, back
PALETTE_FROM = 100


class KeysFooter(Footer):
    def __init__(self) -> None:
        super().__init__(compact=True)

    def compose(self) -> ComposeResult:
        keys = list(super().compose())
        first = sorted((k for k in keys if isinstance(k, FooterKey) and k.action in FIRST),
                       key=lambda k: FIRST.index(k.action))
        yield from first
        yield from (k for k in keys if k not in first)

    def on_resize(self, event: Resize) -> None:
        self.show_command_palette = event.size.width >= PALETTE_FROM
