"""``GET /healthz``: no auth; 200 when Redis and the database answer, else 503."""

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
    """Whether Redis and the database answer (no token needed)."""
    state = await core().health()
    return state, 200 if state["status"] == "ok" else 503
