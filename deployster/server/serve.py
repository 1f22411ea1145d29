"""``deployster serve``: Hypercorn serving the app, dispatcher in the same loop."""

from __future__ import annotations

import asyncio
import logging
import signal

from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config

from ..errors import ConfigError
from ..service import Deployster
from ..settings import Settings
from .app import create_app

log = logging.getLogger("deployster.server")


def hypercorn_config(settings: Settings) -> Config:
    config = Config()
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    config.bind = [f"{host}:{settings.port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = 10.0
    return config


async def serve(settings: Settings, *, shutdown: asyncio.Event | None = None) -> None:
    """Open Redis and the database first (so a bad URL fails fast), then serve."""
    settings.require_token()
    core = await Deployster.open(settings)
    stop = shutdown or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        app = create_app(settings, core)
        log.info(
            "deployster listening on http://%s:%s (redis: %s, database: %s)",
            settings.host, settings.port,
            "embedded" if settings.embedded_redis else "external",
            settings.effective_database_url.split(":", 1)[0],
        )
        try:
            await hypercorn_serve(app, hypercorn_config(settings), shutdown_trigger=stop.wait)
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}"
            ) from None
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await core.close()
