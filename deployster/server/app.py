"""The Quart app factory: wiring only (config, blueprints, error handlers, lifecycle)."""

from __future__ import annotations

from typing import Any

from quart import Quart, request
from quart_schema import Info, QuartSchema

from .. import __version__
from ..dispatcher import Dispatcher
from ..service import Deployster
from ..settings import Settings
from . import api, health, jobs, logs, projects
from .errors import body_too_large, register_error_handlers
from .openapi import SECURITY_SCHEMES, TOKEN_SCHEME, DeploysterOpenAPI

# Bodies up to this size are read (and dropped) before a 413, so the client gets
# the answer instead of a reset connection; beyond it Quart refuses outright.
DRAIN_LIMIT = 64 * 1024 * 1024


def create_app(settings: Settings, core: Deployster | None = None) -> Quart:
    """Build the app. Without ``core`` it opens one when serving starts.

    The dispatcher (and so every job) runs in the app's event loop, started in
    ``before_serving`` and stopped in ``after_serving``.
    """
    app = Quart("deployster")
    # Quart's own limit only as a backstop: it answers before reading the body,
    # and closing a connection with unread upload data resets it, so the client
    # may never see the 413. ``limit_body`` reads then refuses instead.
    app.config["MAX_CONTENT_LENGTH"] = max(settings.max_body_bytes, DRAIN_LIMIT)
    app.config["QUART_SCHEMA_CONVERT_CASING"] = False
    QuartSchema(
        app,
        info=Info(title="deployster", version=__version__),
        openapi_path="/openapi.json",
        swagger_ui_path="/docs",
        redoc_ui_path=None,
        scalar_ui_path=None,
        security_schemes=SECURITY_SCHEMES,
        security=[{TOKEN_SCHEME: []}],
        openapi_provider_class=DeploysterOpenAPI,
    )
    app.register_blueprint(api.blueprint)
    app.register_blueprint(health.blueprint)
    app.register_blueprint(jobs.blueprint)
    app.register_blueprint(logs.blueprint)
    app.register_blueprint(projects.blueprint)
    register_error_handlers(app)

    @app.before_request
    async def limit_body() -> Any:
        if request.method not in ("POST", "PUT", "PATCH"):
            return None
        length = request.content_length
        if length is None or length > settings.max_body_bytes:
            data = await request.get_data()
            if len(data) > settings.max_body_bytes:
                return body_too_large(settings.max_body_bytes)
        return None

    @app.before_serving
    async def startup() -> None:
        the_core = core if core is not None else await Deployster.open(settings)
        app.extensions["deployster"] = the_core
        dispatcher = Dispatcher(the_core)
        app.extensions["deployster.dispatcher"] = dispatcher
        await dispatcher.start()

    @app.after_serving
    async def shutdown() -> None:
        dispatcher: Dispatcher = app.extensions.pop("deployster.dispatcher")
        await dispatcher.stop(grace=settings.shutdown_grace)
        the_core: Deployster = app.extensions.pop("deployster")
        if core is None:
            await the_core.close()

    return app
