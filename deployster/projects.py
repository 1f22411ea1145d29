"""Projects: found by their ``cd`` path, registered by the operator or, under
``DEPLOYSTER_ALLOWED_ROOTS``, on first deploy (README.md#projects).

Pipeline stages are validated when they are entered, not when a deploy runs:
keys must be identifiers and no value may hold a newline, CR or NUL, so a stage
can never smuggle an extra line into ``.env``. Stage names, branches and project
paths are shown in logs, the dashboard and the CLI: they may hold no control
character (``printable.find_control``), so none can forge or rewrite a line there.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import os
import re
import time
from pathlib import Path
from typing import Any, cast

from databases import Database

from . import store
from .envfile import value_problem
from .errors import Conflict, InvalidRequest, UnknownProject
from .events import Event, encode
from .keys import Keys
from .models import SOURCES, DeploySteps, EnvVar, Project, Stage
from .notify import routes
from .notify.targets import NotifyChange, default_targets
from .notify.targets import apply as apply_notify
from .outages import REDIS_DOWN, describe
from .printable import describe_control, find_control
from .redis_conn import Redis
from .settings import Settings

# \Z, not $: "$" also matches before a final newline ("KEY\n" would pass).
log = logging.getLogger("deployster.projects")

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}\Z")


def normalise_path(path: str) -> str:
    """The path as sent, made absolute and tidied lexically: ``.``, ``..``, ``//``
    and a trailing slash collapsed, symlinks left alone.

    Projects are matched first by this spelling, so a Capistrano-style
    ``/srv/app/current`` symlink stays one project while it is switched from
    ``releases/1`` to ``releases/2`` (see ``ProjectRegistry.match``). Raises
    ``InvalidRequest`` (``invalid_cd``) for an empty, relative or NUL-holding path.
    """
    if not path or not path.strip():
        raise InvalidRequest("'cd' must be a directory path", code="invalid_cd")
    if "\x00" in path:
        raise InvalidRequest("'cd' must not contain NUL bytes", code="invalid_cd")
    if (control := find_control(path)) is not None:
        raise InvalidRequest(f"'cd' must not contain control characters; found "
                             f"{describe_control(control)} in {path!r}", code="invalid_cd")
    expanded = os.path.expanduser(path.strip())
    if not os.path.isabs(expanded):
        raise InvalidRequest(f"'cd' must be an absolute path, got {path!r}", code="invalid_cd")
    # normpath keeps a leading "//" (POSIX leaves its meaning to the system);
    # on Linux it is "/", and one directory must have one spelling here.
    tidy = os.path.normpath("/" + expanded.lstrip("/"))
    return tidy.rstrip("/") or "/"


def real_path(path: str) -> str:
    """The directory ``path`` (already normalised) names, every symlink resolved:
    what the allowed-roots check and the "two spellings, one project" rule use."""
    return os.path.realpath(path).rstrip("/") or "/"


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
        for field, text in (("stage_name", name), ("git_branch", branch)):
            if (control := find_control(text)) is not None:
                raise InvalidRequest(f"{where}: '{field}' must not contain control characters;"
                                     f" found {describe_control(control)}",
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
            # Refused now, not at deploy time: the .env must read back exactly
            # in the app's dotenv library (rules in deployster/envfile.py).
            problem = value_problem(value)
            if problem is not None:
                raise InvalidRequest(f"{where}: value of {key} {problem}",
                                     code="invalid_pipeline")
            env.append(EnvVar(key, value))
        stages.append(Stage(name.strip(), branch.strip(), tuple(env)))
    return tuple(stages)


def _check_positive(value: float | None, what: str) -> None:
    if value is not None and not (value > 0):
        raise InvalidRequest(f"{what} must be a positive number of seconds", code="invalid_value")


QUEUE_POLICIES = ("fifo", "supersede")
# A git remote's name as a project may give it: nothing git could read as an option.
_REMOTE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,99}\Z")


def validate_steps(changes: dict[str, Any], base: DeploySteps) -> DeploySteps:
    """``base`` with ``changes`` applied, checked; raises ``InvalidRequest``
    (``invalid_value``) naming the first bad one."""
    unknown = set(changes) - set(base.to_dict())
    if unknown:
        raise InvalidRequest(f"unknown deploy step option(s): {', '.join(sorted(unknown))}",
                             code="invalid_value")
    steps = DeploySteps.from_dict({**base.to_dict(), **changes})
    if steps.source not in SOURCES:
        raise InvalidRequest(f"source must be one of {', '.join(SOURCES)}, got {steps.source!r}",
                             code="invalid_value")
    if not isinstance(steps.git_remote, str) or not _REMOTE.match(steps.git_remote):
        raise InvalidRequest(f"git remote {steps.git_remote!r} is not a remote's name "
                             "(letters, digits, '.', '_', '-', '/')", code="invalid_value")
    for what, value in (("verify window", steps.verify_window),
                        ("verify running time", steps.verify_running)):
        if isinstance(value, bool) or not isinstance(value, int | float) or \
                not math.isfinite(value) or value < 0:
            raise InvalidRequest(f"{what} must be 0 or more seconds, got {value!r}",
                                 code="invalid_value")
    if 0 < steps.verify_window < steps.verify_running:
        raise InvalidRequest(
            f"a program cannot be seen RUNNING for {steps.verify_running:g}s within a "
            f"{steps.verify_window:g}s verify window; widen the window or shorten the time",
            code="invalid_value")
    return DeploySteps(steps.source, steps.git_remote, bool(steps.supervisor_update),
                       float(steps.verify_window), float(steps.verify_running))


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


# Seconds after which a cache is read from SQL again even if no change was
# announced: a change whose announcement Redis could not take still arrives.
RELOAD_EVERY = 60.0
# A path no project has: read SQL again, at most this often (seconds).
MISS_RELOAD = 1.0


class ProjectRegistry:
    """Project lookups for the hot path, cached per process.

    Every change bumps a version key in Redis; a lookup costs one GET and re-reads
    SQL only when some process (CLI, dashboard, another server) changed a project.
    """

    def __init__(self, db: Database, redis: Redis, keys: Keys, settings: Settings,
                 node: str = "") -> None:
        self.db = db
        self.redis = redis
        self.keys = keys
        self.settings = settings
        # This process's node: where ``add`` and self-registration register.
        self.node = node
        self._version: str | None = None
        self._by_path: dict[tuple[str, str], Project] = {}  # (node, path) -> project
        self._by_id: dict[int, Project] = {}
        self._by_token: dict[str, Project] = {}  # token hash -> project
        self._checked = False
        self._loaded_at = -math.inf  # time.monotonic() of the last SQL read
        self.event_driven = False
        # Registrations in this process take turns: two first deploys of one new
        # directory arriving together (two CI runs) must make one project.
        # Other processes are kept apart by the UNIQUE columns (see _register).
        self._registering = asyncio.Lock()
        # The server-wide notification targets (a project without its own gets them).
        self.notify_defaults = default_targets(settings.notify, settings.notify_on,
                                               settings.notify_secret)

    async def _bump(self) -> None:
        """Tell every process that a project changed (the SQL change is made).

        A Redis that cannot take the write now (down, refusing writes) must not
        make a stored change look failed: it is logged, and other processes see
        the change at their next full reload (``RELOAD_EVERY``) instead.
        """
        # This process changed it: its next lookup must not wait for the event.
        self._checked = False
        self._loaded_at = -math.inf
        try:
            await self.redis.incr(self.keys.projects_version)
            await self.redis.publish(self.keys.events, encode(Event.PROJECTS))
        except REDIS_DOWN as exc:
            log.warning("the change is saved, but running deployster processes could not be "
                        "told (Redis: %s); they see it within %gs", describe(exc), RELOAD_EVERY)

    async def _route(self, project: Project, *, removed: bool = False) -> None:
        """Tell the queue scripts which events the project's targets want
        (``notify.routes``). A Redis that cannot take it now is logged: every
        running notifier rewrites the routes when it sees the version move."""
        try:
            if removed:
                await routes.forget_project(self.redis, self.keys, project.id)
            else:
                await routes.sync_project(self.redis, self.keys, project, self.notify_defaults)
        except REDIS_DOWN as exc:
            log.warning("the notifications of %s are saved, but Redis could not be told "
                        "(%s); a running server applies them within seconds", project.name,
                        describe(exc))

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
        stale = time.monotonic() - self._loaded_at > RELOAD_EVERY
        if version != self._version or version is None or stale:
            projects = await store.select_projects(self.db)
            self._loaded_at = time.monotonic()
            self._by_path = {(p.node, p.path): p for p in projects}
            self._by_id = {p.id: p for p in projects}
            self._by_token = {p.token_hash: p for p in projects if p.token_hash}
            self._version = version

    async def all(self) -> list[Project]:
        """Every project by name; always as of now (one Redis GET, SQL only if
        something changed), so a project registered a moment ago is listed."""
        await self._fresh(force=True)
        return sorted(self._by_path.values(), key=lambda p: p.name)

    async def match(self, cd: str, node: str | None = None) -> Project | None:
        """The registered project a deploy to ``cd`` on ``node`` (default:
        this one) belongs to, or None.

        First by the path as sent (``normalise_path``): a project registered at
        ``/srv/app/current`` stays that project whichever release the symlink
        points at. Failing that, by the directory ``cd`` resolves to: a project
        whose own path resolves to the same directory is the same project (two
        spellings of one directory are one project). That resolution is done
        now, never cached, since symlinks move. Raises ``InvalidRequest`` for a
        path that is not absolute.
        """
        path = normalise_path(cd)
        node = self.node if node is None else node
        key = (node, path)
        await self._fresh()
        project = self._by_path.get(key)
        if project is not None:
            return project
        await self._fresh(force=True)  # added a moment ago by another process?
        if key not in self._by_path and time.monotonic() - self._loaded_at > MISS_RELOAD:
            # ...one whose announcement Redis could not take (see _bump)?
            self._loaded_at = -math.inf
            await self._fresh(force=True)
        project = self._by_path.get(key)
        if project is not None or node != self.node:
            # Another node's directory is resolved on its host, never here.
            return project
        real = real_path(path)
        for (where, _), candidate in self._by_path.items():
            if where == node and real_path(candidate.path) == real:
                return candidate
        return None

    async def for_deploy(self, cd: str, node: str | None = None) -> Project:
        """The project a deploy to ``cd`` on ``node`` (default: this one)
        belongs to, self-registering it if allowed.

        An unknown path is registered, as sent, when the directory it resolves
        to lies under one of ``DEPLOYSTER_ALLOWED_ROOTS`` (resolved too: a
        symlink out of a root is refused), on this node only: another node's
        directories are checked on its own host (README.md#several-hosts). Raises
        ``UnknownProject`` (404) when it may not, ``InvalidRequest`` when it is
        no directory.
        """
        project = await self.match(cd, node)
        if project is not None:
            return project
        path = normalise_path(cd)
        if node is not None and node != self.node:
            raise UnknownProject(
                f"no project is registered at {path} on node {node!r}. Register it there: "
                f"run 'deployster project add {path}' on that host (a node registers only "
                "its own directories).",
            )
        real = real_path(path)
        if not is_under(real, self.settings.allowed_roots):
            resolves = f" (which resolves to {real})" if real != path else ""
            raise UnknownProject(
                f"no project is registered at {path}{resolves}. Register it on the server "
                f"with 'deployster project add {path}', or list its parent directory in "
                "DEPLOYSTER_ALLOWED_ROOTS.",
            )
        if not os.path.isdir(real):
            raise InvalidRequest(f"{path} is not a directory on the server", code="invalid_cd")
        project, _created = await self._register(path)
        return project

    async def add(
        self,
        path: str,
        *,
        name: str | None = None,
        pipeline: Any = None,
        lock_ttl: float | None = None,
        timeout: float | None = None,
        queue_policy: str | None = None,
        steps: dict[str, Any] | None = None,
        notify: NotifyChange | None = None,
    ) -> Project:
        """Register ``path`` (stored as given, made absolute and tidied).

        ``steps``: changes to the default ``DeploySteps`` (source, git_remote,
        supervisor_update, verify_window, verify_running). ``notify``: its
        notifications and GitHub link (``notify.targets.apply``).

        Raises ``Conflict`` (``project_exists``) when a project already has this
        directory, under any spelling, or, for an explicit ``name``, that name;
        ``InvalidRequest`` for a bad path, name, pipeline, TTL, timeout or policy.
        Nothing is stored unless every check passed.
        """
        spelled = normalise_path(path)
        if not os.path.isdir(spelled):
            raise InvalidRequest(f"{spelled} is not a directory", code="invalid_cd")
        stages = validate_pipeline(pipeline if pipeline is not None else [])
        _check_positive(lock_ttl, "lock TTL")
        _check_positive(timeout, "timeout")
        _check_policy(queue_policy)
        deploy_steps = validate_steps(steps or {}, DeploySteps())
        targets, repo, github_token = apply_notify(None, notify or NotifyChange())
        if name is not None and not _NAME.match(name):
            raise InvalidRequest(
                f"project name {name!r} must be 1-100 letters, digits, '.', '_' or '-'",
                code="invalid_name",
            )
        project, created = await self._register(
            spelled, name=name,
            pipeline_json=json.dumps([s.to_dict() for s in stages]),
            lock_ttl=lock_ttl or self.settings.default_lock_ttl,
            timeout=timeout or self.settings.default_timeout,
            queue_policy=queue_policy or "fifo",
            steps_json=json.dumps(deploy_steps.to_dict()),
        )
        if not created:
            raise Conflict(f"a project is already registered at {project.path}",
                           code="project_exists")
        if notify:
            project = await self._set_notify(project, targets, repo, github_token)
        return project

    async def _set_notify(self, project: Project, targets: Any, repo: str | None,
                          github_token: str | None) -> Project:
        """Store a project's notifications, tell every process and the queue scripts."""
        await store.set_project_notify(
            self.db, project.id,
            notify_json=None if targets is None else json.dumps([t.to_stored() for t in targets]),
            github_repo=repo, github_token=github_token)
        await self._bump()
        updated = await store.select_project(self.db, project.id)
        if updated is None:  # removed meanwhile by another process
            raise UnknownProject(f"project {project.name!r} no longer exists")
        await self._route(updated)
        return updated

    async def _register(
        self,
        path: str,
        *,
        name: str | None = None,
        pipeline_json: str = "[]",
        lock_ttl: float | None = None,
        timeout: float | None = None,
        queue_policy: str = "fifo",
        steps_json: str = "{}",
    ) -> tuple[Project, bool]:
        """Insert a project at ``path`` unless one has that directory already;
        returns (the project, whether this call created it).

        No check-then-insert: the insert itself is conditional (the UNIQUE path
        and name columns decide, see ``store.insert_project``), so racing
        registrations from several processes never fail, and a name taken in
        between moves on to the next free ``NAME-n``.
        """
        explicit = name is not None
        if name is None:  # the directory's name, made safe ("my app" -> "my-app")
            name = re.sub(r"[^A-Za-z0-9._-]+", "-", os.path.basename(path)).strip("-.")
            name = (name or "project")[:100]
        async with self._registering:
            existing = await self.match(path)
            if existing is not None:
                return existing, False
            for n in itertools.count(1):
                suffix = "" if n == 1 else f"-{n}"
                candidate = name[: 100 - len(suffix)] + suffix
                project = await store.insert_project(
                    self.db, name=candidate, path=path, pipeline_json=pipeline_json,
                    lock_ttl=lock_ttl or self.settings.default_lock_ttl,
                    timeout=timeout or self.settings.default_timeout,
                    queue_policy=queue_policy, steps_json=steps_json, node=self.node,
                )
                if project is not None:
                    await self._bump()
                    return project, True
                holder = await store.select_project_by_path(self.db, path, self.node)
                if holder is not None:  # another process registered it just now
                    self._checked = False
                    return holder, False
                if explicit:
                    raise Conflict(f"a project named {name!r} already exists; "
                                   "pick another --name", code="project_exists")
        raise AssertionError("unreachable")  # pragma: no cover

    async def edit(
        self,
        project: Project,
        *,
        name: str | None = None,
        pipeline: Any = None,
        lock_ttl: float | None = None,
        timeout: float | None = None,
        queue_policy: str | None = None,
        steps: dict[str, Any] | None = None,
        notify: NotifyChange | None = None,
    ) -> Project:
        """Change the given fields (None: unchanged); ``steps``: changes to the
        project's ``DeploySteps``, ``notify`` to its notifications. Raises as
        ``add`` does."""
        targets, repo, github_token = apply_notify(project, notify or NotifyChange())
        _check_positive(lock_ttl, "lock TTL")
        _check_positive(timeout, "timeout")
        _check_policy(queue_policy)
        steps_json = None
        if steps:
            steps_json = json.dumps(validate_steps(steps, project.steps).to_dict())
        pipeline_json = None
        if pipeline is not None:
            pipeline_json = json.dumps([s.to_dict() for s in validate_pipeline(pipeline)])
        if name is not None and name != project.name:
            if not _NAME.match(name):
                raise InvalidRequest(
                    f"project name {name!r} must be 1-100 letters, digits, '.', '_' or '-'",
                    code="invalid_name",
                )
        # No check-then-update: the UNIQUE name column decides, so a rename
        # racing another one is a clear conflict, not a database error.
        if not await store.update_project(
            self.db, project.id, name=name, pipeline_json=pipeline_json,
            lock_ttl=lock_ttl, timeout=timeout, queue_policy=queue_policy, steps_json=steps_json,
        ):
            raise Conflict(f"a project named {name!r} already exists", code="project_exists")
        await self._bump()
        updated = await store.select_project(self.db, project.id)
        if updated is None:  # removed meanwhile by another process
            raise UnknownProject(f"project {project.name!r} no longer exists")
        if notify:
            updated = await self._set_notify(updated, targets, repo, github_token)
        return updated

    async def remove(self, project: Project) -> None:
        """Delete the project's row and tell every process: its token stops
        working at once (``by_token_hash`` checks the version), and a deploy to
        its path is refused as for any unknown directory (or registers it anew
        under ``DEPLOYSTER_ALLOWED_ROOTS``). Its jobs and history are the
        caller's (``control.remove_project``)."""
        await store.delete_project(self.db, project.id)
        await self._bump()
        await self._route(project, removed=True)

    async def by_token_hash(self, token_hash: str) -> Project | None:
        """The project whose token hashes to ``token_hash``, never a revoked one.

        Always checks the version key (one Redis GET, no SQL unless a project
        changed): a rotation or revocation bumps it before the CLI returns, so
        the old token is refused by every process from then on, even one whose
        'projects' event has not arrived yet.
        """
        await self._fresh(force=True)
        return self._by_token.get(token_hash)

    async def by_token_hash_unchecked(self, token_hash: str) -> tuple[Project | None, str | None]:
        """``by_token_hash`` without its version check when the cache holds the
        token: (the project, the projects version the cache was read at), for
        a caller that checks that version itself in the same round trip as its
        read (``jobs.read_status``). A miss is looked up checked: (project or
        None, None)."""
        cached = self._by_token.get(token_hash)
        if cached is not None and self._version is not None:
            return cached, self._version
        return await self.by_token_hash(token_hash), None

    async def set_token_hash(self, project: Project, token_hash: str | None) -> None:
        """Store (None: remove) a project's token hash and tell every process."""
        await store.set_project_token(self.db, project.id, token_hash)
        await self._bump()

    async def find_by_name(self, name: str) -> Project | None:
        """The project called ``name`` (the API's ``/projects/<name>``), or None."""
        await self._fresh(force=True)
        for project in self._by_id.values():
            if project.name == name:
                return project
        return None

    async def find(self, ref: str, node: str | None = None) -> Project:
        """A project by name, numeric id or path (the CLI's ``<name|id|path>``);
        a path is ``node``'s (default: this node's), a name or an id is one
        project's whatever its node."""
        project = await store.select_project_by_name(self.db, ref)
        if project is None and ref.isdigit():
            project = await store.select_project(self.db, int(ref))
        if project is None and (ref.startswith("/") or ref.startswith("~") or ref == "."):
            try:
                project = await self.match(os.path.abspath(os.path.expanduser(ref)), node)
            except InvalidRequest:
                project = None
        if project is None:
            where = f" on node {node!r}" if node not in (None, self.node) else ""
            raise UnknownProject(f"no project named, numbered or at {ref!r}{where}; "
                                 "see 'deployster project list'")
        return project

    async def adopt(self) -> int:
        """Give this node the projects of a database from before nodes
        (``store.adopt_projects``); how many it took."""
        moved = await store.adopt_projects(self.db, self.node)
        if moved:
            await self._bump()
        return moved

    async def owns(self, project_id: int) -> bool:
        """Whether the project is this node's: only then does this server
        run its jobs (README.md#several-hosts). An unknown project is nobody's."""
        project = await self.get(project_id)
        return project is not None and project.node == self.node

    async def get(self, project_id: int) -> Project | None:
        """By id, from the per-process cache (a Redis GET when nothing changed).

        The dispatcher calls this on every job start: keeping SQL (a new SQLite
        connection and thread per query) off that path cuts the hand-off time.
        """
        await self._fresh()
        project = self._by_id.get(project_id)
        if project is not None:
            return project
        return await store.select_project(self.db, project_id)
