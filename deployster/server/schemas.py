"""Request and response models: validation and the OpenAPI document come from here."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..printable import CONTROL_CLASS
from ..validation import MAX_COMMANDS

# JSON Schema patterns (ECMA 262, \uXXXX escapes) of what deployster/validation.py
# takes. No control character in a field that is no command (printable.py):
_CONTROLS = "".join(c if c == "-" else f"\\u{ord(c):04x}" for c in CONTROL_CLASS)
NO_CONTROLS = rf"^[^{_CONTROLS}]*$"
# An absolute path: "/…", or "~" and "~/…" (expanded to the server's home).
ABSOLUTE_PATH = rf"^(?:/[^{_CONTROLS}]*|~|~/[^{_CONTROLS}]*)$"
# A command: no NUL, and not only whitespace (as Python's str.isspace() sees it,
# which is what the server checks with; every such character is below U+3001).
_SPACE = "".join(f"\\u{ord(c):04x}" for c in map(chr, range(0x3001)) if c.isspace())
COMMAND = rf"^[^\u0000]*[^\u0000{_SPACE}][^\u0000]*$"


class DeployBody(BaseModel):
    """The seed's ``POST /deploy`` body."""

    # The json_schema_extra constraints document the checks of
    # deployster/validation.py in the OpenAPI schema; pydantic does not enforce
    # them, so those checks still answer with their own codes (empty_commands…).
    # openapi.py puts the running server's limits in place of the defaults.
    model_config = ConfigDict(strict=True, extra="ignore")

    cd: str = Field(
        description="The project directory on the server (an absolute path); no control "
        "characters.",
        json_schema_extra={"pattern": ABSOLUTE_PATH},
    )
    commands: list[str] = Field(
        description="Shell commands run in order: at least one, at most "
        "DEPLOYSTER_MAX_COMMANDS; each with no NUL, not only whitespace, and at most "
        "DEPLOYSTER_MAX_COMMAND_BYTES bytes of UTF-8 (else 422 command_too_long; the whole "
        "body at most DEPLOYSTER_MAX_BODY_BYTES, else 413). "
        "The last must be exactly 'supervisorctl start <program>' or 'supervisorctl "
        "restart <program>' (a program or group:* name, an optional sudo, binary path and "
        "-c config), on one line, with nothing chained after it (no newline, ';', '&&', "
        "'||', '|', '&', backticks or '$('); else 422 invalid_last_command.",
        json_schema_extra={
            "minItems": 1,
            "maxItems": MAX_COMMANDS,
            "items": {"type": "string", "minLength": 1, "pattern": COMMAND},
        },
    )
    commit_hash: str = Field(
        default="", description="The commit to deploy (with a project whose source is git, "
        "exactly this commit is checked out); no control characters. The seed's older "
        "clients sent none: then nothing is checked out and no stage is used.",
        json_schema_extra={"pattern": NO_CONTROLS})
    ref_name: str = Field(
        default="", description="The branch; selects the pipeline stage and the branch the "
        "commit is checked out on. No control characters.",
        json_schema_extra={"pattern": NO_CONTROLS})
    node: str | None = Field(
        default=None, min_length=1, description="The node (host) whose project this is, in "
        "a fleet of servers sharing one Redis and PostgreSQL; absent: the receiving node. "
        "The job is queued for that node and runs there.")


# The start estimate of a queued job, wherever it is given (deployster/estimate.py).
ESTIMATE = ("Seconds until the queued job should start: the running job's remaining time plus "
            "a typical run per job ahead (the median of the project's last ten complete jobs). "
            "Absent without history.")


class DeployAccepted(BaseModel):
    job_id: str
    queued: bool | None = None
    message: str | None = None
    # True when an identical request still queued answered this one.
    deduplicated: bool | None = None


class StatusReply(BaseModel):
    status: str
    logs: str = ""
    reason: str | None = None
    position: int | None = None
    superseded_by: str | None = None
    estimated_start_in: float | None = Field(None, description=ESTIMATE)


class ErrorReply(BaseModel):
    error: str
    code: str | None = None
    hint: str | None = None


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
    deployed_sha: str | None = None
    redeploy_of: str | None = None


class RedeployAccepted(BaseModel):
    """A redeploy (or rollback) queued: the new job, the job it repeats and the
    commit it deploys; ``queued`` and ``message`` as ``POST /deploy`` answers."""

    job_id: str
    redeploy_of: str
    commit: str
    queued: bool | None = None
    message: str | None = None


class RollbackAccepted(RedeployAccepted):
    """``from_commit``: the commit deployed when the rollback was asked for."""

    from_commit: str | None = None


class RollbackBody(BaseModel):
    """Optional: the job whose commit to go back to (default: the newest complete
    deploy of another commit than the one deployed now)."""

    model_config = ConfigDict(strict=True, extra="forbid")

    to: str | None = Field(default=None, description="A job id of the project.")


# ------------------------------------- reads of jobs and projects (docs/api.md#endpoints)


class StatusNotFound(BaseModel):
    """The seed's 404 shape for ``/status``: no job (or not yours)."""

    status: Literal["not_found"]


class HealthReply(BaseModel):
    """``ok`` or ``degraded``; ``redis``/``database`` are ``ok`` or ``down: <why>``."""

    status: str
    redis: str
    database: str


class JobRecord(JobReply):
    """A job's record: live from Redis, from the SQL history once Redis let it go."""

    project_id: int
    cd: str
    commands: list[str] = Field(
        description="As stored: every secret the server knows (stage values, the admin "
        "token, project tokens) masked as ***."
    )
    commands_masked: bool = Field(
        False, description="The commands held a secret, stored masked: the job cannot be "
        "redeployed (move the value into a stage variable)."
    )
    stage: str | None = None
    exit_code: int | None = None
    started_by: str | None = None
    position: int | None = Field(
        None, description="1-based place in the project's queue (queued jobs only)."
    )
    estimated_start_in: float | None = Field(None, description=ESTIMATE)
    log_bytes: int | None = Field(
        None, description="The log's size in bytes so far: the cursor of its end."
    )


class CursorQuery(BaseModel):
    """Where to start reading a job's log."""

    from_: int = Field(
        0, alias="from", ge=0,
        description="Byte offset into the job's whole log (UTF-8); 0 (the default) is "
        "the beginning. Use the previous reply's 'next'.",
    )


class StreamHeaders(BaseModel):
    last_event_id: int = Field(
        0, ge=0, description="Resume after this event id (a cursor; the standard "
        "SSE reconnect header). Takes precedence over 'from'.",
    )


class LogsReply(BaseModel):
    """A page of a job's log (at most 1 MiB). Reading never consumes anything."""

    model_config = ConfigDict(populate_by_name=True)

    job_id: str
    status: str
    reason: str | None = None
    from_: int = Field(alias="from", description="The cursor asked for.")
    next: int = Field(description="The cursor to ask for next (byte offset after 'logs').")
    logs: str = Field(description="The log's text from 'from' to 'next'.")
    finished: bool = Field(
        description="The job has ended and 'next' is the end of its log: stop polling."
    )


class StageSummary(BaseModel):
    stage_name: str
    git_branch: str
    variables: list[str] = Field(description="Variable names only; values are never sent.")


class NotifyTargetSummary(BaseModel):
    kind: Literal["webhook", "slack", "discord"]
    url: str = Field(description="The URL without its credential: a Slack or Discord URL "
                     "by its host alone, a webhook's without its query.")
    events: list[str] = Field(description="The job events it is sent.")
    signed: bool = Field(description="Its bodies are signed (X-Deployster-Signature).")


class ProjectSummary(BaseModel):
    id: int
    name: str
    path: str
    lock_ttl: float
    timeout: float
    queue_policy: str
    source: Literal["auto", "git", "none"] = Field(
        description="git: each deploy checks out its commit_hash first; none: the "
        "directory is deployed as it is; auto: git when the directory is the top of a git "
        "work tree.")
    git_remote: str = Field(description="The remote a git source fetches from.")
    supervisor_update: bool = Field(
        description="supervisorctl reread and update <group> before the final restart.")
    verify_window: float = Field(
        description="Seconds the restarted program has to be seen RUNNING (0: no check).")
    verify_running: float = Field(description="Seconds it must have been RUNNING to count.")
    stages: list[StageSummary]
    queue_length: int
    running_job: str | None = Field(None, description="The job holding the lock, if any.")
    deployed_commit: str | None = Field(
        None, description="The commit deployed now: the newest complete job's deployed_sha "
        "(else its commit_hash); null when no deploy of the project ever completed.")
    deployed_job: str | None = Field(
        None, description="The job that deployed it (the newest complete one).")
    notify: list[NotifyTargetSummary] | None = Field(
        None, description="Its notification targets; null: the server-wide ones apply.")
    github: str | None = Field(
        None, description="The GitHub repository its jobs are posted to as deployments.")
    github_token_set: bool = Field(
        False, description="It has a GitHub token of its own (never shown).")


class ProjectsReply(BaseModel):
    """The projects the token may see: every one for the admin token, else its own."""

    projects: list[ProjectSummary]


# ---------------------------------------------- the events of GET /jobs/<id>/stream
# Each event's ``data`` is one line of JSON shaped as below.


class StatusEvent(BaseModel):
    """``event: status``: the job is queued (with its place) or running."""

    status: Literal["queued", "running"]
    position: int | None = Field(None, description="1-based place in the queue (queued only).")
    estimated_start_in: float | None = Field(None, description=ESTIMATE)


class LogEvent(BaseModel):
    """``event: log`` (``id:`` = the cursor after this chunk): a chunk of the log."""

    text: str


class EndEvent(BaseModel):
    """``event: end``: the job has ended and every log event was sent."""

    job_id: str
    status: str
    reason: str | None
    exit_code: int | None


SSE_EVENTS: dict[str, type[BaseModel]] = {
    "status": StatusEvent, "log": LogEvent, "end": EndEvent, "error": ErrorReply,
}
