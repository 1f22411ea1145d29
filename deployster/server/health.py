"""``GET /healthz``: no auth; 200 when Redis takes a write and the database answers,
else 503 naming what is down (``Deployster.health``)."""

from __future__ import annotations

from typing import Any

from quart import Blueprint
from quart_schema import document_response, security_scheme

from .context import core
from .schemas import HealthReply

blueprint = Blueprint("health", __name__)


@blueprint.get("/healthz")
@security_scheme([])  # no token
@document_response(HealthReply, 200)
@document_response(HealthReply, 503)
async def healthz() -> Any:
    """Whether Redis takes writes and the database answers (no token needed).

    `redis`/`database` are `ok` or `down: <why>`, e.g. `down: ConnectionError`, or
    `down: refusing writes (MISCONF)` for a Redis that cannot persist (a full disk).
    """
    state = await core().health()
    return state, 200 if state["status"] == "ok" else 503
