"""The Quart app factory: wiring only (config, blueprints, error handlers, lifecycle)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from quart import Quart, Response, g, request
from quart.json.provider import DefaultJSONProvider
from quart_schema import Info, QuartSchema
from werkzeug.exceptions import RequestTimeout

from .. import __version__
from ..dispatcher import Dispatcher
from ..service import Deployster
from ..settings import Settings
from . import api, client_script, health, jobs, metrics, projects
from .errors import body_too_large, register_error_handlers
from .openapi import SECURITY_SCHEMES, TOKEN_SCHEME, DeploysterOpenAPI

request_log = logging.getLogger("deployster.requests")

# Bodies up to this size are read (and dropped) before a 413, so the client gets
# the answer instead of a reset connection; beyond it Quart refuses outright.
DRAIN_LIMIT = 64 * 1024 * 1024


class NotTooDeep(DefaultJSONProvider):
    """Mixed into quart-schema's provider: JSON nested too deeply is invalid JSON (400).

    ``[[[[…]]]]`` a few thousand levels deep fits in the body limit and made the
    decoder raise RecursionError, which Quart does not treat as a parse error:
    a 500 with a traceback. As a ValueError it is a 400 (held by
    ``test_json_nested_too_deeply_is_400_not_500`` in
    ``tests/server/test_hardening.py``).
    """

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        try:
            return super().loads(s, **kwargs)
        except RecursionError:
            raise ValueError("JSON nested too deeply") from None


def skip_schema_for_responses(app: Quart) -> None:
    """A handler's finished ``Response`` goes straight to Quart's
    ``make_response``: QuartSchema's wrapper around it (pydantic conversion of
    a returned model or dict) returns a ``Response`` unchanged, after a dozen
    type checks on every request."""
    converting = app.make_response
    plain = getattr(converting, "__wrapped__", converting)

    async def make_response(result: Any) -> Any:
        if isinstance(result, Response):
            return await plain(result)
        return await converting(result)

    app.make_response = make_response  # type: ignore[method-assign]


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
    # After QuartSchema, which installs its own provider (pydantic-aware dumps).
    app.json = type("JSONProvider", (NotTooDeep, type(app.json)), {})(app)
    skip_schema_for_responses(app)
    app.register_blueprint(api.blueprint)
    app.register_blueprint(health.blueprint)
    app.register_blueprint(client_script.blueprint)
    app.register_blueprint(jobs.blueprint)
    app.register_blueprint(projects.blueprint)
    app.register_blueprint(metrics.blueprint)
    register_error_handlers(app)

    app.config["DEPLOYSTER_MAX_BODY_BYTES"] = settings.max_body_bytes

    @app.before_request
    async def start_clock() -> None:
        g.request_started = time.perf_counter()

    @app.after_request
    async def log_request(response: Response) -> Response:
        # One line a request: what was asked, the answer, how long it took,
        # and the project and job it concerned. The path only: no header and
        # no query string, so never a token.
        view = request.view_args or {}
        started = g.get("request_started")
        ms = round((time.perf_counter() - started) * 1000, 1) if started else None
        request_log.info(
            "%s %s %s", request.method, request.path, response.status_code,
            extra={"fields": {"ms": ms, "project": g.get("log_project") or view.get("name"),
                              "job_id": g.get("log_job") or view.get("job_id")}})
        return response

    @app.before_request
    async def limit_body() -> Any:
        if request.method not in ("POST", "PUT", "PATCH"):
            return None
        limit = settings.max_body_bytes
        length = request.content_length
        if length is not None and length <= limit:
            return None
        # No Content-Length (chunked) or too long: read the body in parts and
        # keep at most ``limit`` bytes. Awaiting it whole held up to DRAIN_LIMIT
        # (64 MiB) in memory per request, before the token was even looked at;
        # parts read are dropped as they come (held by
        # test_chunked_bodies_over_the_limit_are_413_and_never_held_whole in
        # tests/server/test_hardening.py).
        kept: list[bytes] = []
        total = 0
        try:
            # Quart's BODY_TIMEOUT, as ``get_data`` applies it: a trickle ends.
            async with asyncio.timeout(app.config["BODY_TIMEOUT"]):
                async for part in request.body:  # over MAX_CONTENT_LENGTH: 413
                    total += len(part)
                    if total > DRAIN_LIMIT:
                        break  # stop listening; the connection closes after the 413
                    if total <= limit:
                        kept.append(part)
        except TimeoutError:
            raise RequestTimeout() from None
        if total > limit:
            return body_too_large(limit)
        # Small enough after all (a chunked upload): hand the handler the body.
        body = request.body_class(total, app.config["MAX_CONTENT_LENGTH"])
        body.set_result(b"".join(kept))
        request.body = body
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
