"""Projects: found by their ``cd`` path, registered by the operator or, under
``DEPLOYSTER_ALLOWED_ROOTS``, on first deploy (SPEC §5).

Pipeline stages are validated when they are entered, not when a deploy runs:
keys must be identifiers and no value may hold a newline, CR or NUL, so a stage
can never smuggle an extra line into ``.env``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, cast

from databases import Database

from . import store
from .errors import Conflict, InvalidRequest, UnknownProject
from .keys import Keys
from .models import EnvVar, Project, Stage
from .redis_conn import Redis
from .settings import Settings

# \Z, not $: "$" also matches before a final newline ("KEY\n" would pass).
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}\Z")
_FORBIDDEN = ("\n", "\r", "\x00")


def normalise_path(path: str) -> str:
    """One spelling per directory: absolute, symlinks resolved, no trailing slash."""
    if not path or not path.strip():
        raise InvalidRequest("'cd' must be a directory path", code="invalid_cd")
    if "\x00" in path:
        raise InvalidRequest("'cd' must not contain NUL bytes", code="invalid_cd")
    expanded = os.path.expanduser(path.strip())
    if not os.path.isabs(expanded):
        raise InvalidRequest(f"'cd' must be an absolute path, got {path!r}", code="invalid_cd")
    real = os.path.realpath(expanded)
    return real.rstrip("/") or "/"


def validate_pipeline(raw: Any) -> tuple[Stage, ...]:
    """Parse and check ``pipeline_json`` (a list of stages); raise with the first problem."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError as exc:
            raise InvalidRequest(
                f"pipeline is not valid JSON: {exc}", code="invalid_pipeline"
            ) from None
    if not isinstance(raw, list):
        raise InvalidRequest("pipeline must be a JSON list of stages", code="invalid_pipeline")
    stages: list[Stage] = []
    branches: set[str] = set()
    for i, stage in enumerate(raw, 1):
        where = f"stage {i}"
        if not isinstance(stage, dict):
            raise InvalidRequest(f"{where} must be an object", code="invalid_pipeline")
        name, branch = stage.get("stage_name"), stage.get("git_branch")
        if not isinstance(name, str) or not name.strip():
            raise InvalidRequest(f"{where}: 'stage_name' must be a non-empty string",
                                 code="invalid_pipeline")
        where = f"stage {name!r}"
        if not isinstance(branch, str) or not branch.strip():
            raise InvalidRequest(f"{where}: 'git_branch' must be a non-empty string",
                                 code="invalid_pipeline")
        if branch in branches:
            raise InvalidRequest(f"{where}: another stage already uses branch {branch!r}",
                                 code="invalid_pipeline")
        branches.add(branch)
        variables = stage.get("environment_variables", [])
        if not isinstance(variables, list):
            raise InvalidRequest(f"{where}: 'environment_variables' must be a list",
                                 code="invalid_pipeline")
        env: list[EnvVar] = []
        seen: set[str] = set()
        for var in variables:
            if not isinstance(var, dict):
                raise InvalidRequest(f"{where}: each variable must be an object with key/value",
                                     code="invalid_pipeline")
            key = var.get("key", var.get("KEY"))
            value = var.get("value", var.get("VALUE"))
            if not isinstance(key, str) or not _IDENTIFIER.match(key):
                raise InvalidRequest(
                    f"{where}: variable name {key!r} is not an identifier "
                    "(letters, digits and _, not starting with a digit)",
                    code="invalid_pipeline",
                )
            if key in seen:
                raise InvalidRequest(f"{where}: variable {key} is set twice",
                                     code="invalid_pipeline")
            seen.add(key)
            if isinstance(value, bool) or value is None:
                raise InvalidRequest(f"{where}: value of {key} must be a string",
                                     code="invalid_pipeline")
            if isinstance(value, int | float):
                value = str(value)
            if not isinstance(value, str):
                raise InvalidRequest(f"{where}: value of {key} must be a string",
                                     code="invalid_pipeline")
            if any(c in value for c in _FORBIDDEN):
                raise InvalidRequest(
                    f"{where}: value of {key} contains a newline, carriage return or NUL, "
                    "which .env cannot hold safely",
                    code="invalid_pipeline",
                )
            env.append(EnvVar(key, value))
        stages.append(Stage(name.strip(), branch.strip(), tuple(env)))
    return tuple(stages)


def _check_positive(value: float | None, what: str) -> None:
    if value is not None and not (value > 0):
        raise InvalidRequest(f"{what} must be a positive number of seconds", code="invalid_value")


QUEUE_POLICIES = ("fifo", "supersede")


def _check_policy(policy: str | None) -> None:
    if policy is not None and policy not in QUEUE_POLICIES:
        raise InvalidRequest(
            f"queue policy must be one of {', '.join(QUEUE_POLICIES)}, got {policy!r}",
            code="invalid_value",
        )


def is_under(path: str, roots: tuple[Path, ...]) -> bool:
    for root in roots:
        real_root = os.path.realpath(root)
        if path != real_root and os.path.commonpath([path, real_root]) == real_root:
            return True
    return False


class ProjectRegistry:
    """Project lookups for the hot path, cached per process.

    Every change bumps a version key in Redis; a lookup costs one GET and re-reads
    SQL only when some process (CLI, dashboard, another server) changed a project.
    """

    def __init__(self, db: Database, redis: Redis, keys: Keys, settings: Settings) -> None:
        self.db = db
        self.redis = redis
        self.keys = keys
        self.settings = settings
        self._version: str | None = None
        self._by_path: dict[str, Project] = {}
        self._by_token: dict[str, Project] = {}  # token hash -> project
        self._checked = False
        self.event_driven = False

    async def _bump(self) -> None:
        await self.redis.incr(self.keys.projects_version)
        await self.redis.publish(self.keys.events, json.dumps({"type": "projects"}))

    def invalidate(self) -> None:
        """Re-check the version on the next lookup (a 'projects' event arrived)."""
        self._checked = False

    async def _fresh(self, *, force: bool = False) -> None:
        # A process whose dispatcher listens to 'projects' events trusts its cache
        # until an event (or the dispatcher's sweep) invalidates it: no Redis
        # round trip per deploy. Others check the version on every lookup.
        if self.event_driven and self._checked and not force:
            return
        version = cast(str | None, await self.redis.get(self.keys.projects_version))
        self._checked = True
        if version != self._version or version is None:
            projects = await store.select_projects(self.db)
            self._by_path = {p.path: p for p in projects}
            self._by_token = {p.token_hash: p for p in projects if p.token_hash}
            self._version = version

    async def all(self) -> list[Project]:
        await self._fresh()
        return sorted(self._by_path.values(), key=lambda p: p.name)

    async def for_deploy(self, cd: str) -> Project:
        """The project a deploy to ``cd`` belongs to, self-registering it if allowed."""
        path = normalise_path(cd)
        await self._fresh()
        project = self._by_path.get(path)
        if project is not None:
            return project
        await self._fresh(force=True)  # added a moment ago by another process?
        project = self._by_path.get(path)
        if project is not None:
            return project
        if not is_under(path, self.settings.allowed_roots):
            raise UnknownProject(
                f"no project is registered at {path}. Register it on the server with "
                f"'deployster project add {path}', or list its parent directory in "
                "DEPLOYSTER_ALLOWED_ROOTS.",
            )
        if not os.path.isdir(path):
            raise InvalidRequest(f"{path} is not a directory on the server", code="invalid_cd")
        existing = await store.select_project_by_path(self.db, path)
        if existing is not None:  # registered by another process a moment ago
            return existing
        return await self.add(path)

    async def add(
        self,
        path: str,
        *,
        name: str | None = None,
        pipeline: Any = None,
        lock_ttl: float | None = None,
        timeout: float | None = None,
        queue_policy: str | None = None,
    ) -> Project:
        real = normalise_path(path)
        if not os.path.isdir(real):
            raise InvalidRequest(f"{real} is not a directory", code="invalid_cd")
        stages = validate_pipeline(pipeline if pipeline is not None else [])
        _check_positive(lock_ttl, "lock TTL")
        _check_positive(timeout, "timeout")
        _check_policy(queue_policy)
        if await store.select_project_by_path(self.db, real):
            raise Conflict(f"a project is already registered at {real}", code="project_exists")
        explicit = name is not None
        if name is None:  # the directory's name, made safe ("my app" -> "my-app")
            name = re.sub(r"[^A-Za-z0-9._-]+", "-", os.path.basename(real)).strip("-.")
            name = (name or "project")[:100]
        if not _NAME.match(name or ""):
            raise InvalidRequest(
                f"project name {name!r} must be 1-100 letters, digits, '.', '_' or '-'",
                code="invalid_name",
            )
        if await store.select_project_by_name(self.db, name):
            if explicit:
                raise Conflict(f"a project named {name!r} already exists; pick another --name",
                               code="project_exists")
            base, n = name, 2
            while await store.select_project_by_name(self.db, f"{base}-{n}"):
                n += 1
            name = f"{base}-{n}"
        project = await store.insert_project(
            self.db,
            name=name,
            path=real,
            pipeline_json=json.dumps([s.to_dict() for s in stages]),
            lock_ttl=lock_ttl or self.settings.default_lock_ttl,
            timeout=timeout or self.settings.default_timeout,
            queue_policy=queue_policy or "fifo",
        )
        await self._bump()
        return project

    async def edit(
        self,
        project: Project,
        *,
        name: str | None = None,
        pipeline: Any = None,
        lock_ttl: float | None = None,
        timeout: float | None = None,
        queue_policy: str | None = None,
    ) -> Project:
        _check_positive(lock_ttl, "lock TTL")
        _check_positive(timeout, "timeout")
        _check_policy(queue_policy)
        pipeline_json = None
        if pipeline is not None:
            pipeline_json = json.dumps([s.to_dict() for s in validate_pipeline(pipeline)])
        if name is not None and name != project.name:
            if not _NAME.match(name):
                raise InvalidRequest(
                    f"project name {name!r} must be 1-100 letters, digits, '.', '_' or '-'",
                    code="invalid_name",
                )
            if await store.select_project_by_name(self.db, name):
                raise Conflict(f"a project named {name!r} already exists", code="project_exists")
        await store.update_project(
            self.db, project.id, name=name, pipeline_json=pipeline_json,
            lock_ttl=lock_ttl, timeout=timeout, queue_policy=queue_policy,
        )
        await self._bump()
        updated = await store.select_project(self.db, project.id)
        assert updated is not None
        return updated

    async def by_token_hash(self, token_hash: str) -> Project | None:
        """The project whose token hashes to ``token_hash``, never a revoked one.

        Always checks the version key (one Redis GET, no SQL unless a project
        changed): a rotation or revocation bumps it before the CLI returns, so
        the old token is refused by every process from then on, even one whose
        'projects' event has not arrived yet.
        """
        await self._fresh(force=True)
        return self._by_token.get(token_hash)

    async def set_token_hash(self, project: Project, token_hash: str | None) -> None:
        """Store (None: remove) a project's token hash and tell every process."""
        await store.set_project_token(self.db, project.id, token_hash)
        await self._bump()

    async def find(self, ref: str) -> Project:
        """A project by name, numeric id or path (the CLI's ``<name|id|path>``)."""
        project = await store.select_project_by_name(self.db, ref)
        if project is None and ref.isdigit():
            project = await store.select_project(self.db, int(ref))
        if project is None and (ref.startswith("/") or ref.startswith("~") or ref == "."):
            try:
                project = await store.select_project_by_path(
                    self.db, normalise_path(os.path.abspath(os.path.expanduser(ref)))
                )
            except InvalidRequest:
                project = None
        if project is None:
            raise UnknownProject(f"no project named, numbered or at {ref!r}; "
                                 "see 'deployster project list'")
        return project

    async def get(self, project_id: int) -> Project | None:
        """By id, from the per-process cache (a Redis GET when nothing changed).

        The dispatcher calls this on every job start: keeping SQL (a new SQLite
        connection and thread per query) off that path cuts the hand-off time.
        """
        await self._fresh()
        for project in self._by_path.values():
            if project.id == project_id:
                return project
        return await store.select_project(self.db, project_id)
