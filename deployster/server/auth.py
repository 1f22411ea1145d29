"""The seed's shared-secret check: header ``x-deployster-token``, constant time."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any, TypeVar, cast

from quart import g, request

from ..access import ADMIN, Principal
from .context import core

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

UNAUTHORIZED = ({"error": "Unauthorized", "code": "unauthorized"}, 403)


def token_ok(sent: str | None) -> bool:
    expected = core().settings.token or ""
    if not expected or sent is None:
        return False
    return hmac.compare_digest(sent.encode("utf-8"), expected.encode("utf-8"))


def require_token(func: F) -> F:
    @wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not token_ok(request.headers.get("x-deployster-token")):
            return UNAUTHORIZED
        g.principal = ADMIN
        return await func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def principal() -> Principal:
    """The caller of the current request (set by ``require_token``)."""
    return cast(Principal, g.principal)
