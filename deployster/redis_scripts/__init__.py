"""Every Lua script deployster runs in Redis, and one typed call per script.

The scripts are the ``.lua`` files beside this module, one per script, plus
four libraries that several scripts share: ``lock.lua`` (every operation on
the deploy lock; its life is mapped in ``deployster/lock.py``), ``log.lua``
(where a log stream ends: the next entry's byte offset), ``outbox.lua`` (a job
event for notifications, ``outbox_add``, see ``deployster/notify/outbox.py``),
``metrics.lua`` (the counters ``GET /metrics`` reads, kept by the scripts that
change what they count) and ``queue.lua`` (the queue itself, and the queue
scripts' ``publish``, ``log_line``, ``end_job`` and ``claim``). Lua has no
include: a script's text is a prelude, its libraries and its own file, joined
once, at import.

Each script's KEYS and ARGV are declared once, below, as tuples of names
(``Lua.keys``, ``Lua.argv``). The prelude gives the Lua those names as locals
(the key ``lock`` is ``K_LOCK``, the argument ``job_id`` is ``JOB_ID``; a last
name ``*chunks`` stands for the rest of ARGV, from index ``CHUNKS_FROM``), so
no script reads ``KEYS[n]`` or ``ARGV[n]``. Each file's header comment lists
the same names in the same order, with what they mean and what the script
returns (``tests/test_redis_scripts.py`` keeps the two equal, and checks that
every call below sends its values in that order).

``Scripts.of(redis, keys)`` registers the scripts on one Redis client (redis-py's
``register_script``: EVALSHA, and the text loaded again after a NOSCRIPT), once
per client and key namespace, each at its first use. Its methods take named
arguments, build KEYS and ARGV, and return the script's raw reply (what the
file's header says it returns); the modules that own each concept read it.
Redis 6.2 runs them all: EVAL scripts, no functions.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from typing import Any

from redis.commands.core import AsyncScript

from ..autopipe import ScriptBatcher
from ..clock import iso, now_ms
from ..keys import Keys
from ..redis_conn import Redis


@dataclass(frozen=True)
class Lua:
    """One script as Redis runs it: ``source`` is the prelude, the libraries
    (``libs``, in order) and the script's own file, ``<name>.lua``."""

    name: str
    keys: tuple[str, ...]
    argv: tuple[str, ...]
    libs: tuple[str, ...]
    source: str

    @property
    def sha(self) -> str:
        """The SHA1 Redis knows the script by (EVALSHA)."""
        return hashlib.sha1(self.source.encode("utf-8")).hexdigest()


def lua_text(name: str) -> str:
    """The text of ``<name>.lua`` in this package (a script or a library)."""
    return resources.files(__name__).joinpath(f"{name}.lua").read_text(encoding="utf-8")


def _prelude(keys: tuple[str, ...], argv: tuple[str, ...]) -> str:
    lines = []
    for table, prefix, names in (("KEYS", "K_", keys), ("ARGV", "", argv)):
        for i, name in enumerate(names, 1):
            rest = name.startswith("*")
            if rest and i != len(names):
                raise ValueError(f"{name!r}: only the last name can stand for the rest")
            ident = prefix + name.lstrip("*").upper()
            if not ident.isidentifier():
                raise ValueError(f"{name!r} is not a name Lua can use")
            lines.append(f"local {ident}_FROM = {i}" if rest else f"local {ident} = {table}[{i}]")
    return "\n".join(lines)


def _load(name: str, keys: tuple[str, ...], argv: tuple[str, ...] = (),
          libs: tuple[str, ...] = ()) -> Lua:
    parts = [f"-- deployster: {name}.lua", _prelude(keys, argv)]
    parts += [lua_text(lib) for lib in libs]
    parts.append(lua_text(name))
    return Lua(name, keys, argv, libs, "\n".join(parts))


# The head every queue script's KEYS and ARGV start with (queue.lua names them).
QUEUE_KEYS = ("lock", "queue", "fence", "queues", "running", "dirty", "events", "current",
              "sigs", "job", "feed", "seq", "legacy", "durations", "notify", "outbox",
              "metrics")
QUEUE_ARGV = ("job_prefix", "project", "now", "runner", "log_prefix", "now_ms", "byref_prefix")
_QUEUE_LIBS = ("lock", "log", "wait", "outbox", "metrics", "queue")

ENQUEUE = _load("enqueue", QUEUE_KEYS,
                (*QUEUE_ARGV, "job_id", "policy", "signature", "fields", "cap"), _QUEUE_LIBS)
CLAIM = _load("claim", QUEUE_KEYS, QUEUE_ARGV, _QUEUE_LIBS)
FINISH = _load("finish", QUEUE_KEYS, (*QUEUE_ARGV, "job_id", "fence", "status", "reason",
                                      "exit_code", "closing", "nonce", "batch", "expect",
                                      "maxlen", "*chunks"), _QUEUE_LIBS)
CANCEL = _load("cancel", QUEUE_KEYS, (*QUEUE_ARGV, "job_id", "nonce"), _QUEUE_LIBS)
UPGRADE_QUEUE = _load("upgrade_queue", QUEUE_KEYS, QUEUE_ARGV, _QUEUE_LIBS)
BEAT = _load("beat", ("job", "lock"), ("job_id", "fence", "heartbeat", "ttl_ms"), ("lock",))
RELEASE = _load("release", ("lock", "events", "notify", "outbox"),
                ("owner", "event", "project", "now_ms", "actor"), ("lock", "outbox"))
APPEND = _load("append", ("job", "log"),
               ("fence", "maxlen", "now_ms", "batch", "expect", "metrics_prefix", "*chunks"),
               ("log", "metrics"))
STATUS_READ = _load("status_read", ("job", "log", "versions"),
                    ("nonce", "job_id", "queue_prefix", "project", "job_prefix", "current_prefix",
                     "durations_prefix", "now_ms", "version"), ("log", "wait"))
QUEUE_WAIT = _load("queue_wait", ("durations", "current"), ("job_prefix", "now_ms"), ("wait",))
STATUS_SQL = _load("status_sql", ("job",), ("nonce", "from_end"))
SETTLE = _load("settle", ("dirty", "job", "log"),
               ("job_id", "version", "retention_s", "log_grace_s", "finished"))
LOCKS_AND_QUEUES = _load("locks_and_queues", ("*locks_then_queues",), (), ("lock",))
METRICS_READ = _load("metrics_read", ("metrics", "deliveries", "runners", "nodes", "*projects"),
                     ("job_prefix", "runner_prefix", "since_ms", "server_wide"), ("lock",))
# The notifications' deliveries (notify/outbox.py).
_NOTIFY_ARGV = ("lane_prefix", "delivery_prefix")
NOTIFY_EXPAND = _load("notify_expand", ("outbox", "due"),
                      ("entry", "now_ms", *_NOTIFY_ARGV, "*deliveries"))
NOTIFY_CLAIM = _load("notify_claim", ("due",), ("now_ms", "lease_ms", "max", *_NOTIFY_ARGV))
NOTIFY_SETTLE = _load("notify_settle", ("due", "counts"),
                      ("lane", "delivery", "next_ms", "now_ms", "counted", *_NOTIFY_ARGV))

SCRIPTS = (ENQUEUE, CLAIM, FINISH, CANCEL, UPGRADE_QUEUE, BEAT, RELEASE, APPEND, STATUS_READ,
           QUEUE_WAIT, STATUS_SQL, SETTLE, LOCKS_AND_QUEUES, METRICS_READ, NOTIFY_EXPAND,
           NOTIFY_CLAIM, NOTIFY_SETTLE)
LIBRARIES = ("lock", "log", "wait", "outbox", "metrics", "queue")


class Scripts:
    """Every script, registered on one Redis client for one key namespace.

    Build it with ``Scripts.of`` (one per client and namespace, whoever asks
    first). Each call builds KEYS and ARGV in the order its script declares;
    keys that do not depend on the call are computed once, here.
    """

    @classmethod
    def of(cls, redis: Redis, keys: Keys) -> Scripts:
        """The scripts of ``redis`` for ``keys``' namespace, made on first use."""
        # Kept on the client itself, so they go when it goes (a cache keyed by
        # the client would keep every client alive: its scripts refer to it).
        made: dict[Keys, Scripts] = vars(redis).setdefault("_deployster_scripts", {})
        scripts = made.get(keys)
        if scripts is None:
            scripts = made[keys] = cls(redis, keys)
        return scripts

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._job_prefix = keys.job_prefix
        self._log_prefix = keys.log_prefix
        self._queues = keys.queues
        self._running = keys.running
        self._dirty = keys.dirty
        self._events = keys.events
        self._feed = keys.feed
        self._queue_prefix = keys.queue_prefix
        self._notify_routes = keys.notify_routes
        self._outbox = keys.outbox
        self._notify_due = keys.notify_due
        self._notify_prefixes = [keys.notify_lane_prefix, keys.notify_delivery_prefix]
        self._no_job = keys.job("-")  # claim's placeholder for the head's job key

    def _register(self, lua: Lua) -> AsyncScript:
        return self.redis.register_script(lua.source)

    # Registered at first use, then kept: never once per call.
    @cached_property
    def _enqueue(self) -> ScriptBatcher:
        return ScriptBatcher(self.redis, ENQUEUE.source)

    @cached_property
    def _claim(self) -> AsyncScript:
        return self._register(CLAIM)

    @cached_property
    def _finish(self) -> AsyncScript:
        return self._register(FINISH)

    @cached_property
    def _cancel(self) -> AsyncScript:
        return self._register(CANCEL)

    @cached_property
    def _upgrade_queue(self) -> AsyncScript:
        return self._register(UPGRADE_QUEUE)

    @cached_property
    def _beat(self) -> AsyncScript:
        return self._register(BEAT)

    @cached_property
    def _release(self) -> AsyncScript:
        return self._register(RELEASE)

    @cached_property
    def _append(self) -> AsyncScript:
        return self._register(APPEND)

    @cached_property
    def _status_read(self) -> AsyncScript:
        return self._register(STATUS_READ)

    @cached_property
    def _queue_wait(self) -> AsyncScript:
        return self._register(QUEUE_WAIT)

    @cached_property
    def _status_sql(self) -> AsyncScript:
        return self._register(STATUS_SQL)

    @cached_property
    def _settle(self) -> AsyncScript:
        return self._register(SETTLE)

    @cached_property
    def _locks_and_queues(self) -> AsyncScript:
        return self._register(LOCKS_AND_QUEUES)

    @cached_property
    def _notify_expand(self) -> AsyncScript:
        return self._register(NOTIFY_EXPAND)

    @cached_property
    def _notify_claim(self) -> AsyncScript:
        return self._register(NOTIFY_CLAIM)

    @cached_property
    def _notify_settle(self) -> AsyncScript:
        return self._register(NOTIFY_SETTLE)

    @cached_property
    def _metrics_read(self) -> ScriptBatcher:
        return ScriptBatcher(self.redis, METRICS_READ.source)

    # -- the queue (queue.py): KEYS and ARGV start with QUEUE_KEYS, QUEUE_ARGV
    def _queue_keys(self, project_id: int, job_key: str) -> list[str]:
        k = self.keys
        return [k.lock(project_id), k.queue(project_id), k.fence(project_id), self._queues,
                self._running, self._dirty, self._events, k.current(project_id),
                k.signatures(project_id), job_key, self._feed, k.queue_seq(project_id),
                k.legacy_queue(project_id), k.durations(project_id), self._notify_routes,
                self._outbox, k.project_metrics(project_id)]

    def _queue_argv(self, project_id: int, runner: str) -> list[str | int]:
        return [self._job_prefix, project_id, iso(), runner, self._log_prefix, now_ms(),
                self.keys.byref_prefix(project_id)]

    def enqueue(
        self, *, project_id: int, runner: str, job_id: str, policy: str, signature: str,
        fields: str, cap: int,
    ) -> Awaitable[Any]:
        """enqueue.lua; sent in call order, batched with the calls made while
        one is in flight (see ``autopipe.ScriptBatcher``)."""
        return self._enqueue.call(
            self._queue_keys(project_id, self.keys.job(job_id)),
            [*self._queue_argv(project_id, runner), job_id, policy, signature, fields, cap],
        )

    def claim(self, *, project_id: int, runner: str) -> Awaitable[Any]:
        """claim.lua."""
        return self._claim(keys=self._queue_keys(project_id, self._no_job),
                           args=self._queue_argv(project_id, runner))

    def finish(
        self, *, project_id: int, runner: str, job_id: str, fence: int, status: str,
        reason: str, exit_code: str, closing: str, nonce: str, batch: str = "",
        expect: int | str = "", maxlen: int | str = "", chunks: Sequence[bytes | str] = (),
    ) -> Awaitable[Any]:
        """finish.lua; ``batch`` '' (the default) appends no output first."""
        return self._finish(
            keys=self._queue_keys(project_id, self.keys.job(job_id)),
            args=[*self._queue_argv(project_id, runner), job_id, fence, status, reason,
                  exit_code, closing, nonce, batch, expect, maxlen, *chunks],
        )

    def cancel(self, *, project_id: int, job_id: str, nonce: str) -> Awaitable[Any]:
        """cancel.lua (runs no claim: its runner is '')."""
        return self._cancel(keys=self._queue_keys(project_id, self.keys.job(job_id)),
                            args=[*self._queue_argv(project_id, ""), job_id, nonce])

    def upgrade_queue(self, *, project_id: int, client: Any = None) -> Awaitable[Any]:
        """upgrade_queue.lua; ``client``: a pipeline to queue it on (default: run it now)."""
        return self._upgrade_queue(keys=self._queue_keys(project_id, self._no_job),
                                   args=self._queue_argv(project_id, ""), client=client)

    # -- the lock's renewal (watchdog.py) and release (lock.py)
    def beat(
        self, *, project_id: int, job_id: str, fence: int, heartbeat: str, ttl_ms: int | str
    ) -> Awaitable[Any]:
        """beat.lua; ``ttl_ms`` '' checks without renewing."""
        return self._beat(keys=[self.keys.job(job_id), self.keys.lock(project_id)],
                          args=[job_id, fence, heartbeat, ttl_ms])

    def release(self, *, project_id: int, owner: str, event: str, actor: str = ""
                ) -> Awaitable[Any]:
        """release.lua; ``actor`` '' writes no outbox event."""
        return self._release(
            keys=[self.keys.lock(project_id), self._events, self._notify_routes, self._outbox],
            args=[owner, event, project_id, now_ms(), actor])

    # -- logs (logstream.py) and the /status read (jobs.py)
    def append(
        self, *, job_id: str, fence: int | str, maxlen: int, now_ms: int, batch: str,
        expect: int | str, chunks: Sequence[bytes | str],
    ) -> Awaitable[Any]:
        """append.lua; ``fence`` and ``expect`` '' for none."""
        return self._append(keys=[self.keys.job(job_id), self.keys.log(job_id)],
                            args=[fence, maxlen, now_ms, batch, expect,
                                  self.keys.metrics_prefix, *chunks])

    def status_read(self, *, job_id: str, nonce: str, project: int | str = "",
                    version: str = "") -> Awaitable[Any]:
        """status_read.lua; ``project`` '' lets any project's job be read;
        ``version`` '' checks no projects version."""
        return self._status_read(keys=[self.keys.job(job_id), self.keys.log(job_id),
                                       self.keys.projects_version],
                                 args=[nonce, job_id, self._queue_prefix, project,
                                       self.keys.job_prefix, self.keys.current_prefix,
                                       self.keys.durations_prefix, now_ms(), version])

    def queue_wait(self, *, project_id: int) -> Awaitable[Any]:
        """queue_wait.lua: {typical_ms, remaining_ms} of the project's queue."""
        keys = [self.keys.durations(project_id), self.keys.current(project_id)]
        return self._queue_wait(keys=keys, args=[self.keys.job_prefix, now_ms()])

    def status_sql(self, *, job_id: str, nonce: str, from_end: str) -> Awaitable[Any]:
        """status_sql.lua: the cursor to the log's end after a read from SQL."""
        return self._status_sql(keys=[self.keys.job(job_id)], args=[nonce, from_end])

    # -- history (history.py) and the dashboard (overview.py)
    def settle(
        self, *, job_id: str, version: str, retention_s: int, log_grace_s: int,
        finished: str, client: Any = None,
    ) -> Awaitable[Any]:
        """settle.lua; ``client``: a pipeline to queue it on (default: run it now)."""
        return self._settle(
            keys=[self._dirty, self.keys.job(job_id), self.keys.log(job_id)],
            args=[job_id, version, retention_s, log_grace_s, finished], client=client,
        )

    def locks_and_queues(self, project_ids: Sequence[int]) -> Awaitable[Any]:
        """locks_and_queues.lua."""
        k = self.keys
        return self._locks_and_queues(
            keys=[k.lock(p) for p in project_ids] + [k.queue(p) for p in project_ids]
        )

    def metrics_read(
        self, project_ids: Sequence[int], *, since_ms: int, server_wide: bool
    ) -> Awaitable[Any]:
        """metrics_read.lua over ``project_ids``; ``server_wide``: read the
        server-wide counters, runners and nodes too. Calls made without an ``await``
        between them go out as one pipeline (``autopipe.ScriptBatcher``)."""
        k = self.keys
        per_project = [key for p in project_ids for key in (
            k.lock(p), k.queue(p), k.current(p), k.project_metrics(p))]
        return self._metrics_read.call(
            [k.metrics, k.notify_metrics, k.runners, k.nodes, *per_project],
            [self._job_prefix, k.runner_prefix, since_ms, "1" if server_wide else "0"],
        )

    # -- notification deliveries (notify/outbox.py)
    def notify_expand(self, *, entry: str, now_ms: int,
                      deliveries: Sequence[tuple[str, str, str]]) -> Awaitable[Any]:
        """notify_expand.lua; ``deliveries``: (lane, delivery id, fields JSON) each."""
        return self._notify_expand(
            keys=[self._outbox, self._notify_due],
            args=[entry, now_ms, *self._notify_prefixes, *(v for d in deliveries for v in d)])

    def notify_claim(self, *, now_ms: int, lease_ms: int, max: int) -> Awaitable[Any]:
        """notify_claim.lua."""
        return self._notify_claim(keys=[self._notify_due],
                                  args=[now_ms, lease_ms, max, *self._notify_prefixes])

    def notify_settle(self, *, lane: str, delivery: str, next_ms: int | str,
                      now_ms: int, counted: str = "") -> Awaitable[Any]:
        """notify_settle.lua; ``next_ms`` '' when the delivery is done;
        ``counted`` the metrics counter of the attempt ('' for none)."""
        return self._notify_settle(
            keys=[self._notify_due, self.keys.notify_metrics],
            args=[lane, delivery, next_ms, now_ms, counted, *self._notify_prefixes])
