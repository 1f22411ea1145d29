"""Where handlers find the core and the dispatcher of the running app."""

from __future__ import annotations

from typing import cast

from quart import current_app

from ..dispatcher import Dispatcher
from ..service import Deployster


def core() -> Deployster:
    return cast(Deployster, current_app.extensions["deployster"])


def dispatcher() -> Dispatcher:
    return cast(Dispatcher, current_app.extensions["deployster.dispatcher"])
