"""``GET /projects`` (the projects the caller's token may see) and a project's rollback."""

from __future__ import annotations

from typing import Any

from quart import Blueprint, jsonify, request
from quart_schema import document_request, document_response

from ..control import deployed_commit, rollback
from ..errors import InvalidRequest, NotFound
from ..overview import project_summaries
from .auth import principal, require_token
from .context import core
from .jobs import accepted
from .schemas import ErrorReply, ProjectsReply, RollbackAccepted, RollbackBody

blueprint = Blueprint("projects", __name__)


@blueprint.get("/projects")
@require_token
@document_response(ProjectsReply, 200)
async def projects() -> Any:
    """The projects this token may see: all for the admin token, else its own.

    Stages list their variables' names only: the values are secrets and never sent.
    """
    return jsonify({"projects": await project_summaries(core(), principal())})


@blueprint.post("/projects/<name>/rollback")
@require_token
@document_request(RollbackBody)
@document_response(RollbackAccepted, 200)
@document_response(ErrorReply, 404)
@document_response(ErrorReply, 409)
async def rollback_project(name: str) -> Any:
    """Redeploy the newest complete deploy whose commit differs from the one
    deployed now (or, with `{"to": "<job id>"}`, that job's). Through the queue
    and the lock like any deploy; 409 `nothing_to_roll_back` when no earlier
    commit was ever deployed."""
    caller = principal()
    body = await request.get_json(force=True, silent=True) if await request.get_data() else {}
    if not isinstance(body, dict) or set(body) - {"to"} or not isinstance(
            body.get("to"), str | None):
        raise InvalidRequest("the body, if any, must be {\"to\": \"<job id>\"}",
                             code="invalid_body")
    project = await core().projects.find_by_name(name)
    if project is None or not caller.can_see(project.id):
        raise NotFound(f"no project {name!r}")
    result, target, current = await rollback(
        core(), project, to=body.get("to"), actor=f"api:{caller.label}", principal=caller,
        run_here=True)
    return accepted(result, redeploy_of=target.id, commit=deployed_commit(target),
                    from_commit=current)
