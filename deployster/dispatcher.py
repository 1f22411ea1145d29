"""The dispatcher: starts queued jobs the moment their project's lock is free.

It listens on the events channel (a release or an enqueue from any process
wakes it), claims the next job with the queue's atomic script and runs it in
this event loop. Finishing a job releases the lock and claims the next one in
the same script, so a hand-off costs one Redis round trip. A slow sweep covers
lost notifications, locks that expired instead of being released, and jobs
orphaned by a crashed server (see ``recovery``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, cast

from . import metrics, recovery, store
from .estimate import DURATIONS_KEPT
from .events import Event, decode
from .history import HistoryWriter
from .leaseguard import LeaseGuard, deadlines
from .logformat import job_log
from .logstream import LastBatch, LogWriter
from .masking import Masker, MaskingWriter, job_secrets
from .models import Job, JobStatus, Reason
from .notify.outbox import Notifier
from .outages import classify, describe
from .procinfo import boot_id, hostname, process_identity
from .queue import FinishResult
from .redis_conn import REDIS_DOWN
from .runner import Outcome, Runner
from .service import Deployster
from .watchdog import Watchdog

log = logging.getLogger("deployster.dispatcher")

# Events after which a project's lock may be free and its queue non-empty (a
# tuple: an event's type may be any JSON value, hashable or not).
_WAKE_UPS = (Event.RELEASED, Event.ENQUEUED, Event.FINISHED)


class Dispatcher:
    def __init__(self, core: Deployster, history: HistoryWriter | None = None) -> None:
        self.core = core
        self.history = history or HistoryWriter(core)
        # Notifications and GitHub deployments: read from the outbox the queue
        # scripts write, sent off every job's path (notify/outbox.py).
        self.notifier = Notifier(core)
        self.watchdog = Watchdog(core.redis, core.keys)
        self.lease_guard = LeaseGuard()
        self.runners: dict[str, Runner] = {}
        self._job_tasks: set[asyncio.Task[None]] = set()
        # Jobs this process runs now: a job is launched once, however many
        # replies (a retried script, the sweep) name it.
        self._active: set[str] = set()
        self._recovering = asyncio.Lock()
        # The three loops start() runs; stop() ends them in this order: the
        # listener first (no new jobs), the history writer once the jobs have
        # ended (its last flush records them), the announcer with it.
        self._listener: asyncio.Task[None] | None = None
        self._announcer: asyncio.Task[None] | None = None
        self._history_task: asyncio.Task[None] | None = None
        self._stopping = False

    # ------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        """Announce this runner, move queues an older version kept as lists
        into sorted sets, end jobs orphaned by a crash, start listening."""
        await self._adopt_projects()
        with contextlib.suppress(*REDIS_DOWN):
            await recovery.announce(self.core)
            if moved := await self.core.queue.upgrade():
                log.info("moved %d queued job(s) from the old list queues", moved)
            await self.recover()
            await recovery.end_leftovers(self.core)
        await self._learn_run_times()
        self._listener = asyncio.create_task(self._listen(), name="dispatcher-listen")
        self._announcer = asyncio.create_task(self._announce_loop(), name="dispatcher-announce")
        self._history_task = asyncio.create_task(self.history.run(), name="history-writer")
        await self.notifier.start()

    async def _adopt_projects(self) -> None:
        """Projects registered before nodes existed become this node's."""
        try:
            if moved := await self.core.projects.adopt():
                log.info("node %s: %d project(s) registered before nodes are this node's",
                         self.core.node, moved)
        except Exception as exc:  # the database is down: the next start adopts them
            log.warning("node %s: projects from before nodes not adopted now (%s)",
                        self.core.node, describe(exc))

    async def _learn_run_times(self) -> None:
        """Start estimates from the SQL history where Redis has no run times
        (an upgrade from a version that kept none, a Redis that lost its data)."""
        try:
            runs = await store.select_recent_run_times(self.core.db, DURATIONS_KEPT)
            await self.core.queue.learn_durations(runs)
        except Exception as exc:  # an estimate is a nicety, never a reason not to start
            log.warning("start estimates: the history's run times were not read (%s)",
                        describe(exc))

    async def stop(self, *, grace: float = 0.0, reason: str = Reason.INTERRUPTED) -> None:
        """Stop taking jobs; give running ones ``grace`` seconds, then end them.

        Queued jobs stay queued (in Redis) for the next start: while stopping,
        a finishing job releases its lock without claiming the next one.
        """
        self._stopping = True
        if self._listener is not None:
            # Cancel until it ends: a cancel landing as redis-py's get_message
            # times out is swallowed on Python 3.11, and the stop waited forever
            # (an app stopped right after it started, in tests/server/test_metrics.py).
            while not self._listener.done():
                self._listener.cancel()
                await asyncio.wait({self._listener}, timeout=0.1)
            await asyncio.gather(self._listener, return_exceptions=True)
        if self._job_tasks and grace > 0:
            log.info("waiting up to %gs for %d running job(s)", grace, len(self._job_tasks))
            await asyncio.wait(set(self._job_tasks), timeout=grace)
        for runner in list(self.runners.values()):
            runner.stop(reason)
        await self.wait_idle()
        # The history writer stops between flushes, never in one (see its stop()).
        self.history.stop()
        if self._history_task is not None:
            await asyncio.wait({self._history_task}, timeout=10)
        loops = [t for t in (self._announcer, self._history_task) if t is not None]
        for task in loops:
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        with contextlib.suppress(*REDIS_DOWN, Exception):
            await self.history.flush()
        await self.notifier.stop()
        with contextlib.suppress(*REDIS_DOWN):
            await recovery.withdraw(self.core)
        self.lease_guard.close()

    async def wait_idle(self) -> None:
        """Wait until no job runs in this process (tests, graceful shutdown)."""
        while self._job_tasks:
            await asyncio.gather(*list(self._job_tasks), return_exceptions=True)

    # ------------------------------------------------------------- wake-ups
    async def _announce_loop(self) -> None:
        while True:
            await asyncio.sleep(recovery.RUNNER_REFRESH)
            try:
                await recovery.announce(self.core)
            except REDIS_DOWN as exc:
                log.warning("dispatcher: cannot refresh the runner key (%s)", exc)

    async def _listen(self) -> None:
        backoff = 0.1
        while True:
            try:
                async with self.core.redis.pubsub() as pubsub:
                    await pubsub.subscribe(self.core.keys.events)
                    # Subscribed: project changes now arrive as events.
                    self.core.projects.event_driven = True
                    await self.sweep()
                    backoff = 0.1
                    last_sweep = time.monotonic()
                    interval = self.core.settings.sweep_interval
                    while True:
                        message = await pubsub.get_message(
                            ignore_subscribe_messages=True, timeout=interval
                        )
                        if message is not None:
                            await self._on_event(decode(message["data"]))
                        if time.monotonic() - last_sweep >= interval:
                            await self.sweep()
                            last_sweep = time.monotonic()
            except asyncio.CancelledError:
                self.core.projects.event_driven = False
                raise
            except REDIS_DOWN as exc:
                if (task := asyncio.current_task()) is not None and task.cancelling():
                    raise asyncio.CancelledError from exc  # a cancel, not an outage
                log.warning("dispatcher: Redis unavailable (%s); retrying", exc)
            except Exception:
                log.exception("dispatcher: unexpected error; retrying")
            self.core.projects.event_driven = False
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    async def _on_event(self, event: dict[str, object]) -> None:
        kind, project = event.get("type"), event.get("project")
        if kind == Event.PROJECTS:
            self.core.projects.invalidate()
            return
        if kind == Event.CANCEL:
            runner = self.runners.get(str(event.get("job")))
            if runner is not None:
                runner.stop(Reason.CANCELLED)
            return
        if kind in _WAKE_UPS and isinstance(project, int):
            await self.try_start(project)
        if kind == Event.FINISHED:
            self.history.notify()

    async def sweep(self) -> None:
        self.core.projects.invalidate()  # in case a 'projects' event was missed
        await self.recover()
        for project_id in await self.core.queue.projects_with_queue():
            await self.try_start(project_id)

    async def recover(self) -> None:
        """End jobs whose runner is gone; launch the jobs claimed for this
        process that it does not run (a claim, an enqueue or a hand-off whose
        reply was lost): within a sweep, not after a lock TTL."""
        if self._stopping:
            return
        async with self._recovering:  # start-up and the sweep: one at a time
            started = await recovery.recover(self.core, runner=self.core.runner_id)
        for job_id in started:
            self.launch(job_id)
        for job_id, owner in (await self.core.jobs.running()).items():
            if owner == self.core.runner_id and job_id not in self._active:
                log.warning("job %s was claimed for this server but not started; starting "
                            "it now", job_id)
                self.launch(job_id)

    async def try_start(self, project_id: int) -> None:
        if self._stopping or not await self.core.projects.owns(project_id):
            return  # another node's project: that node runs it (README.md#several-hosts)
        job_id = await self.core.queue.claim(project_id, self.core.runner_id)
        if job_id:
            self.launch(job_id)

    # ------------------------------------------------------------- running
    def launch(self, job_id: str, record: dict[str, str] | None = None) -> None:
        """Run a job this process has claimed (its lock is already ours); a job
        already running here is not started twice. ``record``: the job's
        record as the claim read it (HGETALL's shape), else it is read here."""
        if job_id in self._active:
            return
        self._active.add(job_id)
        task = asyncio.create_task(self._run_job(job_id, record), name=f"job:{job_id}")
        self._job_tasks.add(task)

        def done(task: asyncio.Task[None]) -> None:
            self._job_tasks.discard(task)
            self._active.discard(job_id)

        task.add_done_callback(done)

    async def _run_job(self, job_id: str, record: dict[str, str] | None = None) -> None:
        core = self.core
        began = time.monotonic()
        self.history.notify()
        try:
            # The commands as sent (raw): the runner alone reads them.
            job = (Job.from_redis(record, raw=True) if record
                   else await core.jobs.get(job_id, raw=True))
            if job is None:  # vanished between claim and start: nothing to run
                log.error("claimed job %s has no record", job_id)
                return
            if job.status is not JobStatus.RUNNING or job.extra.get("runner") != core.runner_id:
                return  # a late reply naming a job that ended, or is not ours to run
            project = await core.projects.get(job.project_id)
        except Exception as exc:
            outage = classify(exc)
            if outage is None:
                raise
            # Nothing has run yet: the job stays claimed for this server, and
            # the sweep starts it once the service answers again.
            log.warning("cannot start job %s now (%s unavailable: %s); the next sweep "
                        "retries", job_id, outage.service, exc)
            return
        # Secrets out of logs: the writer's exit releases what the masker held
        # back before the log is closed, so before the job's end is recorded.
        admin = core.admin_token.current()
        masker = Masker(job_secrets(project.pipeline if project else (), admin))
        async with MaskingWriter(LogWriter(
            core.redis, core.keys, job.id, cap_bytes=core.settings.log_cap_bytes,
            fence=job.fence,
        ), masker) as logw:
            if project is None:
                logw.close_with(f"[deployster] project {job.project!r} no longer exists\n")
                outcome = Outcome(JobStatus.FAILED, Reason.INVALID)
            else:
                runner = Runner(job, project, logw, kill_grace=core.settings.kill_grace)
                runner.on_spawn = self._spawn_recorder(job)
                runner.on_checkout = lambda sha: self._record_checkout(job, sha)
                self.runners[job.id] = runner

                def renewed(sent_at: float) -> None:
                    term_at, kill_at = deadlines(sent_at, job.lock_ttl_ms / 1000,
                                                 core.settings.kill_grace)
                    runner.lease_until = kill_at
                    self.lease_guard.lease(job.id, term_at, kill_at)

                # The claim took the lease a moment ago; the guard's first beat
                # renews it from a time this process knows.
                renewed(time.monotonic())
                guard = asyncio.create_task(self.watchdog.guard(job, runner, renewed))
                job_log.info("job %s started for %s", job.id, job.project, extra={"fields": {
                    "event": "started", "project": job.project, "job_id": job.id}})
                try:
                    outcome = await runner.run()
                except Exception as exc:  # a bug must not leave the job running forever
                    log.exception("runner crashed on job %s", job.id)
                    logw.close_with(f"[deployster] internal error: {exc!r}\n")
                    outcome = Outcome(JobStatus.FAILED, Reason.INTERRUPTED)
                finally:
                    # Cancel until it ends: under load a cancel was lost (the guard
                    # kept beating), and the job hung here "running", lock held.
                    while not guard.done():
                        guard.cancel()
                        await asyncio.wait({guard}, timeout=0.5)
                    await asyncio.gather(guard, return_exceptions=True)
                    self.runners.pop(job.id, None)
                    self.lease_guard.end(job.id)
            # The log's last batch goes with the job's end, in one step.
            last_output = await logw.seal()
        result = await self._finish(job, outcome, last_output)
        if result.next_job is not None:  # first: the hand-off waits for nothing below
            self.launch(result.next_job, result.next_record)
            # Let it run up to its first command's spawn before this one's
            # bookkeeping (a log line, the history's wake-up).
            await asyncio.sleep(0)
        seconds = round(time.monotonic() - began, 2)
        job_log.info(
            "job %s %s%s in %.2fs", job.id, outcome.status.value,
            f" ({outcome.reason})" if outcome.reason else "", seconds,
            extra={"fields": {"event": "finished", "project": job.project, "job_id": job.id,
                              "status": outcome.status.value, "reason": outcome.reason,
                              "exit_code": outcome.exit_code, "seconds": seconds}})
        self.history.notify()

    async def _record_checkout(self, job: Job, sha: str) -> None:
        """Note the commit the job's work tree was pinned to (shown by
        ``GET /jobs/<id>``, kept in the history: what is deployed now)."""
        job.deployed_sha = sha
        try:
            await self.core.jobs.set_fields(job.id, deployed_sha=sha)
        except REDIS_DOWN as exc:
            log.warning("could not record the commit of %s (%s)", job.id, exc)

    def _spawn_recorder(self, job: Job) -> Callable[[int], Awaitable[None]]:
        """The runner's ``on_spawn`` for ``job``: ``_record_process``, the
        first process also ending the job's hand-off (from its claim, the
        record's ``started_ms``, see ``metrics.count_handoff``)."""
        claimed_ms = job.extra.get("started_ms")
        first = [claimed_ms if claimed_ms and claimed_ms.isdigit() else None]

        def recorded(pid: int) -> Awaitable[None]:
            since, first[0] = first[0], None
            return self._record_process(job, pid, claimed_ms=int(since) if since else None)

        return recorded

    async def _record_process(self, job: Job, pid: int, *, claimed_ms: int | None = None) -> None:
        """Note the command's process group: for the lease guard, and with its
        identity, for crash recovery. ``claimed_ms``: when the job was claimed
        (epoch ms), to count the hand-off in the same round trip."""
        spawned = time.time()
        ident = process_identity(pid)
        self.lease_guard.group(job.id, pid, ident)
        fields = {"pgid": str(pid), "pg_ident": ident or "", "host": hostname(),
                  "boot": boot_id()}
        try:
            if claimed_ms is None:
                await self.core.jobs.set_fields(job.id, **fields)
                return
            async with self.core.redis.pipeline(transaction=False) as pipe:
                pipe.hset(self.core.keys.job(job.id), mapping=cast(Any, fields))
                # Both ends by this process's clock: the claim is the claimer's
                # (this dispatcher, or the request it answered).
                metrics.count_handoff(pipe, self.core.keys, spawned - claimed_ms / 1000)
                await pipe.execute()
        except REDIS_DOWN as exc:
            log.warning("could not record the process of %s (%s)", job.id, exc)

    async def _finish(self, job: Job, outcome: Outcome,
                      last_output: LastBatch | None = None) -> FinishResult:
        delay = 0.1
        nonce = uuid.uuid4().hex  # one finish, however often it is sent
        while True:
            try:
                return await self.core.queue.finish(
                    job, outcome.status, reason=outcome.reason, exit_code=outcome.exit_code,
                    runner=None if self._stopping else self.core.runner_id, nonce=nonce,
                    last_output=last_output,
                )
            except REDIS_DOWN as exc:  # keep the outcome until Redis is back
                log.warning("could not record the end of %s (%s); retrying", job.id, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

