"""Self-fencing: a job's processes end before its lease does, even when the
server that runs it stalls.

A job may run only while it holds its project's lock (a lease with a TTL, see
``watchdog.py``). If the server stalls (SIGSTOP, swap, a blocked event loop)
past the TTL, the lock expires and another server starts the next job; the
fencing token then keeps the stalled runner's writes out of Redis, but not its
processes. So the deadline is enforced from outside the server's process: one
small guard process per server, started with the dispatcher, is told every
process group a job starts and every renewal of its lease, and ends the job's
groups on its own when a lease runs out unrenewed — SIGTERM at ``term_at``,
SIGKILL at ``kill_at``, both before the lease expires. Times are
``time.monotonic()`` seconds, the machine-wide CLOCK_MONOTONIC, which the
server and the guard share. A guard whose server is gone (its pipe closed)
enforces the deadlines it has, then exits.

The protocol is lines on the guard's stdin:

    lease <job id> <term_at> <kill_at>   (set or renew)
    group <job id> <pgid> <identity>     (a process group of the job, and its
                                          leader's ``procinfo.process_identity``)
    end <job id>                         (the job ended; forget it)

Before it signals anything the guard checks that it is the job's: a recorded
group whose leader is still that process, or any group holding a process whose
environment names the job (``procgroups.job_groups``), so a pid reused since
is never hit.

This module runs as the guard (``python -m deployster.leaseguard``, standard
library only: it starts in a few tens of milliseconds) and holds ``LeaseGuard``,
the server's side.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

log = logging.getLogger("deployster.leaseguard")

# Lease arithmetic, from the time a renewal was sent (Redis starts the TTL when
# it runs the command, later still): SIGKILL this far before the TTL ends...
KILL_MARGIN_SHARE, KILL_MARGIN_MAX = 0.2, 5.0
# ...and SIGTERM up to the kill grace before that (at most this share of the TTL).
TERM_SHARE = 0.2


def deadlines(renewed_at: float, ttl: float, grace: float) -> tuple[float, float]:
    """(term_at, kill_at) for a lease of ``ttl`` seconds renewed (sent) at
    ``renewed_at``: with a TTL of 600 s and a 5 s grace, SIGTERM 10 s and
    SIGKILL 5 s before it ends; with 2 s, at 1.2 s and 1.6 s (one missed
    renewal, every TTL/3, is not yet a stall)."""
    kill_at = renewed_at + ttl - min(KILL_MARGIN_SHARE * ttl, KILL_MARGIN_MAX)
    return kill_at - min(grace, TERM_SHARE * ttl), kill_at


@dataclass
class _Lease:
    term_at: float = float("inf")
    kill_at: float = float("inf")
    groups: dict[int, str] = field(default_factory=dict)  # pgid -> leader identity


class LeaseGuard:
    """The server's handle on its guard process. Every call is a write of one
    line to a pipe (no await); a guard that died is started again with what it
    must know. Without a working guard the jobs still run, fenced as before."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._leases: dict[str, _Lease] = {}
        self._warned = False

    def _start(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "deployster.leaseguard"],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
            # Its own session: a signal to the server's terminal or process
            # group (Ctrl-C, a stop of the group) does not take it along.
            start_new_session=True, close_fds=True,
        )

    def _send(self, line: str) -> None:
        for attempt in range(2):
            if self._proc is None or self._proc.poll() is not None:
                try:
                    self._proc = self._start()
                except OSError as exc:
                    self._warn(f"cannot start the lease guard ({exc})")
                    return
                if attempt or self._leases:  # a new guard learns the whole state
                    line = self._state() + line
            try:
                assert self._proc.stdin is not None
                self._proc.stdin.write(line.encode())
                self._proc.stdin.flush()
                return
            except (BrokenPipeError, ValueError, OSError):
                self._proc = None
        self._warn("the lease guard keeps dying; jobs are fenced by Redis only")

    def _warn(self, message: str) -> None:
        if not self._warned:
            log.warning(message)
            self._warned = True

    def _state(self) -> str:
        lines = []
        for job, lease in self._leases.items():
            if lease.kill_at != float("inf"):
                lines.append(f"lease {job} {lease.term_at!r} {lease.kill_at!r}\n")
            lines.extend(f"group {job} {pgid} {ident}\n" for pgid, ident in lease.groups.items())
        return "".join(lines)

    def lease(self, job_id: str, term_at: float, kill_at: float) -> None:
        lease = self._leases.setdefault(job_id, _Lease())
        lease.term_at, lease.kill_at = term_at, kill_at
        self._send(f"lease {job_id} {term_at!r} {kill_at!r}\n")

    def group(self, job_id: str, pgid: int, identity: str | None) -> None:
        ident = identity or "-"
        self._leases.setdefault(job_id, _Lease()).groups[pgid] = ident
        self._send(f"group {job_id} {pgid} {ident}\n")

    def end(self, job_id: str) -> None:
        if self._leases.pop(job_id, None) is not None:
            self._send(f"end {job_id}\n")

    def close(self) -> None:
        """Let the guard go: it enforces what it still holds, then exits."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()


# ------------------------------------------------------------- the guard


def _targets(job_id: str, lease: _Lease) -> set[int]:
    """The job's groups still alive and still the job's (see the module docstring)."""
    from .procgroups import job_groups
    from .procinfo import process_identity

    recorded = {pgid for pgid, ident in lease.groups.items()
                if ident != "-" and process_identity(pgid) == ident}
    return recorded | job_groups(job_id)


def _signal(groups: set[int], *sigs: int) -> None:
    for pgid in groups:
        for sig in sigs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, sig)


def guard(stdin_fd: int = 0) -> None:
    """The guard's loop: read instructions, end groups whose lease ran out."""
    leases: dict[str, _Lease] = {}
    termed: set[str] = set()
    buffer = b""
    open_ = True
    while open_ or leases:
        now = time.monotonic()
        for job, lease in list(leases.items()):
            if now >= lease.kill_at:
                _signal(_targets(job, lease), signal.SIGKILL)
                del leases[job]
            elif now >= lease.term_at and job not in termed:
                _signal(_targets(job, lease), signal.SIGTERM, signal.SIGCONT)
                termed.add(job)
        if not open_:
            wait = min(lease.kill_at for lease in leases.values()) if leases else 0.0
            time.sleep(max(0.0, min(wait - time.monotonic(), 1.0)))
            continue
        due = [min(lease.term_at if job not in termed else lease.kill_at, lease.kill_at)
               for job, lease in leases.items()]
        timeout = max(0.0, min(due) - time.monotonic()) if due else None
        ready, _, _ = select.select([stdin_fd], [], [], timeout)
        if not ready:
            continue
        chunk = os.read(stdin_fd, 65536)
        if not chunk:
            open_ = False
            continue
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for raw in lines:
            parts = raw.decode("ascii", "replace").split()
            try:
                if parts[0] == "lease" and len(parts) == 4:
                    lease = leases.setdefault(parts[1], _Lease())
                    lease.term_at, lease.kill_at = float(parts[2]), float(parts[3])
                    termed.discard(parts[1])
                elif parts[0] == "group" and len(parts) == 4:
                    leases.setdefault(parts[1], _Lease()).groups[int(parts[2])] = parts[3]
                elif parts[0] == "end" and len(parts) == 2:
                    leases.pop(parts[1], None)
                    termed.discard(parts[1])
            except (IndexError, ValueError):
                continue  # a torn or unknown line: the next renewal corrects it


if __name__ == "__main__":
    # Signals meant for the server's terminal are not for the guard.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    guard()
