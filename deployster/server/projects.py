"""``GET /projects`` (issue #5): the projects the caller's token may see."""

from __future__ import annotations

from typing import Any

from quart import Blueprint, jsonify
from quart_schema import document_response

from ..overview import project_summaries
from .auth import principal, require_token
from .context import core
from .schemas import ProjectsReply

blueprint = Blueprint("projects", __name__)


@blueprint.get("/projects")
@require_token
@document_response(ProjectsReply, 200)
async def projects() -> Any:
    """The projects this token may see: all for the admin token, else its own.

    Stages list their variables' names only: the values are secrets and never sent.
    """
    return jsonify({"projects": await project_summaries(core(), principal())})
