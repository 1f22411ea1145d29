"""Errors the core raises for a caller to show.

Each carries a machine ``code`` (docs/api.md#error-codes) and the HTTP status
a front end should answer with; the sentence in ``message`` is written for the
person who sent the request, so front ends show it as is.
"""

from __future__ import annotations


class DeploysterError(Exception):
    """Base class: a problem the user can fix, reported without a traceback."""

    code = "error"
    http_status = 400
    # The command line's exit status when this ends a command.
    exit_status = 2

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def to_dict(self) -> dict[str, str]:
        return {"error": self.message, "code": self.code}

    def headers(self) -> dict[str, str]:
        """Extra response headers (e.g. Retry-After)."""
        return {}


class InvalidRequest(DeploysterError):
    code = "invalid_request"
    http_status = 422


class UnknownProject(DeploysterError):
    code = "unknown_project"
    http_status = 404


class Forbidden(DeploysterError):
    """The caller is known but may not do this (a project token outside its project)."""

    code = "forbidden"
    http_status = 403


class Unauthenticated(DeploysterError):
    """A bearer token (``Authorization: Bearer …``) missing or wrong: 401 with
    the ``WWW-Authenticate`` challenge RFC 6750 asks for."""

    code = "unauthorized"
    http_status = 401

    def __init__(self, message: str, *, realm: str) -> None:
        super().__init__(message)
        self.realm = realm

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": f'Bearer realm="{self.realm}"'}


class NotFound(DeploysterError):
    code = "not_found"
    http_status = 404


class StaleCredentials(DeploysterError):
    """A read made with a project token taken from the cache found that a
    project changed since (a token rotated or revoked, say): authenticate
    again, checked, and read again (``Principal.trusted``)."""

    code = "stale_credentials"
    http_status = 403


class Conflict(DeploysterError):
    code = "conflict"
    http_status = 409


class TooBusy(DeploysterError):
    """A cap is reached: the caller should retry after ``retry_after`` seconds."""

    code = "too_busy"
    http_status = 429

    def __init__(self, message: str, *, retry_after: int, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class QueueFull(TooBusy):
    """A project's queue is at its cap."""

    code = "queue_full"


class ConfigError(DeploysterError):
    """Settings that cannot work (missing token, bad URL, unreadable file)."""

    code = "config_error"
    http_status = 500


class Unavailable(DeploysterError):
    """Redis or the database cannot be reached right now."""

    code = "unavailable"
    http_status = 503


class Unreachable(Unavailable):
    """A service the settings name did not answer while the server started
    (a wrong URL, or a service down): it stops with exit status 1 rather than
    serve without it (an outage after start-up is waited out instead)."""

    code = "unreachable"
    exit_status = 1
