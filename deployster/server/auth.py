"""Token checks: header ``x-deployster-token``, the admin token or a project's
(docs/api.md#conventions, docs/api.md#what-a-project-token-may-see); and the
bearer token of ``GET /metrics`` (docs/api.md#get-metrics). Compared in
constant time (see ``deployster.tokens``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any, TypeVar, cast

from quart import g, request

from ..access import Principal
from ..errors import Unauthenticated
from ..tokens import is_secret
from .context import core

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

# "error" as the seed answered; the hint names the header a newcomer may miss.
UNAUTHORIZED = ({"error": "Unauthorized", "code": "unauthorized",
                 "hint": "send the admin token or the project's token in the "
                         "x-deployster-token header"}, 403)


def require_token(func: F) -> F:
    """The route answers 403 unless the request carries the admin token or a
    project's (then ``principal()`` is the caller)."""
    return _requiring_token(func, check=True)


def require_token_checked_by_read(func: F) -> F:
    """``require_token`` for a route whose one Redis read checks that the
    project token is still valid itself (``Principal.trusted``; GET /status):
    a project token found in the cache costs no round trip of its own. The
    route catches ``StaleCredentials`` and authenticates again
    (``authenticate_again``)."""
    return _requiring_token(func, check=False)


async def authenticate_again() -> Principal | None:
    """The caller, checked (after ``StaleCredentials``); None: nobody now."""
    sent = request.headers.getlist("x-deployster-token")
    caller = await core().authenticate(sent[0]) if len(sent) == 1 else None
    if caller is not None:
        g.principal = caller
    return caller


def _requiring_token(func: F, *, check: bool) -> F:
    @wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        sent = request.headers.getlist("x-deployster-token")
        # Exactly one token: with several, which one counts would depend on who
        # reads the headers (a proxy may check the last, we took the first), so
        # an ambiguous request authenticates as nobody (held by
        # test_a_request_with_several_token_headers_is_refused in
        # tests/server/test_hardening.py).
        caller = (await core().authenticate(sent[0], check=check) if len(sent) == 1
                  else None)
        if caller is None:
            # Read the unread body first: answering with it still in the socket
            # makes Hypercorn drop the connection, and a keep-alive client's next
            # request on it fails ("server disconnected").
            await request.get_data()
            return UNAUTHORIZED
        g.principal = caller
        return await func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def principal() -> Principal:
    """The caller of the current request (set by ``require_token``)."""
    return cast(Principal, g.principal)


def require_bearer(secret: str | None, *, realm: str, hint: str) -> None:
    """Nothing when ``secret`` is unset or the request sends it as
    ``Authorization: Bearer <secret>``, in exactly one header (as
    ``require_token``, several would be ambiguous); else raises
    ``Unauthenticated`` (401) saying ``hint``."""
    if not secret:
        return
    sent = request.headers.getlist("Authorization")
    scheme, _, token = sent[0].strip().partition(" ") if len(sent) == 1 else ("", "", "")
    if scheme.lower() != "bearer" or not is_secret(token.strip(), secret):
        raise Unauthenticated(hint, realm=realm)
