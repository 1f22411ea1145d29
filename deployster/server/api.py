"""The seed's API: ``POST /deploy`` and ``GET /status/<job_id>``
(docs/api.md#seed-compatibility)."""

from __future__ import annotations

from typing import Any

from quart import Blueprint, jsonify
from quart_schema import document_response, validate_request

from ..service import DeployRequest
from .auth import principal, require_token
from .context import core, dispatcher
from .schemas import DeployAccepted, DeployBody, ErrorReply, StatusNotFound, StatusReply

blueprint = Blueprint("api", __name__)

QUEUED_MESSAGE = "Another deployment is running; this job is queued."


@blueprint.post("/deploy")
@require_token
@validate_request(DeployBody)
@document_response(DeployAccepted, 200)
@document_response(ErrorReply, 403)
@document_response(ErrorReply, 404)
@document_response(ErrorReply, 422)
@document_response(ErrorReply, 429)
async def deploy(data: DeployBody) -> Any:
    """Queue a deploy; it starts at once when the project's lock is free.

    The last command must be exactly `supervisorctl start|restart <program>`, on
    one line, with nothing chained after it (else 422 `invalid_last_command`).
    """
    result = await core().submit(DeployRequest(**data.model_dump()), principal=principal())
    if result.started:
        dispatcher().launch(result.started)
    # jsonify: a plain dict would make quart-schema build a pydantic TypeAdapter
    # per response (~0.15 ms of CPU, a tenth of the route's cost).
    if result.queued:
        return jsonify({"job_id": result.job_id, "queued": True, "message": QUEUED_MESSAGE})
    return jsonify({"job_id": result.job_id})


@blueprint.get("/status/<job_id>")
@require_token
@document_response(StatusReply, 200)
@document_response(StatusNotFound, 404)
async def status(job_id: str) -> Any:
    """The seed's status read: status plus the output since the previous call.

    Ended jobs report `complete` or `failed` (with `reason`); 404 is
    `{"status": "not_found"}`.
    """
    read, job = await core().read_status(job_id, principal=principal())
    reply: dict[str, Any] = {"status": read.status.value, "logs": read.logs}
    if read.reason:
        reply["reason"] = read.reason
    if read.superseded_by:
        reply["superseded_by"] = read.superseded_by
    if job is not None and read.status.value == "queued":
        position = await core().queue_position(job)
        if position is not None:
            reply["position"] = position
    return reply
