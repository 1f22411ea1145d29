"""Running a job's commands (SPEC §7).

Each command runs as ``/bin/sh -c`` in the project directory, in a process group
of its own (so cancel, timeout and a lost lock can end everything it started),
with stdout and stderr merged into one pipe read in 64 KiB chunks — no line
buffer, so a 1 MB line or 10 MB of output is just more chunks. A header line
precedes each command; the first non-zero exit ends the job.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from . import procgroups
from .envfile import render_env, write_env_file
from .masking import LogSink
from .models import Job, JobStatus, Project, Reason, Stage
from .printable import command_header
from .settings import Settings

READ_CHUNK = 64 * 1024
# After the shell exits, how long to keep reading output that a background
# child may still hold the pipe open for, before we stop listening.
DRAIN_AFTER_EXIT = 1.0
# How often to look whether the shell exited while a child keeps its pipe open.
EXIT_POLL = 0.05
# Variables a deploy command must not inherit from the server: its own
# configuration. Not only the admin token: DEPLOYSTER_REDIS_URL and
# DEPLOYSTER_DATABASE_URL may carry passwords, which are no stage secret the
# masker knows, so a command running ``env`` printed them into the log as is
# (issue #5 review). Other DEPLOYSTER_* variables (not settings) pass on.
_SCRUBBED_ENV = Settings.variables()


@dataclass(frozen=True)
class Outcome:
    status: JobStatus
    reason: str | None = None
    exit_code: int | None = None


def child_env(job: Job, stage: Stage | None = None) -> dict[str, str]:
    """The commands' environment: the server's, less its own settings, plus the
    stage's variables exactly as set (the same as ``.env``, for build steps that
    do not read it), plus the job's ``DEPLOYSTER_*`` facts, which win."""
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
    if stage is not None:
        env.update((var.key, var.value) for var in stage.environment_variables)
    env.update(
        DEPLOYSTER_JOB_ID=job.id,
        DEPLOYSTER_PROJECT=job.project,
        DEPLOYSTER_COMMIT=job.commit_hash,
        DEPLOYSTER_REF=job.ref_name,
    )
    return env


async def _exited(proc: asyncio.subprocess.Process) -> int:
    """The shell's exit status, as soon as the shell exits.

    ``proc.wait()`` alone also waits until every pipe is closed (Python 3.11), so
    a background child holding stdout (``sleep 300 &``) would hang the job.
    """
    wait = asyncio.ensure_future(proc.wait())
    try:
        while proc.returncode is None:
            await asyncio.wait({wait}, timeout=EXIT_POLL)
            if wait.done():
                return wait.result()
        return proc.returncode
    finally:
        wait.cancel()


class Runner:
    """Runs one job; ``stop(reason)`` ends it early from any task."""

    def __init__(self, job: Job, project: Project, log: LogSink, *, kill_grace: float) -> None:
        self.job = job
        self.project = project
        self.log = log
        self.kill_grace = kill_grace
        self.stop_reason: str | None = None
        self.pgid: int | None = None  # the running command's process group
        self._groups: list[int] = []  # every command's group, until the job ends
        # Each command's output reader, kept until the job ends: a process left
        # in the background may still write (see _let_go_of_output).
        self._outputs: list[tuple[asyncio.Task[None], asyncio.subprocess.Process]] = []
        # Set when someone else already ended this job: nothing more is recorded.
        self.stale = False
        # Called with each command's pid (its pgid) as it starts.
        self.on_spawn: Callable[[int], Awaitable[None]] | None = None
        self._stopped = asyncio.Event()
        self._started = time.monotonic()
        # Until when (time.monotonic()) the job's lease is surely ours, by this
        # process's clock; the watchdog moves it on at each renewal. A runner
        # coming back from a stall past it never starts another command.
        self.lease_until = math.inf
        # The secrets' mask of a MaskingWriter log, for the command lines of
        # processes named in the log (see procgroups.describe).
        masker = getattr(log, "masker", None)
        self._mask: Callable[[str], str] | None = masker.mask if masker is not None else None

    def stop(self, reason: str) -> None:
        """Ask the job to end with ``reason`` (cancelled, timed_out, lock_lost…)."""
        if self.stop_reason is None:
            self.stop_reason = reason
            self._stopped.set()

    async def run(self) -> Outcome:
        job, log = self.job, self.log
        log.write(
            f"[deployster] job {job.id} · project {job.project} · commit {job.commit_hash}"
            f" · ref {job.ref_name}\n"
        )
        try:
            self._write_env()
        except (OSError, ValueError) as exc:
            log.write(f"[deployster] could not write {job.cd}/.env: {exc}\n")
            return Outcome(JobStatus.FAILED, Reason.INVALID)
        outcome, closing = await self._run_commands()
        # However the commands ended, nothing they started outlives the job.
        await self._end_leftovers()
        await self._let_go_of_output()
        if outcome.status is JobStatus.COMPLETE:
            closing = f"job complete in {time.monotonic() - self._started:.1f}s"
        # One closing line, always last: how the job ended.
        log.write(f"[deployster] {closing}\n")
        return outcome

    async def _run_commands(self) -> tuple[Outcome, str]:
        """Each command in turn; the outcome, and the closing line's text."""
        job, log = self.job, self.log
        # The commands as sent run; their header shows them as stored, masked
        # (the log's masker knows today's secrets, not a value changed since).
        sent = job.commands if job.raw_commands is None else job.raw_commands
        if job.commands_masked and job.raw_commands is None:
            # Running "***" in place of a secret would do something else.
            return (Outcome(JobStatus.FAILED, Reason.INVALID),
                    "the commands as sent (a secret in them is stored masked) are no "
                    "longer kept; nothing was run")
        total = len(sent)
        for index, (shown, command) in enumerate(zip(job.commands, sent, strict=True), 1):
            self._check_lease()
            if self.stop_reason:
                break
            log.write(command_header(index, total, shown))
            try:
                code = await self._run_command(command)
            except OSError as exc:
                return (Outcome(JobStatus.FAILED, Reason.INVALID),
                        f"could not start the command in {job.cd}: {exc}")
            self._check_lease()  # killed by the lease guard: not a command failure
            if self.stop_reason:
                break
            if code != 0:
                return (Outcome(JobStatus.FAILED, Reason.COMMAND_FAILED, code),
                        f"command {index} exited with code {code}; job failed")
        if self.stop_reason:
            return (Outcome(JobStatus.FAILED, self.stop_reason),
                    f"job stopped: {self.stop_reason.replace('_', ' ')}")
        return Outcome(JobStatus.COMPLETE, None, 0), "job complete"

    def _write_env(self) -> None:
        stage = self.project.stage_for(self.job.ref_name)
        if stage is None:
            return
        write_env_file(self.job.cd, render_env(stage, job_id=self.job.id))
        names = ", ".join(v.key for v in stage.environment_variables) or "no variables"
        self.log.write(f"[deployster] stage {stage.stage_name!r}: wrote .env ({names})\n")

    def _check_lease(self) -> None:
        if time.monotonic() >= self.lease_until:
            self.stop(Reason.LOCK_LOST)

    async def _run_command(self, command: str) -> int:
        """Run one command; its exit status (-1 when it could not be told).

        Returns once the shell exited. Output that processes it left in its
        group still write keeps being read (those end with the job, see
        ``_end_leftovers``); a stop request ends every group of the job.
        """
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", command,
            cwd=self.job.cd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # its own session and process group: pgid == pid
            env=child_env(self.job, self.project.stage_for(self.job.ref_name)),
        )
        self.pgid = proc.pid
        self._groups.append(proc.pid)
        if self.on_spawn is not None:
            await self.on_spawn(proc.pid)
        pump = asyncio.create_task(self._pump(proc.stdout))
        self._outputs.append((pump, proc))
        waiter = asyncio.create_task(_exited(proc))
        stopper = asyncio.create_task(self._stopped.wait())
        try:
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if not waiter.done():
                await self._stop_processes()
                await waiter
            # What the shell printed last may still be in the pipe: read it before
            # the next header. A background child may hold the pipe open for
            # longer; it is read on, and let go of at the end of the job.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(pump), DRAIN_AFTER_EXIT)
        finally:
            for task in (stopper, waiter):
                if not task.done():
                    task.cancel()
            await asyncio.gather(stopper, waiter, return_exceptions=True)
            self.pgid = None
        return proc.returncode if proc.returncode is not None else -1

    async def _pump(self, stream: asyncio.StreamReader | None) -> None:
        if stream is None:
            return
        while chunk := await stream.read(READ_CHUNK):
            self.log.write_bytes(chunk)

    async def _stop_processes(self) -> None:
        """Cancel, timeout, lost lock: end every process group of the job."""
        why = (self.stop_reason or "stopped").replace("_", " ")
        alive = procgroups.members_of(self._groups)
        if not alive:
            return
        self.log.write(
            f"[deployster] {why}: sending SIGTERM to {self._describe(alive)}; "
            f"up to {self.kill_grace:g}s to exit (DEPLOYSTER_KILL_GRACE)\n"
        )
        self._report(await procgroups.stop_groups(self._groups, self.kill_grace))

    async def _end_leftovers(self) -> None:
        """Stop what the job's commands left running in their process groups
        (``nohup daemon &``), named in the log, as CI runners end a job's
        orphans: SIGTERM, the grace period, SIGKILL."""
        left = procgroups.members_of(self._groups)
        if not left:
            return
        self.log.write(
            f"[deployster] still running after the job's commands: "
            f"{self._describe(left)}; stopping them (SIGTERM, up to "
            f"{self.kill_grace:g}s to exit). To keep a process running after a deploy, "
            "run it under supervisor, or start it with setsid and its own log file\n"
        )
        self._report(await procgroups.stop_groups(self._groups, self.kill_grace))

    def _describe(self, found: list[procgroups.Member] | tuple[procgroups.Member, ...]) -> str:
        return procgroups.describe(found, mask=self._mask)

    def _report(self, result: procgroups.StopResult) -> None:
        if result.killed:
            self.log.write(
                f"[deployster] still running {self.kill_grace:g}s after SIGTERM: "
                f"{self._describe(result.killed)}; sent SIGKILL\n"
            )
        elif result.signalled:
            self.log.write(f"[deployster] exited {result.seconds:.1f}s after SIGTERM\n")

    async def _let_go_of_output(self) -> None:
        """Read the job's pipes to their end; a pipe still held open by a process
        outside the job's groups (``setsid cmd &`` without a log file of its own)
        is read for a moment more, then let go of, saying so."""
        pending = [(pump, proc) for pump, proc in self._outputs if not pump.done()]
        if pending:
            await asyncio.wait({pump for pump, _ in pending}, timeout=DRAIN_AFTER_EXIT)
        held = [(pump, proc) for pump, proc in pending if not pump.done()]
        for pump, proc in held:
            pump.cancel()
            transport = getattr(proc, "_transport", None)
            if transport is not None:
                transport.close()
        await asyncio.gather(*(pump for pump, _ in self._outputs), return_exceptions=True)
        self._outputs.clear()
        if held:
            self.log.write(
                "[deployster] a process outside the job's process groups still holds its "
                "output open; no longer reading it\n"
            )
