"""Job endpoints beyond the seed's two: cancel and redeploy."""

from __future__ import annotations

from typing import Any

from quart import Blueprint
from quart_schema import document_response

from ..control import cancel_job, deployed_commit, redeploy
from ..queue import EnqueueResult
from .api import QUEUED_MESSAGE
from .auth import principal, require_token
from .context import core, dispatcher
from .schemas import ErrorReply, JobReply, RedeployAccepted

blueprint = Blueprint("jobs", __name__)


@blueprint.post("/jobs/<job_id>/cancel")
@require_token
@document_response(JobReply, 200)
@document_response(ErrorReply, 404)
@document_response(ErrorReply, 409)
async def cancel(job_id: str) -> Any:
    """Cancel a queued or running job; 409 once it has finished."""
    caller = principal()
    job = await cancel_job(core(), job_id, actor=f"api:{caller.label}", principal=caller)
    return job.to_dict()


def accepted(result: EnqueueResult, **extra: Any) -> dict[str, Any]:
    """The answer to a request that queued a job: POST /deploy's shape, plus
    ``extra``; a job this server may start now is started."""
    if result.started:
        dispatcher().launch(result.started)
    reply: dict[str, Any] = {"job_id": result.job_id, **extra}
    if result.queued:
        reply.update(queued=True, message=QUEUED_MESSAGE)
    return reply


@blueprint.post("/jobs/<job_id>/redeploy")
@require_token
@document_response(RedeployAccepted, 200)
@document_response(ErrorReply, 404)
@document_response(ErrorReply, 409)
async def redeploy_job(job_id: str) -> Any:
    """Queue a job again: its commands, its ref and the very commit it deployed
    (with a git source, a rollback to that code); the stage's variables as they
    are now. The admin token, or the job's project's token. 409
    `secret_in_commands` when its commands held a secret (move it into a stage
    variable)."""
    caller = principal()
    result, job = await redeploy(core(), job_id, actor=f"api:{caller.label}", principal=caller,
                                 run_here=True)
    return accepted(result, redeploy_of=job.id, commit=deployed_commit(job))
