"""Ending a job's processes: SIGTERM to each of its process groups, a grace
period for them to exit, SIGKILL for what is left.

Each command of a job runs in a process group of its own (``runner.py``), so a
group holds the command's shell and everything it started that did not leave
the group (``setsid`` does). Waiting for the shell alone is not enough: it dies
of SIGTERM at once while a child with a SIGTERM handler is still cleaning up, so
a stop waits for every live member of every group, up to the grace period
(``DEPLOYSTER_KILL_GRACE``), the way supervisord's ``stopwaitsecs`` and CI
runners treat a job's processes. Zombies are not counted: they are dead, and
under an init that does not reap them they would otherwise look alive for ever.

Members are found through ``/proc`` (Linux). ``killpg(pgid, 0)`` answers first,
so a group that is already empty, the usual case, costs one system call.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

# How often a stop looks whether the groups are empty yet.
POLL = 0.05
# How long to wait for SIGKILLed processes to be gone.
KILL_WAIT = 5.0
# Longest command line quoted in a log line.
COMMAND_CHARS = 120


@dataclass(frozen=True)
class Member:
    """A live process of a group: its pid and command line as ``ps`` shows it
    (not shortened yet: see ``describe``)."""

    pid: int
    command: str

    def __str__(self) -> str:
        return f"pid {self.pid} ({_shorten(self.command)})"


def _shorten(text: str) -> str:
    return text if len(text) <= COMMAND_CHARS else text[: COMMAND_CHARS - 1] + "…"


@dataclass(frozen=True)
class StopResult:
    """What a stop did. ``signalled``: alive when SIGTERM went out; ``killed``:
    still alive after the grace, so sent SIGKILL; ``seconds``: time waited."""

    signalled: tuple[Member, ...]
    killed: tuple[Member, ...]
    seconds: float


def kill_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to the group; False when it is gone (or not ours)."""
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm", "rb") as fh:
            return fh.read().decode("utf-8", "replace").strip()
    except OSError:
        return "?"


def _command_line(pid: int, comm: str) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            raw = fh.read(4 * COMMAND_CHARS)
    except OSError:
        raw = b""
    text = raw.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "replace") or f"[{comm}]"
    # Log text: a process names itself, control characters and all.
    return "".join(c if c.isprintable() else "?" for c in text)


def members(pgid: int) -> list[Member]:
    """The live (not zombie) processes of group ``pgid``, by pid."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return []
    except PermissionError:
        pass  # a member we may not signal still is a member
    found = []
    try:
        pids = [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:  # no /proc: the group is known to exist, its members not
        return [Member(pgid, "?")]
    for pid in sorted(pids):
        fields = _stat_fields(pid)  # None: exited meanwhile
        if fields is None or len(fields) < 3 or fields[0] == "Z" or fields[2] != str(pgid):
            continue
        found.append(Member(pid, _command_line(pid, _comm(pid))))
    return found


def _stat_fields(pid: int) -> list[str] | None:
    """``/proc/<pid>/stat`` after the command name: state, ppid, pgrp, …"""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read().decode("utf-8", "replace")
    except OSError:
        return None
    return stat[stat.rfind(")") + 2 :].split()


def _environ_matches(needle: bytes) -> Iterator[tuple[bytes, int]]:
    """(environment, process group) of each live process on this machine whose
    environment holds ``needle`` (a ``\0NAME=value\0`` entry)."""
    try:
        pids = [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return
    for pid in pids:
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                environ = b"\0" + fh.read() + b"\0"
        except OSError:
            continue
        if needle not in environ:
            continue
        fields = _stat_fields(pid)
        if fields and len(fields) > 2 and fields[0] != "Z":
            yield environ, int(fields[2])


def job_groups(job_id: str) -> set[int]:
    """The process groups holding a live process started for ``job_id``: every
    command's environment names its job (``DEPLOYSTER_JOB_ID``, see
    ``runner.child_env``), and children inherit it. This finds a job's
    processes where no record of their groups survived (a crash between a spawn
    and its record) and checks that a recorded pgid is still the job's."""
    needle = f"\0DEPLOYSTER_JOB_ID={job_id}\0".encode()
    return {pgid for _, pgid in _environ_matches(needle)}


_JOB_ID = b"\0DEPLOYSTER_JOB_ID="


def node_job_groups(node: str) -> dict[str, set[int]]:
    """Job id -> the process groups holding a live process started for that
    job by ``node`` (their environment names both: ``runner.child_env``)."""
    found: dict[str, set[int]] = {}
    for environ, pgid in _environ_matches(f"\0DEPLOYSTER_NODE={node}\0".encode()):
        start = environ.find(_JOB_ID)
        if start >= 0:
            start += len(_JOB_ID)
            job_id = environ[start:environ.index(b"\0", start)].decode("ascii", "replace")
            found.setdefault(job_id, set()).add(pgid)
    return found


def members_of(pgids: Iterable[int]) -> list[Member]:
    return [m for pgid in pgids for m in members(pgid)]


def describe(found: Iterable[Member], limit: int = 8,
             mask: Callable[[str], str] | None = None) -> str:
    """``pid 12 (python3 app.py), pid 13 (sleep 30)``, at most ``limit`` named.

    ``mask`` (the job's secrets, ``Masker.mask``) is applied to each command
    line before it is shortened: a secret cut by the shortening would reach
    the log as a prefix no masker downstream can recognise.
    """
    found = list(found)
    text = ", ".join(f"pid {m.pid} ({_shorten(mask(m.command) if mask else m.command)})"
                     for m in found[:limit])
    if len(found) > limit:
        text += f" and {len(found) - limit} more"
    return text


async def stop_groups(pgids: Iterable[int], grace: float) -> StopResult:
    """SIGTERM every group, wait up to ``grace`` seconds for all of them to be
    empty, then SIGKILL what is left. A stopped (SIGSTOP) process cannot act on
    SIGTERM, so each group also gets SIGCONT, as systemd does."""
    pgids = list(dict.fromkeys(pgids))
    alive = members_of(pgids)
    if not alive:
        return StopResult((), (), 0.0)
    started = time.monotonic()
    for pgid in pgids:
        kill_group(pgid, signal.SIGTERM)
        kill_group(pgid, signal.SIGCONT)
    deadline = started + grace
    left = members_of(pgids)
    while left and time.monotonic() < deadline:
        await asyncio.sleep(POLL)
        left = members_of(pgids)
    if left:
        for pgid in pgids:
            kill_group(pgid, signal.SIGKILL)
        # SIGKILL is not instant (a process in uninterruptible I/O finishes
        # it first): the caller frees the lock only once they are gone.
        deadline = time.monotonic() + KILL_WAIT
        while members_of(pgids) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(POLL)
    return StopResult(tuple(alive), tuple(left), time.monotonic() - started)
