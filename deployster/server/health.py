"""``GET /healthz``: no auth; 200 when Redis and the database answer, else 503."""

from __future__ import annotations

from typing import Any

from quart import Blueprint

from .context import core

blueprint = Blueprint("health", __name__)


@blueprint.get("/healthz")
async def healthz() -> Any:
    state = await core().health()
    return state, 200 if state["status"] == "ok" else 503
