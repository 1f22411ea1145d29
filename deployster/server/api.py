"""The seed's API: ``POST /deploy`` and ``GET /status/<job_id>``
(docs/api.md#seed-compatibility)."""

from __future__ import annotations

from typing import Any

from quart import Blueprint, current_app, g, jsonify, request
from quart_schema import RequestSchemaValidationError, document_request, document_response
from quart_schema.conversion import model_load

from ..errors import StaleCredentials
from ..service import DeployRequest
from .auth import (
    UNAUTHORIZED,
    authenticate_again,
    principal,
    require_token,
    require_token_checked_by_read,
)
from .context import core, dispatcher
from .schemas import DeployAccepted, DeployBody, ErrorReply, StatusNotFound, StatusReply

blueprint = Blueprint("api", __name__)

QUEUED_MESSAGE = "Another deployment is running; this job is queued."


def plain_deploy_body(data: Any) -> DeployRequest | None:
    """The request for a body of exactly the JSON types ``DeployBody`` takes
    (strict, extra keys ignored), else None: then pydantic decides, and words
    the refusal. What ``DeployBody`` accepts, this accepts alike
    (``tests/server/test_api.py`` holds the two together)."""
    if type(data) is not dict:
        return None
    cd, commands = data.get("cd"), data.get("commands")
    commit, ref = data.get("commit_hash", ""), data.get("ref_name", "")
    node = data.get("node")
    if type(cd) is not str or type(commit) is not str or type(ref) is not str:
        return None
    if type(commands) is not list or not all(type(c) is str for c in commands):
        return None
    if node is not None and (type(node) is not str or not node):
        return None
    return DeployRequest(cd, commands, commit, ref, node=node)


async def deploy_body() -> DeployRequest:
    """The body of ``POST /deploy``, as ``validate_request(DeployBody)`` read
    it, without its pydantic pass for a well-formed body (a TypeAdapter built
    per request: a tenth of the route's own CPU). Any other body goes the way
    ``validate_request`` sends it, so every refusal is the same (400/415 from
    ``get_json``, 422 ``invalid_body`` from pydantic's error).

    The body is read as JSON whatever its ``Content-Type``: ``curl -d`` sends
    ``application/x-www-form-urlencoded`` unless told otherwise, and a 415 for
    a well-formed JSON body helps nobody (docs/api.md#post-deploy)."""
    data = await request.get_json(force=True)
    plain = plain_deploy_body(data)
    if plain is not None:
        return plain
    model = model_load(
        data,
        DeployBody,
        RequestSchemaValidationError,
        decamelize=current_app.config["QUART_SCHEMA_CONVERT_CASING"],
        preference=current_app.config["QUART_SCHEMA_CONVERSION_PREFERENCE"],
    )
    return DeployRequest(**model.model_dump())


@blueprint.post("/deploy")
@require_token
@document_request(DeployBody)
@document_response(DeployAccepted, 200)
@document_response(ErrorReply, 403)
@document_response(ErrorReply, 404)
@document_response(ErrorReply, 422)
@document_response(ErrorReply, 429)
async def deploy() -> Any:
    """Queue a deploy; it starts at once when the project's lock is free.

    The last command must be exactly `supervisorctl start|restart <program>`, on
    one line, with nothing chained after it (else 422 `invalid_last_command`).
    """
    body = await deploy_body()
    result = await core().submit(body, principal=principal())
    g.log_job, g.log_project = result.job_id, result.project
    if result.started:
        dispatcher().launch(result.started)
    # jsonify: a plain dict would make quart-schema build a pydantic TypeAdapter
    # per response (~0.15 ms of CPU, a tenth of the route's cost).
    if result.queued:
        reply = {"job_id": result.job_id, "queued": True, "message": QUEUED_MESSAGE}
        if result.duplicate:  # answered by an identical request still queued
            reply["deduplicated"] = True
        return jsonify(reply)
    return jsonify({"job_id": result.job_id})


@blueprint.get("/status/<job_id>")
@require_token_checked_by_read
@document_response(StatusReply, 200)
@document_response(StatusNotFound, 404)
async def status(job_id: str) -> Any:
    """The seed's status read: status plus the output since the previous call.

    Ended jobs report `complete` or `failed` (with `reason`); 404 is
    `{"status": "not_found"}`.
    """
    # One Redis round trip (the script checks a project token still holds and
    # reads status, output and position), and jsonify as in deploy(): the poll
    # seed clients repeat every few seconds.
    try:
        read = await core().read_status(job_id, principal=principal())
    except StaleCredentials:  # a project changed since the token was cached
        who = await authenticate_again()
        if who is None:
            return UNAUTHORIZED
        read = await core().read_status(job_id, principal=who)
    reply: dict[str, Any] = {"status": read.status.value, "logs": read.logs}
    if read.reason:
        reply["reason"] = read.reason
    if read.superseded_by:
        reply["superseded_by"] = read.superseded_by
    if read.position is not None:
        reply["position"] = read.position
    if read.starts_in is not None:
        reply["estimated_start_in"] = read.starts_in
    return jsonify(reply)
