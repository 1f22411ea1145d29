"""Plain SQL functions over the history database (tozo style: raw SQL, ``:named``
parameters, one function per query). Every statement runs on SQLite and
PostgreSQL alike."""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Sequence
from functools import lru_cache
from typing import Any, NamedTuple

from databases import Database

from .clock import iso, parse_iso
from .models import DeploySteps, EnvVar, Job, JobStatus, NotifyTarget, Project, Stage


def _plain_rows(rows: Sequence[Any]) -> list[dict[str, Any]]:
    """Rows as dicts, each value read once: a ``databases`` Record looks a
    column up through three layers on every access, ~10x a dict's cost (a
    dashboard refresh reads 500 projects and their last deploys this way)."""
    if not rows:
        return []
    keys = list(rows[0]._mapping.keys())
    return [dict(zip(keys, row._mapping, strict=True)) for row in rows]


# ----------------------------------------------------------------- projects


@lru_cache(maxsize=256)
def _steps(steps_json: str) -> DeploySteps:
    """A project's deploy steps from their column (frozen: shared by the
    projects that store the same, as most do; parsed once, not per reload)."""
    return DeploySteps.from_dict(json.loads(steps_json or "{}"))


def _project_from_row(row: Any) -> Project:
    stages = []
    pipeline_json = row["pipeline_json"]
    for raw in json.loads(pipeline_json) if pipeline_json and pipeline_json != "[]" else ():
        stages.append(
            Stage(
                stage_name=raw["stage_name"],
                git_branch=raw["git_branch"],
                environment_variables=tuple(
                    EnvVar(v["key"], v["value"]) for v in raw.get("environment_variables", [])
                ),
            )
        )
    return Project(
        id=int(row["id"]),
        name=row["name"],
        path=row["path"],
        pipeline=tuple(stages),
        lock_ttl=float(row["lock_ttl"]),
        timeout=float(row["timeout"]),
        queue_policy=row["queue_policy"],
        created_at=row["created_at"],
        token_hash=row["token_hash"],
        token_created_at=row["token_created_at"],
        steps=_steps(row["steps_json"]),
        node=row["node"],
        notify=_notify(row["notify_json"]),
        github_repo=row["github_repo"],
        github_token=row["github_token"],
    )


@lru_cache(maxsize=256)
def _notify(notify_json: str | None) -> tuple[NotifyTarget, ...] | None:
    """A project's notification targets from their column (None: NULL, the
    server-wide ones apply)."""
    if notify_json is None:
        return None
    return tuple(NotifyTarget.from_stored(t) for t in json.loads(notify_json))


async def insert_project(
    db: Database, *, name: str, path: str, pipeline_json: str, lock_ttl: float, timeout: float,
    queue_policy: str = "fifo", steps_json: str = "{}", node: str = "",
) -> Project | None:
    """Insert a project; None, storing nothing, when another already holds this
    ``name`` or this ``path`` on ``node`` (both UNIQUE). Conditional in the
    statement itself, so two processes registering at once never see a
    constraint error."""
    now = iso()
    project_id = await db.fetch_val(
        "INSERT INTO projects (node, name, path, pipeline_json, lock_ttl, timeout, queue_policy, "
        "steps_json, created_at, updated_at) VALUES (:node, :name, :path, :pipeline, :ttl, "
        ":timeout, :policy, :steps, :now, :now) ON CONFLICT DO NOTHING RETURNING id",
        {"node": node, "name": name, "path": path, "pipeline": pipeline_json, "ttl": lock_ttl,
         "timeout": timeout, "policy": queue_policy, "steps": steps_json, "now": now},
    )
    if project_id is None:
        return None
    return await select_project(db, int(project_id))


def is_unique_violation(exc: BaseException) -> bool:
    """A UNIQUE constraint refused the statement (SQLite or PostgreSQL)."""
    if isinstance(exc, sqlite3.IntegrityError):
        return "UNIQUE" in str(exc)
    return type(exc).__name__ == "UniqueViolationError"  # asyncpg, class 23505


async def update_project(db: Database, project_id: int, **fields: Any) -> bool:
    """Set the given fields (None: unchanged). False, changing nothing, when a
    new ``name`` or ``path`` is another project's by now (both are UNIQUE)."""
    allowed = {"name", "path", "pipeline_json", "lock_ttl", "timeout", "queue_policy",
               "steps_json"}
    sets = {k: v for k, v in fields.items() if k in allowed and v is not None}
    if not sets:
        return True
    assignments = ", ".join(f"{k} = :{k}" for k in sets)
    try:
        await db.execute(
            f"UPDATE projects SET {assignments}, updated_at = :now WHERE id = :id",
            {**sets, "now": iso(), "id": project_id},
        )
    except Exception as exc:
        if is_unique_violation(exc):
            return False
        raise
    return True


async def set_project_notify(
    db: Database, project_id: int, *, notify_json: str | None, github_repo: str | None,
    github_token: str | None,
) -> None:
    """Store a project's notification targets (None: NULL, the server-wide
    ones) and GitHub repository and token (None: none), all three as given."""
    await db.execute(
        "UPDATE projects SET notify_json = :notify, github_repo = :repo, "
        "github_token = :token, updated_at = :now WHERE id = :id",
        {"notify": notify_json, "repo": github_repo, "token": github_token, "now": iso(),
         "id": project_id},
    )


async def set_project_token(db: Database, project_id: int, token_hash: str | None) -> None:
    """Store (or, with None, clear) the hash of a project's token."""
    now = iso()
    await db.execute(
        "UPDATE projects SET token_hash = :hash, token_created_at = :created, "
        "updated_at = :now WHERE id = :id",
        {"hash": token_hash, "created": now if token_hash else None, "now": now,
         "id": project_id},
    )


async def delete_project(db: Database, project_id: int) -> None:
    await db.execute("DELETE FROM projects WHERE id = :id", {"id": project_id})


async def select_deployment_ids(db: Database, project_id: int) -> list[str]:
    """Every deployment id the history holds for the project."""
    rows = await db.fetch_all("SELECT id FROM deployments WHERE project_id = :p",
                              {"p": project_id})
    return [str(r["id"]) for r in rows]


async def delete_deployments(db: Database, project_id: int) -> None:
    """Delete the project's whole history (every deployment and its log)."""
    await db.execute("DELETE FROM deployments WHERE project_id = :p", {"p": project_id})


async def select_project(db: Database, project_id: int) -> Project | None:
    row = await db.fetch_one("SELECT * FROM projects WHERE id = :id", {"id": project_id})
    return _project_from_row(row) if row else None


async def select_project_by_path(db: Database, path: str, node: str = "") -> Project | None:
    row = await db.fetch_one("SELECT * FROM projects WHERE node = :node AND path = :path",
                             {"node": node, "path": path})
    return _project_from_row(row) if row else None


async def adopt_projects(db: Database, node: str) -> int:
    """Give the projects of a database from before nodes (node '') to
    ``node``: the first server to start after the upgrade. A path ``node``
    already has stays where it is. Returns how many moved."""
    rows = await db.fetch_all(
        "UPDATE projects SET node = :node WHERE node = '' AND path NOT IN "
        "(SELECT path FROM projects WHERE node = :node) RETURNING id", {"node": node})
    return len(rows)


async def select_project_by_name(db: Database, name: str) -> Project | None:
    row = await db.fetch_one("SELECT * FROM projects WHERE name = :name", {"name": name})
    return _project_from_row(row) if row else None


async def select_projects(db: Database) -> list[Project]:
    rows = await db.fetch_all("SELECT * FROM projects ORDER BY name")
    return [_project_from_row(r) for r in _plain_rows(rows)]


# -------------------------------------------------------------- deployments

_DEPLOYMENT_COLUMNS = (
    "id", "project_id", "project", "cd", "commit_hash", "ref_name", "stage", "commands",
    "status", "reason", "exit_code", "queued_at", "started_at", "finished_at", "started_by",
    "log", "log_bytes", "superseded_by", "commands_masked", "deployed_sha", "redeploy_of",
    "node",
)
_RANK = "CASE {t}.status WHEN 'queued' THEN 0 WHEN 'running' THEN 1 ELSE 2 END"
_UPSERT = (
    f"INSERT INTO deployments ({', '.join(_DEPLOYMENT_COLUMNS)}) VALUES "
    f"({', '.join(':' + c for c in _DEPLOYMENT_COLUMNS)}) "
    "ON CONFLICT (id) DO UPDATE SET "
    + ", ".join(
        f"{c} = COALESCE(excluded.{c}, deployments.{c})"
        for c in _DEPLOYMENT_COLUMNS
        if c != "id"
    )
    # Never move a row back: a late writer with an older snapshot is ignored.
    + f" WHERE {_RANK.format(t='deployments')} <= {_RANK.format(t='excluded')}"
)


def deployment_row(job: Job, *, log: str | None = None) -> dict[str, Any]:
    return {
        "id": job.id,
        "project_id": job.project_id,
        "project": job.project,
        "cd": job.cd,
        "commit_hash": job.commit_hash,
        "ref_name": job.ref_name,
        "stage": job.stage,
        "commands": json.dumps(job.commands),
        "status": job.status.value,
        "reason": job.reason,
        "exit_code": job.exit_code,
        "queued_at": job.queued_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "started_by": job.started_by,
        "log": log,
        "log_bytes": None if log is None else len(log.encode("utf-8")),
        "superseded_by": job.superseded_by,
        # The commands are stored masked (never job.raw_commands); the flag
        # keeps a redeploy from running "***" in place of a secret.
        "commands_masked": int(job.commands_masked),
        "deployed_sha": job.deployed_sha,
        "redeploy_of": job.redeploy_of,
        "node": job.node,
    }


# The same statement with asyncpg's positional $n parameters (columns order).
_UPSERT_POSITIONAL = re.sub(
    r":(\w+)", lambda m: f"${_DEPLOYMENT_COLUMNS.index(m.group(1)) + 1}", _UPSERT
)


async def upsert_deployments(db: Database, rows: list[dict[str, Any]]) -> None:
    """Upsert a batch: one transaction, one driver-level executemany.

    ``databases``' own ``execute_many`` rebuilds and compiles the statement for
    every row (about a millisecond of event-loop CPU each) and, on SQLite,
    commits every row; the history writer's batches go straight to the driver.
    """
    if not rows:
        return
    async with db.connection() as connection, connection.transaction():
        raw = connection.raw_connection
        if db.url.dialect.startswith("postgres"):
            await raw.executemany(
                _UPSERT_POSITIONAL, [tuple(r[c] for c in _DEPLOYMENT_COLUMNS) for r in rows]
            )
        else:
            await raw.executemany(_UPSERT, rows)


def _job_from_row(row: Any) -> Job:
    return Job(
        id=row["id"],
        project_id=int(row["project_id"]),
        project=row["project"],
        cd=row["cd"],
        commands=json.loads(row["commands"]),
        commit_hash=row["commit_hash"],
        ref_name=row["ref_name"],
        status=JobStatus(row["status"]),
        reason=row["reason"],
        exit_code=row["exit_code"],
        stage=row["stage"],
        queued_at=row["queued_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        started_by=row["started_by"] or "admin",
        superseded_by=row["superseded_by"],
        commands_masked=bool(row["commands_masked"]),
        deployed_sha=row["deployed_sha"],
        redeploy_of=row["redeploy_of"],
        node=row["node"],
    )


_SUMMARY = ", ".join(c for c in _DEPLOYMENT_COLUMNS if c != "log")


async def select_deployment(db: Database, job_id: str) -> Job | None:
    row = await db.fetch_one(f"SELECT {_SUMMARY} FROM deployments WHERE id = :id", {"id": job_id})
    return _job_from_row(row) if row else None


async def select_deployment_log(db: Database, job_id: str) -> str | None:
    return await db.fetch_val("SELECT log FROM deployments WHERE id = :id", {"id": job_id})


async def select_deployments(
    db: Database, *, project_id: int | None = None, before: str | None = None, limit: int = 50,
    status: str | None = None, node: str | None = None,
) -> list[Job]:
    """Newest first; ``before`` (a job id) pages further back; ``status``: only
    those; ``node``: only jobs of that node's projects."""
    where: list[str] = []
    params: dict[str, Any] = {"limit": limit}
    if node is not None:
        where.append("project_id IN (SELECT id FROM projects WHERE node = :node)")
        params["node"] = node
    if project_id is not None:
        where.append("project_id = :project_id")
        params["project_id"] = project_id
    if status is not None:
        where.append("status = :status")
        params["status"] = status
    if before:
        where.append("id < :before")
        params["before"] = before
    clause = f"WHERE {' AND '.join(where)} " if where else ""
    rows = await db.fetch_all(
        f"SELECT {_SUMMARY} FROM deployments {clause}ORDER BY id DESC LIMIT :limit", params
    )
    return [_job_from_row(r) for r in _plain_rows(rows)]


class LastDeploys(NamedTuple):
    """A project's newest finished deployment (complete or failed), and its
    newest complete one: the commit deployed now (None when none completed)."""

    finished: Job
    complete: Job | None


async def select_last_deploys(db: Database) -> dict[int, LastDeploys]:
    """Each project's newest finished and newest complete deployment, in one
    query (ids sort by time); a project with no finished one is left out."""
    # Two index seeks per project on (project_id, id), newest first: the cost
    # follows the number of projects, not the size of the history. The
    # complete one's seek walks back over the failures since it, if any.
    rows = await db.fetch_all(
        f"SELECT {_SUMMARY} FROM deployments WHERE id IN ("
        "SELECT (SELECT d.id FROM deployments d WHERE d.project_id = p.id "
        "AND d.status IN ('complete', 'failed') ORDER BY d.id DESC LIMIT 1) FROM projects p "
        "UNION ALL "
        "SELECT (SELECT d.id FROM deployments d WHERE d.project_id = p.id "
        "AND d.status = 'complete' ORDER BY d.id DESC LIMIT 1) FROM projects p)"
    )
    jobs = sorted((_job_from_row(r) for r in _plain_rows(rows)), key=lambda j: j.id,
                  reverse=True)
    found: dict[int, LastDeploys] = {}
    for job in jobs:  # newest first: the first of a project is its newest finished
        last = found.get(job.project_id)
        if last is None:
            found[job.project_id] = LastDeploys(
                job, job if job.status is JobStatus.COMPLETE else None)
        elif last.complete is None and job.status is JobStatus.COMPLETE:
            found[job.project_id] = last._replace(complete=job)
    return found


# ----------------------------------------------------------------- pruning

_FINISHED = "status IN ('complete', 'failed')"


async def select_recent_run_times(db: Database, limit: int) -> dict[int, list[int]]:
    """Each project's ``limit`` newest complete deployments' run times, in ms
    (finished_at - started_at), newest first: what start estimates are made of
    (deployster/estimate.py) when Redis has none. Run once at start-up."""
    rows = await db.fetch_all(
        "SELECT project_id, started_at, finished_at FROM (SELECT project_id, started_at, "
        "finished_at, id, ROW_NUMBER() OVER (PARTITION BY project_id ORDER BY id DESC) AS n "
        "FROM deployments WHERE status = 'complete' AND started_at IS NOT NULL "
        "AND finished_at IS NOT NULL) AS recent WHERE n <= :limit ORDER BY project_id, id DESC",
        {"limit": limit},
    )
    found: dict[int, list[int]] = {}
    for row in rows:
        started, finished = parse_iso(row["started_at"]), parse_iso(row["finished_at"])
        if started is not None and finished is not None and finished >= started:
            ms = int((finished - started).total_seconds() * 1000)
            found.setdefault(int(row["project_id"]), []).append(ms)
    return found


async def select_deployment_project_ids(db: Database) -> list[int]:
    """Every project id the history has rows for (removed projects too)."""
    rows = await db.fetch_all("SELECT DISTINCT project_id FROM deployments")
    return sorted(int(r["project_id"]) for r in rows)


async def select_nth_newest_finished(db: Database, project_id: int, n: int) -> str | None:
    """The id of the project's ``n``-th newest finished deployment (1-based)."""
    return await db.fetch_val(
        f"SELECT id FROM deployments WHERE project_id = :p AND {_FINISHED} "
        "ORDER BY id DESC LIMIT 1 OFFSET :offset", {"p": project_id, "offset": n - 1})


async def select_newest_complete_id(db: Database, project_id: int) -> str | None:
    """The id of the project's newest complete deployment (what is deployed now)."""
    return await db.fetch_val(
        "SELECT id FROM deployments WHERE project_id = :p AND status = 'complete' "
        "ORDER BY id DESC LIMIT 1", {"p": project_id})


# ``spare``: a deployment id the three below leave out ('' spares none; ids are
# never empty).


async def select_finished_ids_before(
    db: Database, project_id: int, before: str, *, limit: int, spare: str = ""
) -> list[str]:
    """Oldest first: the project's finished deployments with ids below ``before``."""
    rows = await db.fetch_all(
        f"SELECT id FROM deployments WHERE project_id = :p AND {_FINISHED} AND id < :before "
        "AND id <> :spare ORDER BY id LIMIT :limit",
        {"p": project_id, "before": before, "limit": limit, "spare": spare})
    return [str(r["id"]) for r in rows]


async def count_finished_before(db: Database, project_id: int, before: str,
                                *, spare: str = "") -> int:
    return int(await db.fetch_val(
        f"SELECT COUNT(*) FROM deployments WHERE project_id = :p AND {_FINISHED} "
        "AND id < :before AND id <> :spare",
        {"p": project_id, "before": before, "spare": spare}) or 0)


async def delete_finished_through(db: Database, project_id: int, last: str,
                                  *, spare: str = "") -> None:
    """Delete the project's finished deployments with ids up to ``last``."""
    await db.execute(
        f"DELETE FROM deployments WHERE project_id = :p AND {_FINISHED} AND id <= :last "
        "AND id <> :spare", {"p": project_id, "last": last, "spare": spare})


# ------------------------------------------------------------------- audit


async def insert_audit_event(
    db: Database,
    *,
    actor: str,
    action: str,
    project_id: int | None = None,
    job_id: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    await db.execute(
        "INSERT INTO audit_events (at, actor, action, project_id, job_id, detail) "
        "VALUES (:at, :actor, :action, :project_id, :job_id, :detail)",
        {"at": iso(), "actor": actor, "action": action, "project_id": project_id,
         "job_id": job_id, "detail": json.dumps(detail or {})},
    )


async def insert_audit_events(db: Database, rows: Sequence[dict[str, Any]]) -> None:
    """Insert a batch of audit events (each with ``at``, ``actor``, ``action``,
    ``project_id``, ``job_id`` and ``detail`` as a dict) in one transaction."""
    if not rows:
        return
    columns = ("at", "actor", "action", "project_id", "job_id", "detail")
    values = [(*(row.get(c) for c in columns[:-1]), json.dumps(row.get("detail") or {}))
              for row in rows]
    # One driver-level executemany (see upsert_deployments: ``databases``'
    # own compiles the statement again for every row).
    async with db.connection() as connection, connection.transaction():
        raw = connection.raw_connection
        if db.url.dialect.startswith("postgres"):
            await raw.executemany(
                f"INSERT INTO audit_events ({', '.join(columns)}) VALUES ($1, $2, $3, $4, $5, $6)",
                values)
        else:
            await raw.executemany(
                f"INSERT INTO audit_events ({', '.join(columns)}) VALUES (?, ?, ?, ?, ?, ?)",
                values)


async def select_audit_events(
    db: Database, *, limit: int = 100, action_prefix: str | None = None,
    project_id: int | None = None,
) -> list[dict[str, Any]]:
    """Newest first; ``action_prefix``: only actions starting with it
    (``notify.``); ``project_id``: only that project's."""
    where: list[str] = []
    params: dict[str, Any] = {"limit": limit}
    if action_prefix is not None:
        where.append("action LIKE :prefix")
        params["prefix"] = action_prefix + "%"
    if project_id is not None:
        where.append("project_id = :project_id")
        params["project_id"] = project_id
    clause = f"WHERE {' AND '.join(where)} " if where else ""
    rows = await db.fetch_all(
        f"SELECT * FROM audit_events {clause}ORDER BY id DESC LIMIT :limit", params
    )
    return [{**dict(r._mapping), "detail": json.loads(r["detail"] or "{}")} for r in rows]


async def select_deployment_log_tail(db: Database, job_id: str, max_chars: int) -> str | None:
    """The last ``max_chars`` characters of the history's log (None: no log
    stored), without reading the rest."""
    return await db.fetch_val(
        "SELECT SUBSTR(log, CASE WHEN LENGTH(log) > :n THEN LENGTH(log) - :n + 1 ELSE 1 END) "
        "FROM deployments WHERE id = :id", {"id": job_id, "n": max_chars})


async def select_deployment_log_bytes(db: Database, job_id: str) -> int | None:
    """The history log's size in bytes, without reading the log."""
    value = await db.fetch_val("SELECT log_bytes FROM deployments WHERE id = :id", {"id": job_id})
    return None if value is None else int(value)
