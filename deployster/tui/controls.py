"""The operator's controls: each asks first, in a modal that says what will
happen, then acts through ``deployster.control`` and reports the outcome."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.text import Text

from deployster.control import cancel_job, redeploy, redeploy_refusal, release_lock
from deployster.masking import secret_mask
from deployster.models import Job, JobStatus, Project
from deployster.overview import ProjectRow, project_rows

from .format import DASH, ago, commit, duration, short_id, since
from .screens.confirm import ConfirmScreen
from .widgets.status_line import OLD_DATA

if TYPE_CHECKING:
    from .app import DeploysterApp


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


def owner_state(row: ProjectRow) -> Text:
    job = row.running
    if job is None:
        return Text("no live job record: nobody is running it", style="bold red")
    if job.status is not JobStatus.RUNNING:
        return Text(f"not running (job is {job.status.value})", style="bold red")
    if row.stale:
        return Text("marked running, but its heartbeat stopped: the runner is likely gone",
                    style="bold red")
    return Text("still running: its heartbeat is fresh", style="bold yellow")


def ask_unlock(app: DeploysterApp, row: ProjectRow) -> None:
    """Read the lock again, then ask: the holder, TTL and heartbeat in the modal
    are what they are now, not what the last fetch saw (no fetch runs while a
    modal such as ``?`` is open, so that can be many seconds old)."""
    if app.live:
        app.run_worker(_ask_unlock(app, row), group="control")
    else:
        _ask_unlock_now(app, row, app.since_fetch())


async def _ask_unlock(app: DeploysterApp, row: ProjectRow) -> None:
    since_fetch = app.since_fetch()
    try:
        rows = await project_rows(app.core, last={})  # locks and jobs only: no SQL
    except Exception:  # Redis down: the last rows, with a warning saying how old
        pass
    else:
        fresh = next((r for r in rows if r.project.id == row.project.id), None)
        if fresh is not None:
            row, since_fetch = fresh, 0.0
    _ask_unlock_now(app, row, since_fetch)


def _ask_unlock_now(app: DeploysterApp, row: ProjectRow, since_fetch: float) -> None:
    owner = row.lock_owner
    name = row.project.name
    if owner is None:
        app.notify(f"{name} is not locked: nothing to release")
        return
    facts: list[tuple[str, Text | str]] = [
        ("project", f"{name} ({row.project.path})"),
        ("holder", owner),
        ("TTL", ttl_text(row, since_fetch)),
        ("heartbeat", heartbeat_text(row, since_fetch)),
        ("owning job", owner_state(row)),
        ("queued", f"{row.queue_length} job(s) waiting"),
    ]
    warning = None
    if row.running is not None and row.running.status is JobStatus.RUNNING and not row.stale:
        warning = ("The holder is alive and renewing its lock. Releasing it ends that job "
                   "(lock_lost) and lets the next one start.")
    if since_fetch > OLD_DATA:
        down = ", ".join(f"{k} {v}" for k, v in app.health.items() if v != "ok")
        old = (f"These facts are {duration(since_fetch)} old ({down or 'no fresh read'}): "
               "the TTL and heartbeat may have moved since.")
        warning = old if warning is None else f"{old}\n{warning}"
    consequence = (f"y releases the lock only if {short_id(owner)} still holds it "
                   "(compare-and-set: a newer lock is never deleted), records an audit "
                   "event and wakes the queue so the next job starts.")

    def done(confirmed: bool | None) -> None:
        if confirmed:
            app.run_worker(_unlock(app, row.project.id, owner, name), group="control")

    app.push_screen(ConfirmScreen(f"Release {name}'s deploy lock?", facts, consequence,
                                  warning=warning, confirm_label="Release (y)"), done)


async def _unlock(app: DeploysterApp, project_id: int, owner: str, name: str) -> None:
    try:
        released = await release_lock(app.core, project_id, owner, actor=app.actor)
    except Exception as exc:  # shown to the operator, never a crash
        app.report_error(f"unlock {name}", exc)
        return
    if released:
        app.notify(f"released {name}'s lock (was held by {short_id(owner)})")
    else:
        app.notify(f"{name}'s lock was not released: {short_id(owner)} no longer holds it",
                   severity="warning")
    app.request_refresh()


def shown_commands(app: DeploysterApp, job: Job, project: Project) -> str:
    """The job's commands for a modal, secrets masked as in its log (stored
    masked; masked again for rows stored before that)."""
    mask = secret_mask(project, app.core.settings.token)
    return " && ".join(mask.commands(job.commands))


def ask_cancel(app: DeploysterApp, job: Job, project: Project) -> None:
    if job.status.finished:
        app.notify(f"job {short_id(job.id)} has already finished ({job.status.value})",
                   severity="warning")
        return
    if job.status is JobStatus.RUNNING:
        consequence = ("y stops the running job: its process group gets SIGTERM, then "
                       "SIGKILL after the grace period; it ends failed (cancelled) and the "
                       "next queued job starts.")
        when = ("running for", duration(since(job.started_at)))
    else:
        consequence = "y removes the job from the queue; it ends failed (cancelled)."
        when = ("waiting for", duration(since(job.queued_at)))
    facts: list[tuple[str, Text | str]] = [
        ("job", job.id),
        ("project", job.project),
        ("status", job.status.value),
        ("commit", f"{commit(job)} on {job.ref_name}"),
        when,
        ("commands", shown_commands(app, job, project)),
    ]

    def done(confirmed: bool | None) -> None:
        if confirmed:
            app.run_worker(_cancel(app, job.id), group="control")

    app.push_screen(ConfirmScreen(f"Cancel job {short_id(job.id)}?", facts, consequence,
                                  confirm_label="Cancel job (y)"), done)


async def _cancel(app: DeploysterApp, job_id: str) -> None:
    try:
        job = await cancel_job(app.core, job_id, actor=app.actor, wait=0)
    except Exception as exc:
        app.report_error(f"cancel {short_id(job_id)}", exc)
        return
    state = "cancelled" if job.status.finished else "cancel requested"
    app.notify(f"job {short_id(job_id)}: {state}")
    app.request_refresh()


def ask_redeploy(app: DeploysterApp, job: Job, project: Project) -> None:
    if (refused := redeploy_refusal(job)) is not None:  # nothing to confirm
        app.report_error(f"redeploy {short_id(job.id)}", refused)
        return
    facts: list[tuple[str, Text | str]] = [
        ("from job", job.id),
        ("project", job.project),
        ("commit", f"{commit(job)} on {job.ref_name}"),
        ("ran", ago(job.started_at or job.queued_at)),
        ("commands", shown_commands(app, job, project) or DASH),
    ]
    consequence = ("y queues a new job with the same commands, commit and ref; it starts "
                   "when the project's lock is free.")

    def done(confirmed: bool | None) -> None:
        if confirmed:
            app.run_worker(_redeploy(app, job.id), group="control")

    app.push_screen(ConfirmScreen(f"Redeploy {job.project} at {commit(job)}?", facts,
                                  consequence, confirm_label="Redeploy (y)"), done)


async def _redeploy(app: DeploysterApp, job_id: str) -> None:
    try:
        new_id = await redeploy(app.core, job_id, actor=app.actor)
    except Exception as exc:
        app.report_error(f"redeploy {short_id(job_id)}", exc)
        return
    app.notify(f"queued job {short_id(new_id)} (redeploy of {short_id(job_id)})")
    app.request_refresh()
