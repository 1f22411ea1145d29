"""Text formatting shared by the dashboard's screens: durations, ages, a job's
status, a lock's TTL and heartbeat (plain or rich text; no Textual here)."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import datetime, tzinfo
from functools import lru_cache
from pathlib import Path

from rich.text import Text

from deployster.clock import parse_iso, utcnow
from deployster.models import Job, JobStatus
from deployster.overview import ProjectRow
from deployster.settings import Settings

DASH = "—"

_clock: Callable[[], datetime] = utcnow
_zone: tzinfo | None = None  # times of day are shown in this zone (None: the local one)


def set_clock(clock: Callable[[], datetime] | None) -> None:
    """Fix "now" for ages and elapsed times, and the zone for times of day, to
    the clock's (snapshots, screenshots); None resets."""
    global _clock, _zone
    _clock = clock or utcnow
    _zone = clock().tzinfo if clock else None


def now() -> datetime:
    return _clock()


@lru_cache(maxsize=8192)
def _parse(value: str) -> datetime | None:
    return parse_iso(value)


def tilde(path: str | Path) -> str:
    """A path as a shell user types it: the home directory as ``~``."""
    text, home = str(path), os.path.expanduser("~")
    if home != "/" and text.startswith(home + os.sep):
        return "~" + text[len(home):]
    return text


def data_source(settings: Settings) -> str:
    """Which data the dashboard shows: the data dir when both the Redis and
    the database are its own (embedded Redis, SQLite), else the Redis and
    database URLs (passwords masked); the key namespace when there is one."""
    default_db = not settings.database_url
    if settings.embedded_redis and default_db:
        text = f"data {tilde(settings.data_dir)} (embedded Redis, SQLite)"
    else:
        redis = "embedded" if settings.embedded_redis else settings.redis_shown
        db = f"SQLite in {tilde(settings.data_dir)}" if default_db else settings.database_shown
        text = f"redis {redis} · db {db}"
    return f"{text} · namespace {settings.namespace}" if settings.namespace else text


def short_id(job_id: str | None) -> str:
    """ULIDs share their time prefix; the head and tail tell jobs apart."""
    if not job_id:
        return DASH
    return job_id if len(job_id) <= 10 else f"{job_id[:4]}…{job_id[-4:]}"


def duration(seconds: float | None) -> str:
    """A compact human duration: 0.4s, 41s, 9m 41s, 2h 05m, 3d 04h."""
    if seconds is None:
        return DASH
    if seconds < 0:
        seconds = 0
    if seconds < 10:
        return f"{seconds:.1f}s"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600:02d}h"


def clock_duration(seconds: float | None) -> str:
    """Elapsed time as a clock: 0:19, 12:04, 1:02:03."""
    if seconds is None:
        return DASH
    s = max(0, int(seconds))
    if s < 3600:
        return f"{s // 60}:{s % 60:02d}"
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def ago(iso: str | None) -> str:
    when = _parse(iso) if iso else None
    if when is None:
        return DASH
    return duration((now() - when).total_seconds()) + " ago"


def local_time(iso: str | None) -> str:
    """A time of day for a table: 03-14 12:04 in the operator's zone."""
    when = _parse(iso) if iso else None
    return DASH if when is None else f"{when.astimezone(_zone):%m-%d %H:%M}"


def since(iso: str | None) -> float | None:
    when = _parse(iso) if iso else None
    return None if when is None else (now() - when).total_seconds()


def run_time(job: Job, *, gone: bool = False) -> float | None:
    """Seconds a running job has run; with ``gone`` (its runner is not alive)
    until the runner's last heartbeat, when it stopped being run: that clock
    must not go on. None when it never started (or never beat)."""
    if not gone:
        return since(job.started_at)
    start = _parse(job.started_at) if job.started_at else None
    try:
        beat = float(job.extra.get("heartbeat") or "")
    except ValueError:
        return None
    return None if start is None else max(0.0, beat - start.timestamp())


def job_duration(job: Job) -> float | None:
    start = _parse(job.started_at) if job.started_at else None
    if start is None:
        return None
    end = _parse(job.finished_at) if job.finished_at else now()
    return None if end is None else (end - start).total_seconds()


GLYPH = {
    JobStatus.COMPLETE: "✔",
    JobStatus.FAILED: "✘",
    JobStatus.RUNNING: "▶",
    JobStatus.QUEUED: "…",
}


def status_text(job: Job) -> str:
    reason = f" {job.reason}" if job.reason else ""
    return f"{GLYPH.get(job.status, '?')} {job.status.value}{reason}"


def outcome(job: Job) -> str:
    """A history row's status: the reason says more than "failed" does."""
    return f"{GLYPH.get(job.status, '?')} {job.reason or job.status.value}"


def commit(job: Job) -> str:
    """The job's commit, short: the one it checked out once it has (a redeploy
    deploys exactly that one), else the one asked for: as
    ``control.deployed_commit``, which this module (text only) does not import."""
    return (job.deployed_sha or job.commit_hash or DASH)[:7]


REDEPLOY = "↺"  # marks a redeploy or rollback (a job with ``redeploy_of``)


def commit_cell(job: Job) -> Text:
    """A table's commit cell: ``commit``, marked ``↺`` for a redeploy. Text,
    never markup: a commit is a request's text."""
    if job.redeploy_of:
        return Text.assemble((REDEPLOY, "cyan"), " ", commit(job))
    return Text(commit(job))


def deployed_text(job: Job) -> str:
    """What a complete job deployed and when, for a line of facts: "9c8d7e6 on
    main, 4m 12s ago (03-14 12:00)"."""
    when = job.finished_at or job.started_at
    return f"{commit(job)} on {job.ref_name or DASH}, {ago(when)} ({local_time(when)})"


# ----------------------------------------------------------- a project's lock
def ttl_left(row: ProjectRow, since_fetch: float) -> float | None:
    """The lock's TTL now: the fetched TTL counted down locally every second."""
    if row.lock_ttl_ms is None or row.lock_ttl_ms < 0:
        return None
    return max(0.0, row.lock_ttl_ms / 1000 - since_fetch)


def ttl_text(row: ProjectRow, since_fetch: float) -> str:
    if row.lock_owner is None:
        return DASH
    if row.lock_ttl_ms is not None and row.lock_ttl_ms < 0:
        return "no expiry"
    left = ttl_left(row, since_fetch)
    return DASH if left is None else duration(int(left))


def heartbeat_text(row: ProjectRow, since_fetch: float) -> Text:
    if row.lock_owner is None:
        return Text(DASH)
    if row.heartbeat_age is None:
        text = Text("none")
    else:
        text = Text(duration(row.heartbeat_age + since_fetch))
    if row.stale:
        text = Text.assemble(("STALE", "bold reverse red"), " ", text)
    return text


def owner_state(row: ProjectRow, *, gone: bool = False) -> Text:
    """Whether the job holding the lock still runs: the fact to know before
    releasing it. ``gone``: its runner is known not to be alive."""
    job = row.running
    if job is None:
        return Text("no live job record: nobody is running it", style="bold red")
    if job.status is not JobStatus.RUNNING:
        return Text(f"not running (job is {job.status.value})", style="bold red")
    if gone:
        return Text("running, but its runner is gone: nobody runs it",
                    style="bold red")
    if row.stale:
        return Text("marked running, but its heartbeat stopped: the runner is likely gone",
                    style="bold red")
    return Text("still running: its heartbeat is fresh", style="bold yellow")
