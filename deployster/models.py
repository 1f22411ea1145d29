"""Plain data shared by the core and both front ends."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETE = "complete"
    FAILED = "failed"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.COMPLETE, JobStatus.FAILED)


class Reason(StrEnum):
    """Why a job ended ``failed`` (docs/statuses.md#failure-reasons)."""

    COMMAND_FAILED = "command_failed"
    INVALID = "invalid"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    INTERRUPTED = "interrupted"
    LOCK_LOST = "lock_lost"
    SUPERSEDED = "superseded"
    CHECKOUT_FAILED = "checkout_failed"
    RESTART_FAILED = "restart_failed"


@dataclass(frozen=True)
class EnvVar:
    key: str
    value: str


@dataclass(frozen=True)
class Stage:
    stage_name: str
    git_branch: str
    environment_variables: tuple[EnvVar, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage_name": self.stage_name,
            "git_branch": self.git_branch,
            "environment_variables": [
                {"key": v.key, "value": v.value} for v in self.environment_variables
            ],
        }


SOURCES = ("auto", "git", "none")


@dataclass(frozen=True)
class DeploySteps:
    """What a deploy of a project does around its commands (``runner.py``).

    ``source``: ``git`` pins the work tree to the request's commit first,
    ``none`` leaves it as it is, ``auto`` is ``git`` when the project's
    directory is the top of a git work tree. ``git_remote``: where to fetch
    from. ``supervisor_update``: ``supervisorctl reread`` and ``update <group>``
    before the final restart. ``verify_window`` (seconds; 0: no check): how
    long the restarted program has to be ``RUNNING`` for ``verify_running``
    seconds.
    """

    source: str = "auto"
    git_remote: str = "origin"
    supervisor_update: bool = True
    verify_window: float = 10.0
    verify_running: float = 3.0

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "git_remote": self.git_remote,
                "supervisor_update": self.supervisor_update,
                "verify_window": self.verify_window, "verify_running": self.verify_running}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeploySteps:
        known = {f: data[f] for f in cls().to_dict() if f in data}
        return cls(**known)


# The kinds of notification target (deployster/notify/messages.py writes each one's body).
NOTIFY_KINDS = ("webhook", "slack", "discord")
# The job events a target may want (README.md#notifications): a job waits in the
# queue, starts, ends (complete, failed, superseded, cancelled), or an operator
# releases the lock it held.
NOTIFY_EVENTS = ("queued", "started", "complete", "failed", "superseded", "cancelled",
                 "lock_released")
DEFAULT_NOTIFY_EVENTS = ("complete", "failed")


@dataclass(frozen=True)
class NotifyTarget:
    """Where a project's job events go: a ``kind`` (``NOTIFY_KINDS``), its URL,
    the events it wants and, for a webhook, the HMAC-SHA256 key that signs its
    bodies. The URL (a Slack or Discord one is itself a credential) and the
    secret are kept out of repr; readers get ``to_dict``, which shows neither."""

    kind: str
    url: str = field(repr=False)
    events: tuple[str, ...] = DEFAULT_NOTIFY_EVENTS
    secret: str | None = field(default=None, repr=False)

    @property
    def id(self) -> str:
        """Names the target in Redis and the audit log (its kind and URL hashed)."""
        return hashlib.sha256(f"{self.kind} {self.url}".encode()).hexdigest()[:16]

    def shown_url(self) -> str:
        """The URL as it may be shown: a Slack or Discord URL by its host alone
        (its path is the credential), a webhook's without its query and any
        password."""
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        if self.kind != "webhook":
            return f"{parts.scheme}://{host}/***"
        return f"{parts.scheme}://{host}{parts.path}" + ("?***" if parts.query else "")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "url": self.shown_url(), "events": list(self.events),
                "signed": self.secret is not None}

    def to_stored(self) -> dict[str, Any]:
        """Every field, the secret too: the projects table's ``notify_json``."""
        return {"kind": self.kind, "url": self.url, "events": list(self.events),
                "secret": self.secret}

    @classmethod
    def from_stored(cls, data: dict[str, Any]) -> NotifyTarget:
        return cls(data["kind"], data["url"], tuple(data.get("events") or ()),
                   data.get("secret"))


@dataclass(frozen=True)
class Project:
    id: int
    name: str
    path: str
    pipeline: tuple[Stage, ...] = ()
    lock_ttl: float = 600.0
    timeout: float = 3600.0
    queue_policy: str = "fifo"
    created_at: str = ""
    # SHA-256 (hex) of the project's token, never the token; kept out of repr
    # and to_dict so that it cannot reach a log line or an API reply.
    token_hash: str | None = field(default=None, repr=False)
    token_created_at: str | None = None
    steps: DeploySteps = DeploySteps()
    # The node (host) whose files these are and whose server runs its jobs
    # (deployster/node.py); '' only in a database not yet adopted by a node.
    node: str = ""
    # Notification targets; None: the server-wide ones (DEPLOYSTER_NOTIFY), ()
    # none at all (``project edit --no-notify``).
    notify: tuple[NotifyTarget, ...] | None = None
    # GitHub deployments (notify/github.py): "owner/repo", and a token of the
    # project's own (else DEPLOYSTER_GITHUB_TOKEN), kept out of repr and to_dict.
    github_repo: str | None = None
    github_token: str | None = field(default=None, repr=False)

    def stage_for(self, ref_name: str) -> Stage | None:
        for stage in self.pipeline:
            if stage.git_branch == ref_name:
                return stage
        return None

    def pipeline_json(self) -> str:
        return json.dumps([s.to_dict() for s in self.pipeline])

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "path": self.path,
            "pipeline": [s.to_dict() for s in self.pipeline],
            "lock_ttl": self.lock_ttl,
            "timeout": self.timeout,
            "queue_policy": self.queue_policy,
            "created_at": self.created_at,
            "node": self.node,
            "token_set": self.token_hash is not None,
            "token_created_at": self.token_created_at,
            **self.steps.to_dict(),
            **self.notify_dict(),
        }

    def notify_dict(self) -> dict[str, Any]:
        """What a reader may see of the notifications: targets without their
        URL's credential or secret (None: the server-wide ones apply), the
        GitHub repository, and whether a token of the project's own is set."""
        return {
            "notify": None if self.notify is None else [t.to_dict() for t in self.notify],
            "github": self.github_repo,
            "github_token_set": self.github_token is not None,
        }


@dataclass
class Job:
    """A deployment as Redis holds it while it is live (and SQL afterwards).

    ``commands`` are stored and shown with every secret the server knows
    masked (``masking.SecretMask``). When that changed them, the commands as
    sent are ``raw_commands``: kept in Redis only while the job is queued or
    running (the queue's ``end_job`` deletes them), read only by the runner
    (``JobRecords.get(..., raw=True)``), never in SQL, a reply or a log; and
    ``commands_masked`` stays set for good, so the job cannot be redeployed
    (``control.redeploy``).
    """

    id: str
    project_id: int
    project: str
    cd: str
    commands: list[str]
    commit_hash: str
    ref_name: str
    status: JobStatus = JobStatus.QUEUED
    reason: str | None = None
    exit_code: int | None = None
    stage: str | None = None
    queued_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    lock_ttl_ms: int = 600_000
    timeout: float = 3600.0
    fence: int = 0
    started_by: str = "admin"
    superseded_by: str | None = None
    extra: dict[str, str] = field(default_factory=dict)
    commands_masked: bool = False
    # Kept out of repr: a log line naming the job must not carry the secrets.
    raw_commands: list[str] | None = field(default=None, repr=False)
    # The full commit the job checked out (git source), once it has.
    deployed_sha: str | None = None
    # The job this one redeploys (a redeploy or a rollback), if any.
    redeploy_of: str | None = None
    # The node that runs it: its project's (deployster/node.py).
    node: str | None = None

    # Field names written to the Redis hash; anything else in the hash is extra.
    _SIMPLE = (
        "id", "project", "cd", "commit_hash", "ref_name", "reason", "stage",
        "queued_at", "started_at", "finished_at", "started_by", "superseded_by",
        "deployed_sha", "redeploy_of", "node",
    )

    def to_redis(self) -> dict[str, str]:
        out = {k: getattr(self, k) for k in self._SIMPLE if getattr(self, k) is not None}
        out.update(
            project_id=str(self.project_id),
            commands=json.dumps(self.commands),
            status=self.status.value,
            lock_ttl_ms=str(self.lock_ttl_ms),
            timeout=repr(self.timeout),
            fence=str(self.fence),
        )
        if self.exit_code is not None:
            out["exit_code"] = str(self.exit_code)
        if self.commands_masked:
            out["commands_masked"] = "1"
        if self.raw_commands is not None:
            # Last: a Redis SLOWLOG entry keeps only an argument's first 128 bytes.
            out["commands_raw"] = json.dumps(self.raw_commands)
        return out

    @classmethod
    def from_redis(cls, data: dict[str, str], *, raw: bool = False) -> Job:
        """The job from its Redis hash; ``raw``: with ``raw_commands`` (the
        runner's read only; every other reader gets the masked commands alone)."""
        known = set(cls._SIMPLE) | {
            "project_id", "commands", "status", "lock_ttl_ms", "timeout", "fence",
            "exit_code", "commands_masked", "commands_raw",
        }
        raw_text = data.get("commands_raw") if raw else None
        return cls(
            id=data["id"],
            project_id=int(data["project_id"]),
            project=data.get("project", ""),
            cd=data.get("cd", ""),
            commands=json.loads(data.get("commands", "[]")),
            commit_hash=data.get("commit_hash", ""),
            ref_name=data.get("ref_name", ""),
            status=JobStatus(data.get("status", "queued")),
            reason=data.get("reason") or None,
            exit_code=int(data["exit_code"]) if data.get("exit_code") else None,
            stage=data.get("stage") or None,
            queued_at=data.get("queued_at"),
            started_at=data.get("started_at"),
            finished_at=data.get("finished_at"),
            lock_ttl_ms=int(data.get("lock_ttl_ms", 600_000)),
            timeout=float(data.get("timeout", 3600.0)),
            fence=int(data.get("fence", 0)),
            started_by=data.get("started_by", "admin"),
            superseded_by=data.get("superseded_by") or None,
            deployed_sha=data.get("deployed_sha") or None,
            redeploy_of=data.get("redeploy_of") or None,
            node=data.get("node") or None,
            extra={k: v for k, v in data.items() if k not in known},
            commands_masked=data.get("commands_masked") == "1",
            raw_commands=json.loads(raw_text) if raw_text is not None else None,
        )

    def signature(self) -> str:
        """Identity of the request: same commit, ref and commands (as sent: two
        requests differing only in a masked secret are two requests), same
        signature."""
        commands = self.commands if self.raw_commands is None else self.raw_commands
        raw = json.dumps([self.commit_hash, self.ref_name, commands])
        return hashlib.sha256(raw.encode("utf-8")).hexdigest()[:32]

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.id,
            "project_id": self.project_id,
            "project": self.project,
            "cd": self.cd,
            "commands": self.commands,
            "commit_hash": self.commit_hash,
            "ref_name": self.ref_name,
            "stage": self.stage,
            "status": self.status.value,
            "reason": self.reason,
            "exit_code": self.exit_code,
            "queued_at": self.queued_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "started_by": self.started_by,
            "superseded_by": self.superseded_by,
            "deployed_sha": self.deployed_sha,
            "redeploy_of": self.redeploy_of,
            "node": self.node,
        }
