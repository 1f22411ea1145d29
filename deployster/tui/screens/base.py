"""What the projects and project screens share: the reader and the overview they
are given, and the operator's controls (unlock, cancel, redeploy, rollback).

Each control asks first, in a modal that says what will happen, then acts
through ``deployster.control`` and reports the outcome. Its work runs in an app
worker (``self.app.run_worker``), not the screen's: leaving the screen while a
cancel is on its way must not cut it short or lose its outcome.
"""

from __future__ import annotations

from rich.text import Text
from textual.screen import Screen

from deployster.control import (
    cancel_job,
    completed_jobs,
    redeploy,
    redeploy_refusal,
    release_lock,
    rollback,
    rollback_target,
)
from deployster.errors import Conflict
from deployster.fleet import Node
from deployster.masking import secret_mask
from deployster.models import Job, JobStatus, Project
from deployster.overview import ProjectRow
from deployster.queue import EnqueueResult

from ..format import (
    DASH,
    ago,
    commit,
    deployed_text,
    duration,
    heartbeat_text,
    owner_state,
    run_time,
    short_id,
    since,
    ttl_text,
)
from ..messages import RefreshRequested
from ..reader import Overview, Reader
from ..widgets.status_line import OLD_DATA
from .confirm import ConfirmScreen


class CoreScreen(Screen[None]):
    """A screen over the overview. It shows ``overview`` (given, then each
    ``DataRefreshed``'s: subclasses' handlers store it) and reads through
    ``reader`` alone."""

    def __init__(self, reader: Reader, overview: Overview) -> None:
        super().__init__()
        self.reader = reader
        self.overview = overview

    def since_fetch(self) -> float:
        return self.reader.since(self.overview)

    def request_refresh(self) -> None:
        """Ask the app for a fetch soon (coalesced: many requests, one fetch)."""
        self.app.post_message(RefreshRequested())

    def next_start(self, what: str, usual: str = "", project: Project | None = None) -> str:
        """When ``what`` (the next job, a job queued now) starts, for a
        modal: ``usual``, or, with no deploy server alive, not until one runs
        (a modal must not promise a start that nothing will make); nor while
        ``project``'s node is down (only its node runs its jobs)."""
        if self.overview.no_runner:
            return (f"No deploy server (runner) is alive for this data, so {what} starts "
                    "only once one runs (deployster serve).")
        down = self.node_down(project) if project is not None else None
        if down is not None:
            return (f"Node {down.name} is down (no heartbeat for {duration(self.node_age(down))})"
                    f", so {what} starts only once it is back: a project's jobs run on its "
                    "node only.")
        return usual

    # ------------------------------------------------------------ a fleet
    def node_age(self, node: Node) -> float:
        """Seconds since ``node``'s last heartbeat, by the reader's clock."""
        return node.age(int(self.reader.wall_clock().timestamp() * 1000))

    def node_down(self, project: Project) -> Node | None:
        """``project``'s node when it announced itself and is down now
        (``fleet.Node.up``); None when it is up or not known."""
        node = self.overview.node(project.node)
        return node if node is not None and not node.up(
            int(self.reader.wall_clock().timestamp() * 1000)) else None

    def node_facts(self, project: Project) -> list[tuple[str, Text | str]]:
        """A modal's line naming the node that acts, when there are several
        (``Overview.fleet``); none with one node."""
        if not self.overview.fleet:
            return []
        down = self.node_down(project)
        return [("node", project.node or DASH) if down is None else
                ("node", Text.assemble(project.node, (f" down {duration(self.node_age(down))}",
                                                      "bold red")))]

    def report_error(self, what: str, exc: BaseException) -> None:
        message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        # An error message may quote a request's text: never read as markup.
        self.app.notify(f"{what}: {message}", severity="error", timeout=8, markup=False)

    # ------------------------------------------------------------ unlock
    def ask_unlock(self, row: ProjectRow) -> None:
        """Read the lock again, then ask: the holder, TTL and heartbeat in the
        modal are what they are now, not what the last fetch saw (no fetch runs
        while a modal such as ``?`` is open, so that can be many seconds old)."""
        if self.reader.live:
            self.app.run_worker(self._ask_unlock(row), group="control")
        else:
            self._ask_unlock_now(row, self.since_fetch())

    async def _ask_unlock(self, row: ProjectRow) -> None:
        since_fetch = self.since_fetch()
        try:  # locks and jobs only: no SQL
            rows = await self.reader.project_rows(last={})
        except Exception:  # Redis down: the last rows, with a warning saying how old
            pass
        else:
            fresh = next((r for r in rows if r.project.id == row.project.id), None)
            if fresh is not None:
                row, since_fetch = fresh, 0.0
        self._ask_unlock_now(row, since_fetch)

    def _ask_unlock_now(self, row: ProjectRow, since_fetch: float) -> None:
        owner = row.lock_owner
        name = row.project.name
        if owner is None:
            self.app.notify(f"{name} is not locked: nothing to release")
            return
        facts: list[tuple[str, Text | str]] = [
            ("project", f"{name} ({row.project.path})"),
            *self.node_facts(row.project),
            ("holder", owner),
            ("TTL", ttl_text(row, since_fetch)),
            ("heartbeat", heartbeat_text(row, since_fetch)),
            ("owning job", owner_state(row, gone=self.overview.runner_gone(row.running))),
            ("queued", f"{row.queue_length} job(s) waiting"),
        ]
        warning = None
        if row.running is not None and row.running.status is JobStatus.RUNNING \
                and not row.stale and not self.overview.runner_gone(row.running):
            warning = ("The holder is alive and renewing its lock. Releasing it ends that "
                       "job (lock_lost) and lets the next one start.")
        if since_fetch > OLD_DATA:
            down = ", ".join(f"{k} {v}" for k, v in self.overview.health.items() if v != "ok")
            old = (f"These facts are {duration(since_fetch)} old ({down or 'no fresh read'}): "
                   "the TTL and heartbeat may have moved since.")
            warning = old if warning is None else f"{old}\n{warning}"
        consequence = (f"y releases the lock only if {short_id(owner)} still holds it "
                       "(compare-and-set: a newer lock is never deleted), records an audit "
                       "event and wakes the queue. "
                       + self.next_start("the next queued job", "The next queued job then "
                                                                "starts.", row.project))

        def done(confirmed: bool | None) -> None:
            if confirmed:
                self.app.run_worker(self._unlock(row.project.id, owner, name), group="control")

        self.app.push_screen(ConfirmScreen(f"Release {name}'s deploy lock?", facts, consequence,
                                           warning=warning, confirm_label="Release (y)"), done)

    async def _unlock(self, project_id: int, owner: str, name: str) -> None:
        try:
            released = await release_lock(self.reader.core, project_id, owner,
                                          actor=self.reader.actor)
        except Exception as exc:  # shown to the operator, never a crash
            self.report_error(f"unlock {name}", exc)
            return
        if released:
            self.app.notify(f"released {name}'s lock (was held by {short_id(owner)})")
        else:
            self.app.notify(f"{name}'s lock was not released: {short_id(owner)} no longer "
                            "holds it", severity="warning")
        self.request_refresh()

    # ------------------------------------------------------------ cancel
    def shown_commands(self, job: Job, project: Project) -> str:
        """The job's commands for a modal, secrets masked as in its log (stored
        masked; masked again for rows stored before that)."""
        # Demo data has no core: the project's own secrets only.
        token = self.reader.core.admin_token.current() if self.reader.live else None
        mask = secret_mask(project, token)
        return " && ".join(mask.commands(job.commands))

    def ask_cancel(self, job: Job, project: Project) -> None:
        if job.status.finished:
            self.app.notify(f"job {short_id(job.id)} has already finished "
                            f"({job.status.value})", severity="warning")
            return
        if job.status is JobStatus.RUNNING and self.overview.runner_gone(job):
            here = self.reader.node
            if job.node and here is not None and job.node != here:
                # recovery.end_orphan: another node's processes are its own to stop.
                ends = (f"its runner is gone. Its processes run on node {job.node}'s host, "
                        "which stops them when it is back; the lock is released. ")
            else:
                ends = ("its runner is gone, so its processes on this machine are stopped "
                        "(SIGTERM, then SIGKILL after the grace period) and the lock "
                        "released. ")
            consequence = ("y ends the job here, failed (cancelled): " + ends
                           + self.next_start("the next queued job",
                                             "The next queued job then starts.", project))
            when = ("ran for", f"{duration(run_time(job, gone=True))} (until its runner "
                               "was last seen)")
        elif job.status is JobStatus.RUNNING:
            consequence = ("y stops the running job: its process group gets SIGTERM, then "
                           "SIGKILL after the grace period; it ends failed (cancelled). "
                           + self.next_start("the next queued job",
                                             "The next queued job then starts.", project))
            when = ("running for", duration(since(job.started_at)))
        else:
            consequence = "y removes the job from the queue; it ends failed (cancelled)."
            when = ("waiting for", duration(since(job.queued_at)))
        facts: list[tuple[str, Text | str]] = [
            ("job", job.id),
            ("project", job.project),
            *self.node_facts(project),
            ("status", job.status.value),
            ("commit", f"{commit(job)} on {job.ref_name}"),
            when,
            ("commands", self.shown_commands(job, project)),
        ]

        def done(confirmed: bool | None) -> None:
            if confirmed:
                self.app.run_worker(self._cancel(job.id), group="control")

        self.app.push_screen(ConfirmScreen(f"Cancel job {short_id(job.id)}?", facts,
                                           consequence, confirm_label="Cancel job (y)"), done)

    async def _cancel(self, job_id: str) -> None:
        try:
            job = await cancel_job(self.reader.core, job_id, actor=self.reader.actor, wait=0)
        except Exception as exc:
            self.report_error(f"cancel {short_id(job_id)}", exc)
            return
        state = "cancelled" if job.status.finished else "cancel requested"
        self.app.notify(f"job {short_id(job_id)}: {state}")
        self.request_refresh()

    # ---------------------------------------------------------- redeploy
    def ask_redeploy(self, job: Job, project: Project) -> None:
        if (refused := redeploy_refusal(job)) is not None:  # nothing to confirm
            self.report_error(f"redeploy {short_id(job.id)}", refused)
            return
        facts: list[tuple[str, Text | str]] = [
            ("from job", job.id),
            ("project", job.project),
            *self.node_facts(project),
            ("commit", f"{commit(job)} on {job.ref_name}"),
            ("ran", ago(job.started_at)) if job.started_at else
            ("queued", f"{ago(job.queued_at)}, never started"),
            ("commands", self.shown_commands(job, project) or DASH),
        ]
        where = f", to run on node {project.node} (the project's)" if self.overview.fleet \
            else ""
        consequence = (f"y queues a new job with the same commands, commit and ref{where}. "
                       + self.next_start("it", "It starts when the project's lock is "
                                               "free.", project))

        def done(confirmed: bool | None) -> None:
            if confirmed:
                self.app.run_worker(self._redeploy(job.id), group="control")

        self.app.push_screen(ConfirmScreen(f"Redeploy {job.project} at {commit(job)}?", facts,
                                           consequence, confirm_label="Redeploy (y)"), done)

    async def _redeploy(self, job_id: str) -> None:
        try:
            result, job = await redeploy(self.reader.core, job_id, actor=self.reader.actor)
        except Exception as exc:
            self.report_error(f"redeploy {short_id(job_id)}", exc)
            return
        if not self.report_duplicate(result, job):
            self.app.notify(f"queued job {short_id(result.job_id)} "
                            f"(redeploy of {short_id(job_id)})")
        self.request_refresh()

    def report_duplicate(self, result: EnqueueResult, job: Job) -> bool:
        """Whether the queue answered with a job already waiting (the same
        commit, ref and commands as ``job``'s): then nothing new was queued,
        and the operator is told which job will do it."""
        if not result.duplicate:
            return False
        self.app.notify(f"nothing new queued: job {result.job_id}, already waiting, deploys "
                        f"the same commands at {commit(job)} on {job.ref_name}",
                        severity="warning", markup=False)
        return True

    # ---------------------------------------------------------- rollback
    def ask_rollback(self, project: Project, row: ProjectRow | None, *,
                     known: list[Job] | None = None) -> None:
        """Ask before ``control.rollback``: the modal names the commit deployed
        now and the one it goes back to, read at the key press (the complete
        jobs, as the rollback itself reads them). ``known``: the jobs to choose
        from when the reader is not live (demo data)."""
        if self.reader.live:
            self.app.run_worker(self._ask_rollback(project, row), group="control")
        else:
            complete = [j for j in known or [] if j.status is JobStatus.COMPLETE]
            self._ask_rollback_now(project, row, complete)

    async def _ask_rollback(self, project: Project, row: ProjectRow | None) -> None:
        try:  # as control.rollback reads them (those not yet copied to SQL too)
            complete = await completed_jobs(self.reader.core, project.id)
        except Exception as exc:  # Redis or the database down: said, never a crash
            self.report_error(f"roll back {project.name}", exc)
            return
        self._ask_rollback_now(project, row, complete)

    def _ask_rollback_now(self, project: Project, row: ProjectRow | None,
                          complete: list[Job]) -> None:
        name = project.name
        try:  # the choice control.rollback makes
            current, target = rollback_target(project, complete)
        except Conflict as exc:  # nothing to roll back to: nothing to confirm
            self.report_error(f"roll back {name}", exc)
            return
        if (refused := redeploy_refusal(target)) is not None:
            self.report_error(f"roll back {name}", refused)
            return
        facts: list[tuple[str, Text | str]] = [
            ("project", f"{name} ({project.path})"),
            *self.node_facts(project),
            ("deployed now", deployed_text(current)),
            ("", f"by job {current.id}"),
            ("back to", deployed_text(target)),
            ("", f"by job {target.id}"),
            ("commands", self.shown_commands(target, project) or DASH),
        ]
        running = row.running if row and row.running and \
            row.running.status is JobStatus.RUNNING else None
        if row is not None and (running or row.queue_length):
            facts.append(("ahead of it", f"{1 if running else 0} running, "
                                         f"{row.queue_length} queued: those run first"))
        warnings = []
        source = project.steps.source
        if source == "none":
            warnings.append(f"{name}'s source is none: no commit is checked out, the commands "
                            "run on the files as they are now.")
        if target.ref_name != current.ref_name:
            warnings.append(f"{commit(target)} was deployed from {target.ref_name or DASH}, "
                            f"not {current.ref_name or DASH}.")
        checkout = {"git": ", checked out exactly",
                    "auto": ", checked out exactly if the directory is a git work tree"
                    }.get(source, "")
        consequence = " ".join(filter(None, [
            f"y queues a new job that redeploys job {short_id(target.id)}: its commands and "
            f"ref at commit {commit(target)}{checkout}. It goes through the project's queue "
            "and lock like any deploy.", self.next_start("it", project=project)]))

        def done(confirmed: bool | None) -> None:
            if confirmed:
                self.app.run_worker(self._rollback(project, target), group="control")

        self.app.push_screen(ConfirmScreen(
            f"Roll {name} back from {commit(current)} to {commit(target)}?", facts,
            consequence, warning="\n".join(warnings) or None,
            confirm_label="Roll back (y)"), done)

    async def _rollback(self, project: Project, target: Job) -> None:
        """Roll back to the job the operator confirmed (``to``), not to
        whatever is newest by now: what was named is what runs."""
        name = project.name
        try:
            result, target, _ = await rollback(self.reader.core, project, to=target.id,
                                               actor=self.reader.actor)
        except Exception as exc:
            self.report_error(f"roll back {name}", exc)
            return
        if not self.report_duplicate(result, target):
            self.app.notify(f"queued job {result.job_id}: {name} back to {commit(target)} "
                            f"(redeploy of {short_id(target.id)})", markup=False)
        self.request_refresh()
