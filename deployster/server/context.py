"""Where handlers find the core and the dispatcher of the running app."""

from __future__ import annotations

from quart import current_app

from ..dispatcher import Dispatcher
from ..service import Deployster


def core() -> Deployster:
    return current_app.extensions["deployster"]  # type: ignore[no-any-return]


def dispatcher() -> Dispatcher:
    return current_app.extensions["deployster.dispatcher"]  # type: ignore[no-any-return]
