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
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, fields

from .envfile import render_env, write_env_file
from .masking import LogSink
from .models import Job, JobStatus, Project, Reason
from .settings import ENV_PREFIX, Settings

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
_SCRUBBED_ENV = frozenset(
    {f"{ENV_PREFIX}{f.name.upper()}" for f in fields(Settings)} | {f"{ENV_PREFIX}CONFIG"}
)


@dataclass(frozen=True)
class Outcome:
    status: JobStatus
    reason: str | None = None
    exit_code: int | None = None


def child_env(job: Job) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
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


def kill_group(pgid: int, sig: int) -> bool:
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


class Runner:
    """Runs one job; ``stop(reason)`` ends it early from any task."""

    def __init__(self, job: Job, project: Project, log: LogSink, *, kill_grace: float) -> None:
        self.job = job
        self.project = project
        self.log = log
        self.kill_grace = kill_grace
        self.stop_reason: str | None = None
        self.pgid: int | None = None
        # Set when someone else already ended this job: nothing more is recorded.
        self.stale = False
        # Called with each command's pid (its pgid) as it starts.
        self.on_spawn: Callable[[int], Awaitable[None]] | None = None
        self._stopped = asyncio.Event()
        self._started = time.monotonic()

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
        total = len(job.commands)
        for index, command in enumerate(job.commands, 1):
            if self.stop_reason:
                break
            log.write(f"[{index}/{total}] $ {command}\n")
            try:
                code = await self._run_command(command)
            except OSError as exc:
                log.write(f"[deployster] could not start the command in {job.cd}: {exc}\n")
                return Outcome(JobStatus.FAILED, Reason.INVALID)
            if self.stop_reason:
                break
            if code != 0:
                log.write(f"[deployster] command {index} exited with code {code}; job failed\n")
                return Outcome(JobStatus.FAILED, Reason.COMMAND_FAILED, code)
        if self.stop_reason:
            log.write(f"[deployster] job stopped: {self.stop_reason.replace('_', ' ')}\n")
            return Outcome(JobStatus.FAILED, self.stop_reason)
        elapsed = time.monotonic() - self._started
        log.write(f"[deployster] job complete in {elapsed:.1f}s\n")
        return Outcome(JobStatus.COMPLETE, None, 0)

    def _write_env(self) -> None:
        stage = self.project.stage_for(self.job.ref_name)
        if stage is None:
            return
        write_env_file(self.job.cd, render_env(stage, job_id=self.job.id))
        names = ", ".join(v.key for v in stage.environment_variables) or "no variables"
        self.log.write(f"[deployster] stage {stage.stage_name!r}: wrote .env ({names})\n")

    async def _run_command(self, command: str) -> int:
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", command,
            cwd=self.job.cd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # its own session and process group: pgid == pid
            env=child_env(self.job),
        )
        self.pgid = proc.pid
        if self.on_spawn is not None:
            await self.on_spawn(proc.pid)
        pump = asyncio.create_task(self._pump(proc.stdout))
        waiter = asyncio.create_task(_exited(proc))
        stopper = asyncio.create_task(self._stopped.wait())
        try:
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if not waiter.done():
                await self._terminate(proc.pid, waiter)
            # The shell is gone; output a background child still writes is read
            # for a moment, then the pipe is let go so the job cannot hang.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(pump), DRAIN_AFTER_EXIT)
        finally:
            held = not pump.done()
            for task in (pump, stopper, waiter):
                if not task.done():
                    task.cancel()
            await asyncio.gather(pump, stopper, waiter, return_exceptions=True)
            if held:  # let go of the pipe a background child still holds open
                transport = getattr(proc, "_transport", None)
                if transport is not None:
                    transport.close()
            self.pgid = None
        return proc.returncode if proc.returncode is not None else -1

    async def _pump(self, stream: asyncio.StreamReader | None) -> None:
        if stream is None:
            return
        while chunk := await stream.read(READ_CHUNK):
            self.log.write_bytes(chunk)

    async def _terminate(self, pgid: int, waiter: asyncio.Task[int]) -> None:
        """SIGTERM the whole group, SIGKILL it after the grace period."""
        kill_group(pgid, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), self.kill_grace)
        except TimeoutError:
            self.log.write(
                f"[deployster] still running {self.kill_grace:g}s after SIGTERM; sending SIGKILL\n"
            )
            kill_group(pgid, signal.SIGKILL)
            await waiter
        # Children that outlived the shell belong to the job too.
        kill_group(pgid, signal.SIGKILL)

