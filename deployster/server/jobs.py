"""Job endpoints beyond the seed's two: cancel (issue #3)."""

from __future__ import annotations

from typing import Any

from quart import Blueprint
from quart_schema import document_response

from ..control import cancel_job
from .auth import principal, require_token
from .context import core
from .schemas import ErrorReply, JobReply

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
