"""GitHub deployments of a project's jobs (README.md#github-deployments).

Each job gets one deployment, created before its first status: ``POST
/repos/{owner}/{repo}/deployments`` with ``ref`` = the job's commit (its ref
when it sent none), ``environment`` = its stage's name (else its ref),
``auto_merge`` false and ``required_contexts`` [] (deployster deploys what CI
asked for; GitHub must not merge or wait on checks first). Its id is kept in
Redis (``Keys.github_deployment``) and each later event posts a status to it,
``POST …/deployments/{id}/statuses``, in the job's order (one delivery lane a
job, see ``outbox``):

| event | state |
|---|---|
| queued | queued |
| started | in_progress |
| complete | success |
| failed | failure |
| superseded | inactive |
| cancelled | inactive when it never started (nothing was deployed), else failure |

A cancelled running job may have left the server half-deployed, which is what
GitHub's ``failure`` tells a reader; one cancelled in the queue changed
nothing, as ``inactive`` says. Statuses carry ``log_url`` when
``DEPLOYSTER_PUBLIC_URL`` is set. The API's base URL is
``DEPLOYSTER_GITHUB_API_URL`` (GitHub Enterprise: ``https://HOST/api/v3``).
"""

from __future__ import annotations

import json
from typing import Any, cast

from ..keys import Keys
from ..models import Job
from ..redis_conn import Redis
from . import http
from .messages import Facts

# How long a job's deployment id is kept (its last status comes with its end).
DEPLOYMENT_TTL_S = 7 * 24 * 3600
API_VERSION = "2022-11-28"

_STATES = {"queued": "queued", "started": "in_progress", "complete": "success",
           "failed": "failure", "superseded": "inactive"}


def state(event: str, job: Job) -> str:
    """The deployment status an event posts (the table above)."""
    if event == "cancelled":
        return "failure" if job.started_at else "inactive"
    return _STATES[event]


def environment(job: Job) -> str:
    return job.stage or job.ref_name or "deployster"


def request_spec(facts: Facts) -> dict[str, Any]:
    """What an event's delivery sends: the deployment to create if the job has
    none yet, and the status to post."""
    job = facts.job
    description = f"deployster job {job.id}"
    if facts.event == "failed" and job.reason:
        description += f": {job.reason}"
    elif facts.event == "cancelled":
        description += ": cancelled"
    elif facts.event == "superseded" and job.superseded_by:
        description += f": superseded by {job.superseded_by}"
    status: dict[str, Any] = {"state": state(facts.event, job),
                              "description": description[:140],
                              "environment": environment(job)}
    if facts.log_url:
        status["log_url"] = facts.log_url
    create = {"ref": job.commit_hash or job.ref_name, "environment": environment(job),
              "auto_merge": False, "required_contexts": [],
              "description": f"deployster job {job.id}"[:140],
              "payload": {"deployster_job": job.id, "started_by": job.started_by}}
    return {"create": create, "status": status}


def headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": API_VERSION, "Content-Type": "application/json"}


def _body(data: dict[str, Any]) -> bytes:
    return json.dumps(data).encode("utf-8")


async def send(client: http.Client, redis: Redis, keys: Keys, *, api_url: str, repo: str,
               token: str, job_id: str, spec: dict[str, Any]) -> http.Response:
    """Create the job's deployment if Redis holds none for it, then post the
    status; returns the response that ends the attempt (the creation's, when
    it failed). The id is stored as soon as GitHub gives it, so a retry after
    a failed status posts the status only. Raises ``http.HttpError``."""
    base = f"{api_url.rstrip('/')}/repos/{repo}/deployments"
    sent = headers(token)
    key = keys.github_deployment(job_id)
    deployment = cast(str | None, await redis.get(key))
    if deployment is None:
        created = await client.post(base, _body(spec["create"]), sent)
        if created.status != 201:
            return created
        deployment = str(created.json()["id"])
        await redis.set(key, deployment, ex=DEPLOYMENT_TTL_S)
    return await client.post(f"{base}/{deployment}/statuses", _body(spec["status"]), sent)
