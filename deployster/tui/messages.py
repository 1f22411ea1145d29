"""Messages between the app and its screens: the data travels in them."""

from __future__ import annotations

from textual.message import Message

from .reader import Overview


class DataRefreshed(Message, bubble=False):
    """The app fetched the overview again (or found what is down): sent to
    every screen on the stack, which shows ``overview`` from then on."""

    def __init__(self, overview: Overview) -> None:
        super().__init__()
        self.overview = overview


class RefreshRequested(Message, bubble=False):
    """A screen asks the app for a fetch soon (a control acted, ``ctrl+r``)."""
