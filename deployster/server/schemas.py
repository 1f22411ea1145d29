"""Request and response models: validation and the OpenAPI document come from here."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class DeployBody(BaseModel):
    """The seed's ``POST /deploy`` body."""

    model_config = ConfigDict(strict=True, extra="ignore")

    cd: str = Field(description="The project directory on the server.")
    commands: list[str] = Field(
        description="Shell commands run in order; the last must be "
        "'supervisorctl start|restart <program>'."
    )
    commit_hash: str
    ref_name: str = Field(description="The branch; selects the pipeline stage.")


class DeployAccepted(BaseModel):
    job_id: str
    queued: bool | None = None
    message: str | None = None


class StatusReply(BaseModel):
    status: str
    logs: str = ""
    reason: str | None = None
    position: int | None = None
    superseded_by: str | None = None


class ErrorReply(BaseModel):
    error: str
    code: str | None = None


class JobReply(BaseModel):
    job_id: str
    project: str
    status: str
    reason: str | None = None
    commit_hash: str
    ref_name: str
    queued_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    superseded_by: str | None = None
