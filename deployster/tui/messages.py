"""Messages the app posts to its screens."""

from __future__ import annotations

from textual.message import Message


class DataRefreshed(Message, bubble=False):
    """The app's overview (``app.rows``) was fetched again."""
