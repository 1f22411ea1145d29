"""Running a job's commands (docs/runner.md: the header lines, the source step,
the environment, output, stopping).

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
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from . import procgroups, source, supervisor
from .envfile import render_env, write_env_file
from .masking import LogSink
from .models import Job, JobStatus, Project, Reason, Stage
from .printable import command_header
from .settings import Settings
from .spawn import Child, spawn
from .supervisor import RestartCommand, parse_restart

READ_CHUNK = 64 * 1024
# After the shell exits, how long to keep reading output that a background
# child may still hold the pipe open for, before we stop listening.
DRAIN_AFTER_EXIT = 1.0
# Seconds a process found in a job's group at its end is given to finish
# detaching itself (setsid) before it counts as a leftover to stop.
LEFTOVER_SETTLE = 0.2
# What a step's answer is read from: the end of its output.
TAIL_BYTES = 8 * 1024
# A quick read (git rev-parse, supervisorctl status) that takes longer is stuck.
CAPTURE_TIMEOUT = 60.0
# How often a restart's verification asks supervisor again.
VERIFY_POLL = 0.5
# Variables a deploy command must not inherit from the server: its own
# configuration. Not only the admin token: DEPLOYSTER_REDIS_URL and
# DEPLOYSTER_DATABASE_URL may carry passwords, which are no stage secret the
# masker knows, so a command running ``env`` printed them into the log as is
# (held by test_commands_do_not_inherit_the_servers_settings in
# tests/server/test_hardening.py). Other DEPLOYSTER_* variables (not settings)
# pass on (docs/runner.md#the-commands-environment).
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
        # The node running it: how its node finds its processes after a crash
        # (recovery.end_leftovers), and what a command may stamp.
        DEPLOYSTER_NODE=job.node or "",
    )
    return env


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
        self._outputs: list[tuple[asyncio.Task[None], Child]] = []
        # Set when someone else already ended this job: nothing more is recorded.
        self.stale = False
        # Called with each command's pid (its pgid) as it starts.
        self.on_spawn: Callable[[int], Awaitable[None]] | None = None
        # Called with the full commit once the work tree is pinned to it.
        self.on_checkout: Callable[[str], Awaitable[None]] | None = None
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
        log.note(
            f"[deployster] job {job.id} · project {job.project} · commit {job.commit_hash}"
            f" · ref {job.ref_name}\n"
        )
        outcome, closing = await self._run_steps()
        # However the commands ended, nothing they started outlives the job.
        await self._end_leftovers()
        await self._let_go_of_output()
        if outcome.status is JobStatus.COMPLETE:
            closing = f"job complete in {time.monotonic() - self._started:.1f}s"
        # One closing line, always last: how the job ended.
        log.close_with(f"[deployster] {closing}\n")
        return outcome

    async def _run_steps(self) -> tuple[Outcome, str]:
        """Source, stage, commands (with the supervisor steps around the last):
        the outcome, and the closing line's text."""
        job = self.job
        if not job.commit_hash or not job.ref_name:
            self.log.note(
                "[deployster] the request names no commit_hash or no ref_name (as older "
                f"clients send): no checkout, no stage; {job.cd} is deployed as it is\n")
        else:
            try:
                if await source.uses_git(self, job.cd, self.project.steps):
                    sha = await source.pin(self, job, self.project.steps)
                    if self.on_checkout is not None:
                        await self.on_checkout(sha)
            except source.CheckoutFailed as exc:
                if self.stop_reason:
                    return self._stopped_outcome()
                return Outcome(JobStatus.FAILED, Reason.CHECKOUT_FAILED), f"checkout failed: {exc}"
            except OSError as exc:
                return (Outcome(JobStatus.FAILED, Reason.CHECKOUT_FAILED),
                        f"checkout failed: cannot run git in {job.cd}: {exc}")
            if self.stop_reason:
                return self._stopped_outcome()
        try:
            self._write_env()
        except (OSError, ValueError) as exc:
            return (Outcome(JobStatus.FAILED, Reason.INVALID),
                    f"could not write {job.cd}/.env: {exc}")
        return await self._run_commands()

    def _stopped_outcome(self) -> tuple[Outcome, str]:
        reason = self.stop_reason or Reason.INTERRUPTED
        return Outcome(JobStatus.FAILED, reason), f"job stopped: {reason.replace('_', ' ')}"

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
            restart = parse_restart(command) if index == total else None
            if restart is not None and self.project.steps.supervisor_update:
                failed = await self._update_supervisor(restart)
                if failed is not None or self.stop_reason:
                    return failed or self._stopped_outcome()
            log.note(command_header(index, total, shown))
            tail = bytearray() if restart is not None else None
            try:
                code = await self._run_command(command, tail=tail)
            except OSError as exc:
                return (Outcome(JobStatus.FAILED, Reason.INVALID),
                        f"could not start the command in {job.cd}: {exc}")
            self._check_lease()  # killed by the lease guard: not a command failure
            if self.stop_reason:
                break
            if code != 0 and restart is not None and tail is not None:
                said = supervisor.errors_in(tail.decode("utf-8", "replace"))
                return (Outcome(JobStatus.FAILED, Reason.RESTART_FAILED, code),
                        f"restart failed: {said[0] if said else f'exit code {code}'}")
            if code != 0:
                return (Outcome(JobStatus.FAILED, Reason.COMMAND_FAILED, code),
                        f"command {index} exited with code {code}; job failed")
            if restart is not None and tail is not None:
                failed = await self._verify_restart(restart, tail.decode("utf-8", "replace"))
                if failed is not None:
                    return failed
        if self.stop_reason:
            return self._stopped_outcome()
        return Outcome(JobStatus.COMPLETE, None, 0), "job complete"

    # ------------------------------------------------------------ supervisor

    async def _update_supervisor(self, restart: RestartCommand) -> tuple[Outcome, str] | None:
        """``reread``, then ``update`` of the restart's groups only (a bare
        ``update`` restarts every changed group on the box)."""
        for args in (("reread",), ("update", *restart.groups)):
            code, out = await self.step(restart.command(*args))
            problems = supervisor.errors_in(out)
            if self.stop_reason:
                return None
            if code != 0 or problems:
                said = problems[0] if problems else f"exit {code}"
                return (Outcome(JobStatus.FAILED, Reason.RESTART_FAILED),
                        f"restart failed: supervisorctl {args[0]} failed ({said})")
        return None

    async def _verify_restart(
        self, restart: RestartCommand, said: str
    ) -> tuple[Outcome, str] | None:
        """None once every process the restart named has been RUNNING for the
        project's ``verify_running`` seconds; else the failure, with
        supervisor's own line. supervisorctl 3.x answers ``ERROR (spawn
        error)`` with exit status 0, so its output is read too."""
        problems = supervisor.errors_in(said)
        if problems:
            return (Outcome(JobStatus.FAILED, Reason.RESTART_FAILED),
                    f"restart failed: {problems[0]}")
        steps = self.project.steps
        if steps.verify_window <= 0:
            return None
        names = " ".join(restart.programs)
        self.log.note(f"[deployster] waiting for {names} to be RUNNING for "
                       f"{steps.verify_running:g}s (up to {steps.verify_window:g}s)\n")
        deadline = time.monotonic() + steps.verify_window
        status = restart.command("status", *restart.programs)
        while True:
            _code, out = await self.capture("/bin/sh", "-c", status)
            verdict = supervisor.judge(supervisor.parse_status(out), steps.verify_running)
            if verdict.done:
                self.log.note(f"[deployster] restart verified: {verdict.line}\n")
                return None
            if verdict.failed or time.monotonic() >= deadline:
                late = "" if verdict.failed else (
                    f"not RUNNING for {steps.verify_running:g}s within "
                    f"{steps.verify_window:g}s: ")
                return (Outcome(JobStatus.FAILED, Reason.RESTART_FAILED),
                        f"restart failed: {late}{verdict.line}")
            try:
                await asyncio.wait_for(self._stopped.wait(), VERIFY_POLL)
            except TimeoutError:
                pass
            if self.stop_reason:
                return None

    # ----------------------------------------------------- deployster's steps

    async def step(self, command: str) -> tuple[int, str]:
        """Run one of deployster's own commands (git, supervisorctl) as a job's
        command runs (its process group, its output in the log, cancellable),
        under a header line of its own; (exit status, its last output)."""
        self.log.note(f"[deployster] $ {command}\n")
        tail = bytearray()
        code = await self._run_command(command, tail=tail)
        return code, tail.decode("utf-8", "replace")

    async def capture(self, *argv: str) -> tuple[int, str]:
        """Run ``argv`` quietly in the project directory (a quick read: git
        rev-parse, supervisorctl status); (exit status, stdout). Never waits
        more than ``CAPTURE_TIMEOUT`` seconds."""
        proc = await spawn([*argv], cwd=self.job.cd, env=self._env(), merge_stderr=False)
        assert proc.stdout is not None
        try:
            async with asyncio.timeout(CAPTURE_TIMEOUT):
                out = await proc.stdout.read()
                code = await proc.wait()
        except TimeoutError:
            procgroups.kill_group(proc.pid, signal.SIGKILL)
            proc.close_output()
            await proc.wait()
            return -1, ""
        return code, out.decode("utf-8", "replace")

    def _env(self) -> dict[str, str]:
        env = child_env(self.job, self.project.stage_for(self.job.ref_name))
        # git must never wait for a password or a host key nobody can type.
        env.setdefault("GIT_TERMINAL_PROMPT", "0")
        env.setdefault("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
        return env

    def _write_env(self) -> None:
        stage = self.project.stage_for(self.job.ref_name)
        if stage is None:
            return
        write_env_file(self.job.cd, render_env(stage, job_id=self.job.id))
        names = ", ".join(v.key for v in stage.environment_variables) or "no variables"
        self.log.note(f"[deployster] stage {stage.stage_name!r}: wrote .env ({names})\n")

    def _check_lease(self) -> None:
        if time.monotonic() >= self.lease_until:
            self.stop(Reason.LOCK_LOST)

    async def _run_command(self, command: str, *, tail: bytearray | None = None) -> int:
        """Run one command; its exit status (-1 when it could not be told).

        Returns once the shell exited. Output that processes it left in its
        group still write keeps being read (those end with the job, see
        ``_end_leftovers``); a stop request ends every group of the job.
        """
        # Its own session and process group (pgid == pid), started off the loop.
        proc = await spawn(["/bin/sh", "-c", command], cwd=self.job.cd, env=self._env())
        self.pgid = proc.pid
        self._groups.append(proc.pid)
        if self.on_spawn is not None:
            await self.on_spawn(proc.pid)
        pump = asyncio.create_task(self._pump(proc.stdout, tail))
        self._outputs.append((pump, proc))
        waiter = asyncio.create_task(proc.wait())
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

    async def _pump(self, stream: asyncio.StreamReader | None,
                    tail: bytearray | None = None) -> None:
        if stream is None:
            return
        while chunk := await stream.read(READ_CHUNK):
            self.log.write_bytes(chunk)
            if tail is not None:  # the last TAIL_BYTES, for what a step answered
                tail += chunk
                del tail[:-TAIL_BYTES]

    async def _stop_processes(self) -> None:
        """Cancel, timeout, lost lock: end every process group of the job."""
        why = (self.stop_reason or "stopped").replace("_", " ")
        await self._stop_groups(
            f"[deployster] {why}: sending SIGTERM to {{named}}; "
            f"up to {self.kill_grace:g}s to exit (DEPLOYSTER_KILL_GRACE)\n"
        )

    async def _end_leftovers(self) -> None:
        """Stop what the job's commands left running in their process groups
        (``nohup daemon &``), named in the log, as CI runners end a job's
        orphans: SIGTERM, the grace period, SIGKILL.

        A process that detaches itself (``setsid``) is still listed in the group
        for the moment it takes to do so: look again after ``LEFTOVER_SETTLE``
        seconds before naming anything, so it is left alone."""
        if not procgroups.members_of(self._groups):
            return
        await asyncio.sleep(LEFTOVER_SETTLE)
        await self._stop_groups(
            "[deployster] still running after the job's commands: "
            f"{{named}}; stopping them (SIGTERM, up to {self.kill_grace:g}s to exit). "
            "To keep a process running after a deploy, run it under supervisor, "
            "or start it with setsid and its own log file\n"
        )

    async def _stop_groups(self, notice: str) -> None:
        """TERM, grace, KILL for what is left in the job's groups; ``notice``
        (with ``{named}`` for the processes) goes to the log first."""
        alive = procgroups.members_of(self._groups)
        if not alive:
            return
        self.log.note(notice.replace("{named}", self._describe(alive)))
        self._report(await procgroups.stop_groups(self._groups, self.kill_grace))

    def _describe(self, found: list[procgroups.Member] | tuple[procgroups.Member, ...]) -> str:
        return procgroups.describe(found, mask=self._mask)

    def _report(self, result: procgroups.StopResult) -> None:
        if result.killed:
            self.log.note(
                f"[deployster] still running {self.kill_grace:g}s after SIGTERM: "
                f"{self._describe(result.killed)}; sent SIGKILL\n"
            )
        elif result.signalled:
            self.log.note(f"[deployster] exited {result.seconds:.1f}s after SIGTERM\n")

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
            proc.close_output()
        await asyncio.gather(*(pump for pump, _ in self._outputs), return_exceptions=True)
        self._outputs.clear()
        if held:
            self.log.note(
                "[deployster] a process outside the job's process groups still holds its "
                "output open; no longer reading it\n"
            )
