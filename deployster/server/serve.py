"""``deployster serve``: Hypercorn serving the app, dispatcher in the same loop."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import socket
import sys

from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config

from .. import admin_token, fleet
from ..errors import ConfigError
from ..service import Deployster
from ..settings import Settings
from .app import create_app

log = logging.getLogger("deployster.server")

# How long a Redis or database that does not answer is waited for at start-up
# before the server gives up (exit 1); after start-up an outage is waited out.
START_WAIT = 8.0


def bind_socket(settings: Settings) -> socket.socket:
    """Bind the listening socket before anything starts.

    Hypercorn would bind only after the app's startup hook, which has already
    launched the dispatcher (and may have claimed jobs); a port in use must fail
    first, with one clear line. The bound socket is handed to Hypercorn by fd.
    """
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((settings.host, settings.port))
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}"
        ) from None
    sock.set_inheritable(True)
    return sock


def hypercorn_config(sock: socket.socket) -> Config:
    """Serve on ``sock``; Hypercorn takes the fd over (and closes it at the end)."""
    config = Config()
    config.bind = [f"fd://{sock.detach()}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = 10.0
    # Hypercorn's 5 s default dropped requests of busy keep-alive clients under
    # load (1,000 racing deploys: a ReadError now and then, bench/race.py).
    config.keep_alive_timeout = 75.0
    return config


def make_admin_token(settings: Settings) -> None:
    """A server needs an admin token: DEPLOYSTER_TOKEN, else the one kept in
    the data dir, made on the first start and shown then (on stderr), with how
    to use it."""
    if settings.token:
        return
    token, created = admin_token.ensure(settings.data_dir)
    if not created:
        return
    url = f"http://{settings.host}:{settings.port}"
    print(f"deployster: made the admin token, kept in "
          f"{admin_token.token_path(settings.data_dir)} (mode 0600):\n\n    {token}\n\n"
          f"Send it in the x-deployster-token header to {url}, e.g.\n"
          f"    curl -H \"x-deployster-token: $(deployster token)\" {url}/projects\n"
          "'deployster token' prints it again; 'deployster token --rotate' replaces it.\n"
          "(DEPLOYSTER_TOKEN, when set, is used instead.)\n", file=sys.stderr, flush=True)


# Tracked objects allocated (net) between two young collections; Python's
# default is 700.
GC_YOUNG_THRESHOLD = 10_000


def tune_gc() -> None:
    """Less collector work per request, once start-up is done.

    Everything made so far (modules, the app, the core: ~100,000 objects) lives
    as long as the process: frozen, a full collection no longer walks it all
    again. And at Python's default threshold a young collection ran every ~8
    requests under load, promoting the objects of the requests in flight to
    older generations, whose collections then walked them too. With a larger
    young generation those die first. Together: the collector's CPU over a
    server's life through 10,000 deploy requests (bench/deploy_throughput.py)
    went from ~0.8 s to ~0.1 s, of ~5.5 s in all.
    """
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


async def serve(settings: Settings, *, shutdown: asyncio.Event | None = None) -> None:
    """Open Redis and the database first (so a bad URL fails fast: ``Unreachable``
    within ``START_WAIT`` seconds), then serve."""
    sock = bind_socket(settings)
    try:
        core = await Deployster.open_answering(settings, within=START_WAIT)
    except BaseException:
        sock.close()
        raise
    try:
        make_admin_token(settings)
        await fleet.check_storage(core)
    except BaseException:
        sock.close()
        await core.close()
        raise
    stop = shutdown or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        app = create_app(settings, core)
        log.info(
            "deployster listening on http://%s:%s (data dir: %s; redis: %s; database: %s; "
            "node: %s)", settings.host, settings.port, settings.data_dir,
            settings.redis_shown, settings.database_shown, core.node,
        )
        tune_gc()
        await hypercorn_serve(app, hypercorn_config(sock), shutdown_trigger=stop.wait)
    finally:
        sock.close()  # a no-op once Hypercorn has the fd
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await core.close()
