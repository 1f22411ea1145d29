"""The notifier: job events from the outbox to their targets, at least once.

**The outbox.** A queue script that changes a job's state writes the event in
the same step (``redis_scripts/outbox.lua``), to the stream ``Keys.outbox``,
for projects whose targets want it (``routes``). Nothing on a job's path
waits on the network: the script's cost is one HMGET and, when wanted, one
XADD; the rest happens here, in a background task of each server.

**Expansion.** The notifier reads the stream (``XREAD``, blocking a second at
most) and turns each event into its deliveries, one per target that wants it
(and one for the project's GitHub link), with the body each will send built
now: ``notify_expand.lua`` stores them and deletes the event from the stream
in one step, and only if the event was still there, so an event is expanded
once even when two servers read it.

**Lanes.** Each delivery joins a lane, one per target and job (``<target
id>:<job id>``), a Redis list of delivery ids; ``Keys.notify_due`` holds each
lane's next attempt time. Only a lane's head is sent: a job's ``complete``
never overtakes its ``started`` still being retried (GitHub needs the
deployment before its statuses), while other jobs and other targets go on.

**Claims.** ``notify_claim.lua`` takes the due lanes for a lease (the attempt
timeout plus ``LEASE_MARGIN``): several servers on one Redis never try one
delivery at once, and one killed mid-attempt (``kill -9``) leaves the lane to
be taken again when the lease runs out. ``notify_settle.lua`` then ends the
attempt: the head leaves its lane (sent, or given up) and the next is due at
once, or it is tried again later.

**Retries.** A failed attempt (a network error, a timeout, a 5xx, 408, 425,
429, or a 403 that says it is a rate limit) is tried again after 1, 2, 4 …
seconds (``BACKOFF_CAP`` at most, with jitter) until ``DEPLOYSTER_NOTIFY_WINDOW``
has passed since the first attempt, then given up. Any other 4xx is given up
at once: asking again would get the same answer. A target removed from its
project meanwhile drops its deliveries.

**The audit log.** Every attempt is an audit event in the SQL history
(``audit_events``, actor ``notifier``): ``notify.sent``, ``notify.failed``
(will be retried), ``notify.gave_up``, ``notify.dropped``, with the target
(its kind and URL as ``NotifyTarget.shown_url`` shows it), the event, the
attempt's number, the HTTP status or the error and how long it took, written
in batches; ``deployster notifications`` lists them. Each is a log line too
(logger ``deployster.notify``). A target that fails never changes a job.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from dataclasses import dataclass
from typing import Any, cast

from .. import store
from ..clock import iso, now_ms
from ..masking import secret_mask
from ..metrics import notification_counter
from ..models import NOTIFY_EVENTS, Job, NotifyTarget, Project
from ..outages import classify, describe
from ..redis_conn import REDIS_DOWN
from ..service import Deployster
from . import github, http, routes
from .messages import SIGNATURE_HEADER, TAIL_CHARS, Facts, body_bytes, signature, tail
from .targets import GITHUB_EVENTS, default_targets, effective_targets, github_target_id

log = logging.getLogger("deployster.notify")

READ_COUNT = 100  # outbox events read at once
READ_BLOCK_MS = 1000  # the longest a read waits for an event
# Seconds the reader lets pass between hearing of events and expanding them. An
# event is written in the step that ends a job and hands its lock on: expanded
# at once, it competed for this event loop with the launch of the next job
# (bench/handoff.py --notify); a moment later, the launch is done.
SETTLE_DELAY = 0.02
MAX_IN_FLIGHT = 32  # attempts at once, per server
IDLE_POLL = 0.5  # seconds between looks at the due lanes when nothing woke the sender
LEASE_MARGIN = 5.0  # seconds a lease outlives the attempt timeout
BACKOFF_BASE = 1.0
BACKOFF_CAP = 300.0
ROUTES_EVERY = 2.0  # seconds between checks that the routes follow the projects
ROUTES_FULL_EVERY = 60.0  # and a full rewrite this often, whatever the version says
AUDIT_FLUSH = 0.5  # seconds between writes of the attempts to the audit log
AUDIT_BUFFER = 10_000  # attempts kept for the audit log while the database is out
STOP_GRACE = 2.0  # seconds attempts in flight get at a stop (then: their leases)

_RETRYABLE = frozenset({408, 425, 429})


@dataclass(frozen=True)
class Outcome:
    """How one attempt went: ``ok`` (2xx), else ``permanent`` (no use asking
    again) or to be retried; ``dropped``: nothing left to send it to."""

    ok: bool
    status: int | None = None
    error: str | None = None
    permanent: bool = False
    dropped: bool = False


def judge(response: http.Response) -> Outcome:
    code = response.status
    if 200 <= code < 300:
        return Outcome(True, code)
    rate_limited = code == 403 and (response.headers.get("retry-after") is not None or
                                    response.headers.get("x-ratelimit-remaining") == "0")
    retry = code >= 500 or code in _RETRYABLE or rate_limited
    return Outcome(False, code, f"HTTP {code}", permanent=not retry)


def backoff(tries: int) -> float:
    """Seconds before attempt ``tries + 1``: 1, 2, 4 … ``BACKOFF_CAP``, ±20%."""
    return min(BACKOFF_BASE * 2 ** max(tries - 1, 0), BACKOFF_CAP) * random.uniform(0.8, 1.2)


def lane_of(target_id: str, job_id: str) -> str:
    return f"{target_id}:{job_id}"


class Notifier:
    """Reads the outbox, sends the deliveries; ``start`` and ``stop`` it with
    the dispatcher (``Dispatcher.start``)."""

    def __init__(self, core: Deployster) -> None:
        self.core = core
        settings = core.settings
        self.defaults: tuple[NotifyTarget, ...] = default_targets(
            settings.notify, settings.notify_on, settings.notify_secret)
        self._wake = asyncio.Event()
        self._attempts: set[asyncio.Task[None]] = set()
        self._audit: list[dict[str, Any]] = []
        self._loops: list[asyncio.Task[None]] = []
        self._stopping = False
        self._routes_version: str | None = None
        self._routes_at = -float("inf")
        self.http = http.Client(settings.notify_timeout)  # its session opens at the first send

    @property
    def lease_ms(self) -> int:
        return int((self.core.settings.notify_timeout + LEASE_MARGIN) * 1000)

    # ------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        with contextlib.suppress(Exception):
            await self.sync_routes()  # failing now, the reader's first pass retries
        self._loops = [asyncio.create_task(self._read_loop(), name="notify-read"),
                       asyncio.create_task(self._send_loop(), name="notify-send")]

    async def stop(self) -> None:
        """Stop reading and sending. Attempts in flight get ``STOP_GRACE``
        seconds; one cut short is tried again when its lease runs out."""
        self._stopping = True
        self._wake.set()
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        if self._attempts:
            await asyncio.wait(set(self._attempts), timeout=STOP_GRACE)
        for task in list(self._attempts):
            task.cancel()
        await asyncio.gather(*self._attempts, return_exceptions=True)
        await self.http.close()
        with contextlib.suppress(Exception):
            await self.flush_audit()

    # ----------------------------------------------------------------- routes
    async def sync_routes(self) -> None:
        """Write every project's entry (``routes.sync_all``)."""
        version = cast(str | None, await self.core.redis.get(self.core.keys.projects_version))
        # From SQL, not the registry's cache: a read here must not count as
        # the cache's reload (a project a refused version bump did not
        # announce is looked up in SQL on a miss, but not twice a second).
        projects = await store.select_projects(self.core.db)
        await routes.sync_all(self.core.redis, self.core.keys, projects, self.defaults)
        self._routes_version = version
        self._routes_at = time.monotonic()

    async def _routes_when_due(self) -> None:
        now = time.monotonic()
        if now - self._routes_at < ROUTES_EVERY:
            return
        version = cast(str | None, await self.core.redis.get(self.core.keys.projects_version))
        if version != self._routes_version or now - self._routes_at >= ROUTES_FULL_EVERY:
            await self.sync_routes()
        else:
            self._routes_at = now

    # ------------------------------------------------------------- expansion
    async def _read_loop(self) -> None:
        cursor = "0-0"  # from the start: every event still in the stream is unexpanded
        failing = False
        while not self._stopping:
            try:
                await self._routes_when_due()
                replies = cast(list[tuple[str, list[tuple[str, dict[str, str]]]]],
                               await self.core.redis.xread({self.core.keys.outbox: cursor},
                                                           count=READ_COUNT,
                                                           block=READ_BLOCK_MS))
                if replies and not self._stopping:
                    await asyncio.sleep(SETTLE_DELAY)
                for _, entries in replies or ():
                    for entry_id, fields in entries:
                        await self._expand_or_drop(entry_id, fields)
                        cursor = entry_id
                if failing:
                    log.warning("notifications: reading the outbox again")
                failing = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not failing:
                    self._log_failure("notifications: cannot read the outbox", exc)
                failing = True
                cursor = "0-0"  # an event left unexpanded is read again
                await asyncio.sleep(1.0)

    async def _expand_or_drop(self, entry_id: str, fields: dict[str, str]) -> None:
        """``expand``; an event it fails on for any reason but an outage (a
        bug) is logged and deleted: one bad event must not hold up the rest."""
        try:
            await self.expand(entry_id, fields)
        except Exception as exc:
            if classify(exc) is not None:
                raise  # the reader waits, then reads it again
            log.exception("notifications: event %s (%s of job %s) could not be turned into "
                          "deliveries; it is dropped", entry_id, fields.get("e"), fields.get("j"))
            await self.core.scripts.notify_expand(entry=entry_id, now_ms=now_ms(), deliveries=[])

    async def expand(self, entry_id: str, fields: dict[str, str]) -> int:
        """Turn one outbox event into its deliveries (``notify_expand.lua``);
        returns how many were stored (0 when another notifier expanded it
        first). An event whose project or job is gone, or that no
        target wants any more, is deleted with none."""
        event, job_id = fields.get("e", ""), fields.get("j", "")
        project_id = int(fields.get("p") or 0)
        at = int(fields.get("t") or now_ms())
        deliveries: list[tuple[str, str, str]] = []
        project = await self.core.projects.get(project_id) if project_id else None
        if project is not None and event in NOTIFY_EVENTS:
            targets = [t for t in effective_targets(project, self.defaults)
                       if event in t.events]
            to_github = project.github_repo is not None and event in GITHUB_EVENTS
            job = await self.core.job(job_id) if targets or to_github else None
            if job is not None:
                facts = await self._facts(event, job, project, at, fields.get("a"))
                base = {"project": str(project.id), "job": job.id, "event": event,
                        "at": str(at), "tries": "0"}
                for n, target in enumerate(targets):
                    deliveries.append((lane_of(target.id, job.id), f"{entry_id}.{n}", json.dumps(
                        {**base, "kind": target.kind, "target": target.id,
                         "body": body_bytes(target.kind, facts)})))
                if to_github:
                    assert project.github_repo is not None
                    target_id = github_target_id(project.github_repo)
                    deliveries.append((lane_of(target_id, job.id), f"{entry_id}.gh", json.dumps(
                        {**base, "kind": "github", "target": target_id,
                         "body": json.dumps(github.request_spec(facts))})))
            elif targets or to_github:
                log.warning("notifications: job %s of event %s is gone; nothing sent",
                            job_id, event)
        stored = await self.core.scripts.notify_expand(entry=entry_id, now_ms=now_ms(),
                                                       deliveries=deliveries)
        if not stored:
            return 0
        if deliveries:
            self._wake.set()
        return len(deliveries)

    async def _facts(self, event: str, job: Job, project: Project, at: int,
                     actor: str | None) -> Facts:
        log_tail = ""
        if event not in ("queued", "started", "lock_released"):
            text = await self._log_tail(job.id)
            log_tail = secret_mask(project, self.core.admin_token.current()).mask(tail(text))
        public = self.core.settings.public_url
        log_url = f"{public.rstrip('/')}/jobs/{job.id}/logs" if public else None
        return Facts(event, job, project.name, at, actor, log_tail, log_url)

    async def _log_tail(self, job_id: str) -> str:
        from ..logstream import read_tail

        text = await read_tail(self.core.redis, self.core.keys, job_id, TAIL_CHARS * 2)
        if text is None:
            text = await store.select_deployment_log_tail(self.core.db, job_id,
                                                          TAIL_CHARS * 2) or ""
        return text

    # -------------------------------------------------------------- sending
    async def _send_loop(self) -> None:
        failing = False
        flushed = time.monotonic()
        while not self._stopping:
            try:
                free = MAX_IN_FLIGHT - len(self._attempts)
                if free > 0:
                    taken = await self.core.scripts.notify_claim(
                        now_ms=now_ms(), lease_ms=self.lease_ms, max=free)
                    for lane, delivery_id, flat in taken:
                        self._launch(lane, delivery_id, dict(zip(flat[::2], flat[1::2],
                                                                 strict=True)))
                if time.monotonic() - flushed >= AUDIT_FLUSH:
                    flushed = time.monotonic()
                    await self.flush_audit()
                if failing:
                    log.warning("notifications: sending again")
                failing = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not failing:
                    self._log_failure("notifications: cannot take deliveries", exc)
                failing = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), IDLE_POLL)
            self._wake.clear()

    def _launch(self, lane: str, delivery_id: str, fields: dict[str, str]) -> None:
        task = asyncio.create_task(self._attempt(lane, delivery_id, fields),
                                   name=f"notify:{delivery_id}")
        self._attempts.add(task)

        def done(task: asyncio.Task[None]) -> None:
            self._attempts.discard(task)
            self._wake.set()  # a slot is free, and the lane's next may be due

        task.add_done_callback(done)

    async def _attempt(self, lane: str, delivery_id: str, fields: dict[str, str]) -> None:
        began = time.monotonic()
        shown = fields.get("kind", "?")
        try:
            target, outcome = await self._deliver(delivery_id, fields)
            shown = target or shown
        except http.HttpError as exc:
            outcome = Outcome(False, error=str(exc))
        except TimeoutError:
            outcome = Outcome(False, error=f"no answer in {self.core.settings.notify_timeout:g}s")
        except Exception as exc:  # never let one delivery take the sender down
            outcome = Outcome(False, error=describe(exc) if classify(exc) else
                              f"{type(exc).__name__}: {exc}")
        ms = round((time.monotonic() - began) * 1000, 1)
        tries = int(fields.get("tries") or 0) + 1
        now = now_ms()
        first = int(fields.get("first") or now)
        window_over = now - first >= self.core.settings.notify_window * 1000
        if outcome.ok:
            action, next_ms = "notify.sent", ""
        elif outcome.dropped:
            action, next_ms = "notify.dropped", ""
        elif outcome.permanent or window_over:
            action, next_ms = "notify.gave_up", ""
        else:
            action = "notify.failed"
            next_ms = str(now + int(backoff(tries) * 1000))
        # GET /metrics counts the attempt in the settle's step (a target
        # removed meanwhile is no delivery that failed).
        counted = "" if outcome.dropped else notification_counter(
            fields.get("kind", "?"), delivered=outcome.ok)
        try:
            await self.core.scripts.notify_settle(lane=lane, delivery=delivery_id,
                                                  next_ms=next_ms, now_ms=now, counted=counted)
        except REDIS_DOWN as exc:  # its lease runs out, and it is tried again then
            log.warning("notifications: could not record delivery %s (%s)", delivery_id,
                        describe(exc))
        detail: dict[str, Any] = {"target": shown, "event": fields.get("event"),
                                  "delivery": delivery_id, "attempt": tries, "ms": ms}
        if outcome.status is not None:
            detail["status"] = outcome.status
        if outcome.error:
            detail["error"] = outcome.error
        if next_ms:
            detail["retry_in_s"] = round((int(next_ms) - now) / 1000, 1)
        self._record(action, fields, detail)

    async def _deliver(self, delivery_id: str,
                       fields: dict[str, str]) -> tuple[str | None, Outcome]:
        """Send one delivery; returns (the target as shown, the outcome)."""
        settings = self.core.settings
        project = await self.core.projects.get(int(fields["project"]))
        kind = fields["kind"]
        async with asyncio.timeout(settings.notify_timeout):
            if kind == "github":
                repo = project.github_repo if project is not None else None
                if repo is None or github_target_id(repo) != fields["target"]:
                    return None, Outcome(False, error="the project's GitHub repository "
                                                      "changed or was removed", dropped=True)
                shown = f"github {repo}"
                token = project.github_token if project is not None and \
                    project.github_token else settings.github_token
                if not token:
                    return shown, Outcome(False, error="no GitHub token: set "
                                          "DEPLOYSTER_GITHUB_TOKEN or --github-token-file",
                                          permanent=True)
                response = await github.send(
                    self.http, self.core.redis, self.core.keys, api_url=settings.github_api_url,
                    repo=repo, token=token, job_id=fields["job"],
                    spec=json.loads(fields["body"]))
                return shown, judge(response)
            targets = effective_targets(project, self.defaults) if project else ()
            target = next((t for t in targets if t.id == fields["target"]), None)
            if target is None:
                return None, Outcome(False, error="the target was removed from the project",
                                     dropped=True)
            body = fields["body"].encode("utf-8")
            headers = {"Content-Type": "application/json",
                       "X-Deployster-Event": fields["event"],
                       "X-Deployster-Delivery": delivery_id}
            if target.secret:
                headers[SIGNATURE_HEADER] = signature(target.secret, body)
            response = await self.http.post(target.url, body, headers)
            return f"{target.kind} {target.shown_url()}", judge(response)

    # ------------------------------------------------------------ the audit log
    def _record(self, action: str, fields: dict[str, str], detail: dict[str, Any]) -> None:
        job_id = fields.get("job")
        text = f"{detail['event']} of job {job_id} to {detail['target']}"
        result = detail.get("status") or detail.get("error") or ""
        if action == "notify.sent":
            log.info("notification sent: %s (%s)", text, result)
        elif action == "notify.failed":
            log.warning("notification failed: %s (%s); retrying in %ss", text, result,
                        detail.get("retry_in_s"))
        else:
            log.warning("notification %s: %s (%s)", action.split(".", 1)[1].replace("_", " "),
                        text, result)
        if len(self._audit) >= AUDIT_BUFFER:
            del self._audit[0]
        self._audit.append({"at": iso(), "actor": "notifier", "action": action,
                            "project_id": int(fields.get("project") or 0) or None,
                            "job_id": job_id, "detail": detail})

    async def flush_audit(self) -> None:
        """Write the attempts recorded since the last flush; kept for the next
        one while the database is out."""
        if not self._audit:
            return
        rows, self._audit = self._audit, []
        try:
            await store.insert_audit_events(self.core.db, rows)
        except Exception:
            self._audit = (rows + self._audit)[-AUDIT_BUFFER:]
            raise

    def _log_failure(self, what: str, exc: BaseException) -> None:
        outage = classify(exc)
        if outage is not None:
            log.warning("%s (%s unavailable: %s); retrying", what, outage.service,
                        describe(exc))
        else:
            log.exception("%s; retrying", what)
