"""Every error leaves as JSON ``{"error", "code"}`` (the codes and their
statuses: docs/api.md#error-codes); never a traceback."""

from __future__ import annotations

import logging
from typing import Any

from quart import Quart, request
from quart_schema import RequestSchemaValidationError
from werkzeug.exceptions import HTTPException

from ..errors import DeploysterError, NotFound
from ..outages import Outage, RedisRefused, classify, describe

log = logging.getLogger("deployster.server")

# A backing service is down: clients (and the seed's curl loop) may retry soon.
RETRY_SOON = {"Retry-After": "5"}


def _describe_validation(exc: RequestSchemaValidationError) -> str:
    error = exc.validation_error
    errors = getattr(error, "errors", None)
    if not callable(errors):
        return "the request body does not match the expected shape"
    first = errors()[0] if errors() else None
    if first is None:
        return "the request body does not match the expected shape"
    loc = ".".join(str(p) for p in first.get("loc", ()))
    kind, msg = first.get("type", ""), first.get("msg", "is invalid")
    if kind == "missing":
        return (f"missing field '{loc}' (the body needs cd and commands; commit_hash and "
                "ref_name are optional)")
    if kind == "model_type" or not loc:
        return "the body must be a JSON object with cd and commands (and commit_hash, ref_name)"
    return f"field '{loc}': {msg.lower()}"


def body_too_large(limit: int | None) -> tuple[dict[str, str], int]:
    return {"error": f"the request body is larger than {limit} bytes",
            "code": "body_too_large"}, 413


# What a POST /deploy body looks like, for a body that is no JSON at all.
DEPLOY_EXAMPLE = ('a JSON object like {"cd": "/srv/app", "commands": '
                  '["supervisorctl restart app"], "commit_hash": "<sha>", "ref_name": "main"}')


def register_error_handlers(app: Quart) -> None:
    @app.errorhandler(DeploysterError)
    async def deployster_error(exc: DeploysterError) -> Any:
        if isinstance(exc, NotFound) and request.path.startswith("/status/"):
            return {"status": "not_found"}, 404  # the seed's shape
        return exc.to_dict(), exc.http_status, exc.headers()

    @app.errorhandler(UnicodeDecodeError)
    async def not_utf8(exc: UnicodeDecodeError) -> Any:
        # Quart decodes a JSON body strictly before parsing it (found by schemathesis).
        return {"error": "the request body is not valid JSON (not UTF-8)",
                "code": "invalid_json"}, 400

    @app.errorhandler(RequestSchemaValidationError)
    async def validation_error(exc: RequestSchemaValidationError) -> Any:
        return {"error": _describe_validation(exc), "code": "invalid_body"}, 422

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Any:
        code = exc.code or 500
        if code == 400:
            expected = DEPLOY_EXAMPLE if request.path == "/deploy" else "a JSON object"
            return {"error": f"the request body is not valid JSON: send {expected}",
                    "code": "invalid_json"}, 400
        if code == 413:
            # The configured limit, not Quart's backstop (DRAIN_LIMIT): a body
            # over 64 MiB was told "larger than 67108864 bytes" (held by
            # test_chunked_bodies_over_the_limit_are_413_and_never_held_whole in
            # tests/server/test_hardening.py).
            return body_too_large(app.config.get("DEPLOYSTER_MAX_BODY_BYTES",
                                                 app.config.get("MAX_CONTENT_LENGTH")))
        if code == 415:
            return {"error": "send the body as JSON with 'Content-Type: application/json'",
                    "code": "unsupported_media_type"}, 415
        if code == 404:
            return {"error": f"no such endpoint: {request.method} {request.path}",
                    "code": "not_found"}, 404
        if code == 405:
            # RFC 9110: a 405 lists the methods the resource supports in Allow.
            methods = sorted(getattr(exc, "valid_methods", None) or ())
            headers = {"Allow": ", ".join(methods)} if methods else {}
            return {"error": f"{request.method} is not allowed on {request.path}"
                             + (f"; use {', '.join(methods)}" if methods else ""),
                    "code": "method_not_allowed"}, 405, headers
        name = (exc.name or "error").lower().replace(" ", "_")
        return {"error": exc.description or exc.name, "code": name}, code

    @app.errorhandler(Exception)
    async def unexpected(exc: Exception) -> Any:
        outage = classify(exc)
        if outage is Outage.REDIS:
            log.warning("Redis error on %s %s: %s: %s", request.method, request.path,
                        type(exc).__name__, exc)
            what = f"is {describe(exc)}" if isinstance(exc, RedisRefused) else "is unavailable"
            return {"error": f"Redis {what}; try again shortly",
                    "code": "redis_unavailable"}, 503, RETRY_SOON
        if outage is Outage.DATABASE:
            log.warning("database error on %s %s: %s", request.method, request.path, exc)
            return {"error": "the database is unavailable; try again shortly",
                    "code": "database_unavailable"}, 503, RETRY_SOON
        log.exception("unhandled error on %s %s", request.method, request.path)
        return {"error": "internal error; the server log has the details",
                "code": "internal_error"}, 500
