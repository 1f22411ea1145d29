"""The Lua scripts' contracts (``deployster/redis_scripts/``), against a real Redis.

Each script declares its KEYS and ARGV once, as names in Python; its file's
header lists them, every call sends its values in that order, and every status,
reason and event name in the Lua is one the Python side knows.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any

from deployster.autopipe import ScriptBatcher
from deployster.embedded_redis import ensure_embedded_redis
from deployster.estimate import DURATIONS_KEPT
from deployster.events import Event
from deployster.ids import new_job_id
from deployster.keys import Keys
from deployster.lock import DeployLock
from deployster.logstream import LogWriter
from deployster.models import NOTIFY_EVENTS, Job, JobStatus, Reason
from deployster.queue import JobQueue
from deployster.redis_conn import redis_from_url
from deployster.redis_scripts import (
    APPEND,
    BEAT,
    CANCEL,
    CLAIM,
    ENQUEUE,
    FINISH,
    LIBRARIES,
    LOCKS_AND_QUEUES,
    METRICS_READ,
    NOTIFY_CLAIM,
    NOTIFY_EXPAND,
    NOTIFY_SETTLE,
    QUEUE_ARGV,
    QUEUE_KEYS,
    QUEUE_WAIT,
    RELEASE,
    SCRIPTS,
    SETTLE,
    STATUS_READ,
    STATUS_SQL,
    UPGRADE_QUEUE,
    Lua,
    Scripts,
    lua_text,
)
from deployster.service import Deployster
from deployster.watchdog import OK, Watchdog
from tests.helpers.paths import REPO

PACKAGE = "deployster.redis_scripts"


def lua_files() -> dict[str, str]:
    """Every ``.lua`` file of the package, by name (without ``.lua``)."""
    return {f.name[:-4]: f.read_text(encoding="utf-8")
            for f in resources.files(PACKAGE).iterdir() if f.name.endswith(".lua")}


def header_names(text: str, table: str) -> tuple[str, ...]:
    """The names a file's ``-- KEYS:`` or ``-- ARGV:`` header line lists."""
    lines = [line for line in text.splitlines() if line.startswith(f"-- {table}:")]
    assert len(lines) == 1, f"want one '-- {table}:' line, found {lines}"
    names = lines[0].split(":", 1)[1].split()
    return () if names == ["(none)"] else tuple(names)


# ------------------------------------------------------------ the declarations


def test_every_lua_file_is_a_declared_script_or_library() -> None:
    assert set(lua_files()) == {s.name for s in SCRIPTS} | set(LIBRARIES)
    assert len({s.name for s in SCRIPTS}) == len(SCRIPTS)


def test_each_files_header_lists_its_declared_keys_and_argv_in_order() -> None:
    for lua in SCRIPTS:
        text = lua_text(lua.name)
        assert header_names(text, "KEYS") == lua.keys, lua.name
        assert header_names(text, "ARGV") == lua.argv, lua.name
    # The queue library names the head every queue script starts with.
    queue = lua_text("queue")
    assert header_names(queue, "KEYS") == QUEUE_KEYS
    assert header_names(queue, "ARGV") == QUEUE_ARGV
    for lua in SCRIPTS:
        if "queue" in lua.libs:
            assert lua.keys == QUEUE_KEYS and lua.argv[:len(QUEUE_ARGV)] == QUEUE_ARGV, lua.name
            assert lua.libs.index("lock") < lua.libs.index("queue"), lua.name


def test_no_script_reads_keys_or_argv_by_position() -> None:
    # By name only (the prelude's locals), so the declaration is the one place
    # that fixes an order.
    for name, text in lua_files().items():
        assert not re.findall(r"\b(?:KEYS|ARGV)\[\d", text), name


def test_only_the_lock_library_touches_the_lock_key() -> None:
    # Every script reaches the lock key (K_LOCK) through lock.lua's functions.
    for name, text in lua_files().items():
        if name != "lock":
            assert not re.findall(r"redis\.call\([^)]*K_LOCK", text), name
    assert {"lock_take", "lock_renew", "lock_release"} <= set(
        re.findall(r"local function (\w+)", lua_text("lock")))


def test_the_lua_files_ship_with_the_package() -> None:
    # A non-editable install carries only what package-data names.
    with (REPO / "pyproject.toml").open("rb") as f:
        patterns = tomllib.load(f)["tool"]["setuptools"]["package-data"]["deployster"]
    for name in lua_files():
        path = f"redis_scripts/{name}.lua"
        assert any(fnmatch.fnmatch(path, p) for p in patterns), path


# ------------------------------------------------------------ names in the Lua

# Where the Lua names a status, a reason or an event.
_STATUS_SET = re.compile(r"'HSET', [^,]+, 'status', '([^']*)'")  # HSET k 'status', 'running'
_END_JOB = re.compile(r"end_job\([^,]+,\s*'([^']*)',\s*'([^']*)'")  # end_job(id, st, reason
_PUBLISH = re.compile(r"publish\('([^']*)'")
# A status compared: a field read by ``HGET ... 'status')``, or [1] of an HMGET
# whose first field is 'status' (and a local copied from it).
_STATUS_GET = re.compile(r"'status'\)\s*[=~]=\s*'([^']*)'")
_HMGET_STATUS = re.compile(r"local (\w+) = redis\.call\('HMGET', [^,]+, 'status'")


def status_comparisons(text: str) -> list[str]:
    found = _STATUS_GET.findall(text)
    for var in _HMGET_STATUS.findall(text):
        exprs = [re.escape(f"{var}[1]")]
        exprs += [re.escape(alias) for alias in
                  re.findall(rf"local (\w+) = {re.escape(var)}\[1\]", text)]
        for expr in exprs:
            found += re.findall(rf"(?<![\w.]){expr}\s*[=~]=\s*'([^']*)'", text)
    return found


def test_every_status_reason_and_event_named_in_the_lua_is_a_member_of_its_enum() -> None:
    statuses: set[str] = set()
    reasons: set[str] = set()
    events: set[str] = set()
    for text in lua_files().values():
        statuses |= set(_STATUS_SET.findall(text)) | set(status_comparisons(text))
        for status, reason in _END_JOB.findall(text):
            statuses.add(status)
            reasons.add(reason)
        events |= set(_PUBLISH.findall(text))
    assert statuses <= {s.value for s in JobStatus}, statuses
    assert reasons <= {r.value for r in Reason}, reasons
    assert events <= {e.value for e in Event}, events
    # The parse really found them (it cannot pass by finding nothing).
    assert {"queued", "running", "failed"} <= statuses
    assert reasons == {"lock_lost", "superseded", "cancelled"}
    assert events == {"enqueued", "started", "finished", "cancel"}


def test_every_outbox_event_named_in_the_lua_is_a_notification_event() -> None:
    named: set[str] = set()
    for text in lua_files().values():
        named |= set(re.findall(r"outbox_add\('([^']*)'", text))
        # end_job writes its reason's or its status's name
        if "outbox_add(reason, id)" in text:
            named |= {"superseded", "cancelled"} | {s.value for s in JobStatus if s.finished}
    assert named == set(NOTIFY_EVENTS)


# ------------------------------------------------------------ calls send by name

ECHO = "return {KEYS, ARGV}"
P, J = 7, "01JDECHOECHOECHOECHOECHO00"


def echoing(scripts: Scripts) -> Scripts:
    """``scripts`` with each registration swapped for a script that answers
    the KEYS and ARGV it got."""
    for lua in SCRIPTS:
        attr = f"_{lua.name}"
        scripts.__dict__[attr] = (ScriptBatcher(scripts.redis, ECHO)
                                  if lua in (ENQUEUE, METRICS_READ)
                                  else scripts.redis.register_script(ECHO))
    return scripts


async def test_every_call_sends_keys_and_argv_in_the_declared_order(core: Deployster) -> None:
    keys = core.keys
    s = echoing(Scripts(core.redis, keys))
    key_values = {
        "lock": keys.lock(P), "queue": keys.queue(P), "fence": keys.fence(P),
        "queues": keys.queues, "running": keys.running, "dirty": keys.dirty,
        "events": keys.events, "current": keys.current(P), "sigs": keys.signatures(P),
        "job": keys.job(J), "feed": keys.feed, "log": keys.log(J), "seq": keys.queue_seq(P),
        "legacy": keys.legacy_queue(P), "durations": keys.durations(P),
        "versions": keys.projects_version,
        "notify": keys.notify_routes, "outbox": keys.outbox, "due": keys.notify_due,
        "counts": keys.notify_metrics,
        "metrics": keys.project_metrics(P),
    }
    head = {"job_prefix": keys.job_prefix, "project": str(P), "log_prefix": keys.log_prefix,
            "byref_prefix": keys.byref_prefix(P), "queue_prefix": keys.queue_prefix,
            "current_prefix": keys.current_prefix, "durations_prefix": keys.durations_prefix,
            "lane_prefix": keys.notify_lane_prefix,
            "delivery_prefix": keys.notify_delivery_prefix,
            "metrics_prefix": keys.metrics_prefix}
    # Each call with its named arguments; ARGV names match the arguments' names.
    calls: list[tuple[Lua, dict[str, Any], Callable[..., Awaitable[Any]]]] = [
        (ENQUEUE, dict(runner="rn", job_id=J, policy="pl", signature="sg", fields="fd",
                       cap=3), s.enqueue),
        (CLAIM, dict(runner="rn"), s.claim),
        (FINISH, dict(runner="rn", job_id=J, fence=4, status="st", reason="rs",
                      exit_code="ec", closing="cl", nonce="nc", batch="bt", expect=12,
                      maxlen=9, chunks=["c1", "c2"]), s.finish),
        (CANCEL, dict(job_id=J, nonce="nc"), s.cancel),
        (UPGRADE_QUEUE, {}, s.upgrade_queue),
        (BEAT, dict(job_id=J, fence=4, heartbeat="hb", ttl_ms=5), s.beat),
        (RELEASE, dict(owner="ow", event="ev", actor="ac"), s.release),
        (APPEND, dict(job_id=J, fence=4, maxlen=9, now_ms=11, batch="bt", expect=12,
                      chunks=["c1", "c2"]), s.append),
        (STATUS_READ, dict(job_id=J, nonce="nc", project=P, version="v7"), s.status_read),
        (QUEUE_WAIT, {}, s.queue_wait),
        (STATUS_SQL, dict(job_id=J, nonce="nc", from_end="17"), s.status_sql),
        (SETTLE, dict(job_id=J, version="vs", retention_s=13, log_grace_s=7,
                        finished="1"), s.settle),
        (NOTIFY_EXPAND, dict(entry="en", now_ms=21, deliveries=[("ln", "dl", "fd")]),
         s.notify_expand),
        (NOTIFY_CLAIM, dict(now_ms=21, lease_ms=22, max=23), s.notify_claim),
        (NOTIFY_SETTLE, dict(lane="ln", delivery="dl", next_ms=24, now_ms=21, counted="ct"),
         s.notify_settle),
    ]
    assert {lua for lua, _, _ in calls} | {LOCKS_AND_QUEUES, METRICS_READ} == set(SCRIPTS)
    for lua, named, call in calls:
        project = {"project_id": P} if {"lock", "durations"} & set(lua.keys) else {}
        got_keys, got_argv = await call(**project, **named)
        want_keys = (dict(key_values, job=keys.job("-")) if lua in (CLAIM, UPGRADE_QUEUE)
                     else key_values)
        assert got_keys == [want_keys[n] for n in lua.keys], lua.name
        values = {**head, "runner": "", **{k: str(v) for k, v in named.items()}}
        for name, got in zip(lua.argv, got_argv, strict=False):
            if name == "now":
                assert re.fullmatch(r"\d{4}-\d\d-\d\dT[\d:.]+Z", got), (lua.name, got)
            elif name == "now_ms" and lua is not APPEND:
                assert got.isdigit(), (lua.name, got)
            elif name == "*chunks":
                assert got_argv[lua.argv.index(name):] == named["chunks"], lua.name
            elif name == "*deliveries":
                assert got_argv[lua.argv.index(name):] == ["ln", "dl", "fd"], lua.name
            else:
                assert got == values[name], (lua.name, name, got_argv)
        if not lua.argv[-1].startswith("*"):
            assert len(got_argv) == len(lua.argv), lua.name
    got_keys, got_argv = await s.locks_and_queues([1, 2])
    assert got_keys == [keys.lock(1), keys.lock(2), keys.queue(1), keys.queue(2)]
    assert got_argv == []
    got_keys, got_argv = await s.metrics_read([1, 2], since_ms=19, server_wide=True)
    assert got_keys == [keys.metrics, keys.notify_metrics, keys.runners, keys.nodes,
                        keys.lock(1), keys.queue(1), keys.current(1), keys.project_metrics(1),
                        keys.lock(2), keys.queue(2), keys.current(2), keys.project_metrics(2)]
    assert got_argv == [keys.job_prefix, keys.runner_prefix, "19", "1"]


# ------------------------------------------------------------ registration


async def test_each_script_is_registered_once_per_client(core: Deployster) -> None:
    scripts = core.scripts
    assert Scripts.of(core.redis, core.keys) is scripts
    writer = LogWriter(core.redis, core.keys, new_job_id(), cap_bytes=1024)
    users: list[Any] = [core.queue, core.jobs, core.lock, Watchdog(core.redis, core.keys), writer,
             JobQueue(core.redis, core.keys), DeployLock(core.redis, core.keys)]
    assert all(user.scripts is scripts for user in users)
    assert scripts._append is scripts._append  # registered at first use, then kept
    # Another namespace on the same client has its own keys, so its own calls.
    assert Scripts.of(core.redis, Keys("other")) is not scripts


# ------------------------------------------------------------ Redis 6.2


async def test_every_script_runs_on_redis_6_2(own_redis_dir: Path) -> None:
    """The embedded redis-server is 6.2: what a VPS without its own Redis runs."""
    client = redis_from_url(ensure_embedded_redis(own_redis_dir))
    try:
        assert (await client.info("server"))["redis_version"].startswith("6.2")
        for lua in SCRIPTS:
            assert await client.script_load(lua.source) == lua.sha, lua.name
        keys = Keys("t62")
        queue = JobQueue(client, keys)
        first, second = (Job(id=new_job_id(), project_id=1, project="p", cd="/tmp",
                             commands=["true"], commit_hash=c, ref_name="main")
                         for c in ("a", "b"))
        assert (await queue.enqueue(first, runner="r")).started == first.id
        assert (await queue.enqueue(second, runner="r")).position == 1
        job = await queue.scripts.status_read(job_id=first.id, nonce="n")
        assert job[0] == "running"
        first.fence = 1
        assert await Watchdog(client, keys).beat(first, renew=True) == OK
        async with LogWriter(client, keys, first.id, cap_bytes=1024, fence=1) as log:
            log.write("hello\n")
        done = await queue.finish(first, JobStatus.COMPLETE, runner="r")
        assert (done.ended, done.next_job) == (True, second.id)
        assert await queue.cancel(second) == "running"
        assert await DeployLock(client, keys).release(1, second.id)
        assert await queue.claim(1, "r") is None
        version = await client.hget(keys.dirty, first.id)
        assert await queue.scripts.settle(job_id=first.id, version=version, retention_s=60,
                                          log_grace_s=5, finished="1") == 1
        assert 30 < await client.ttl(keys.job(first.id)) <= 60
        assert 0 < await client.ttl(keys.log(first.id)) <= 5
        assert await client.hget(keys.job(first.id), "log_in_sql") == "1"
        assert await queue.scripts.locks_and_queues([1]) == [None, -2, 0]
    finally:
        await client.aclose()


def test_the_lua_and_python_keep_the_same_number_of_run_times() -> None:
    # wait.lua trims the list; estimate.py reads as many from SQL to refill it.
    assert f"local DURATIONS_KEPT = {DURATIONS_KEPT}\n" in lua_text("wait")
