"""Supervisor around a deploy's last command: reread and update before the
restart, then a verified restart.

Every deploy ends with ``supervisorctl start|restart <program>`` (the seed's
rule; ``validation.py`` holds it to exactly that form). The original
vps-deployster ran ``supervisorctl reread`` and ``supervisorctl update`` before
it, so a changed program config took effect; deployster does the same, but
updates only the groups the restart names (a bare ``update`` restarts every
changed group on the box). After the restart it asks supervisor for the
program's state until every process named has been ``RUNNING`` for a few
seconds: ``supervisorctl`` 3.x prints ``ERROR (spawn error)`` and exits 0, and
a program that crashes a second after starting looks started.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

# States after which a program is not going to be running by itself.
FAILED_STATES = frozenset({"FATAL", "BACKOFF", "EXITED", "STOPPED", "UNKNOWN"})
_UPTIME = re.compile(r"uptime (?:(\d+) days?, )?(\d+):(\d\d):(\d\d)")
# supervisorctl's per-program error answer, e.g. "app: ERROR (spawn error)".
_ERROR = re.compile(r"ERROR \(([^)]*)\)")


@dataclass(frozen=True)
class RestartCommand:
    """A deploy's last command, taken apart.

    ``prefix``: how to call supervisorctl as the user wrote it (``sudo``, the
    binary's path, ``-c FILE``), so the extra calls reach the same supervisord;
    ``action``: ``start`` or ``restart``; ``programs``: as given (``app``,
    ``group:app``, ``group:*``).
    """

    prefix: tuple[str, ...]
    action: str
    programs: tuple[str, ...]

    @property
    def groups(self) -> tuple[str, ...]:
        """The process groups named: a program's group is the part before ``:``
        (a program outside any group is its own group)."""
        return tuple(dict.fromkeys(name.split(":", 1)[0] for name in self.programs))

    def command(self, *args: str) -> str:
        """A shell command calling supervisorctl the same way with ``args``."""
        return shlex.join([*self.prefix, *args])


def parse_restart(command: str) -> RestartCommand | None:
    """``command`` as a ``RestartCommand``; None if it is not one (the
    validation in ``validation.py`` already refused anything else)."""
    words = command.split()
    try:
        at = next(i for i, w in enumerate(words) if w.rsplit("/", 1)[-1] == "supervisorctl")
    except StopIteration:
        return None
    rest = words[at + 1 :]
    prefix = words[: at + 1]
    if rest[:1] == ["-c"] and len(rest) > 1:
        prefix, rest = [*prefix, *rest[:2]], rest[2:]
    if len(rest) < 2 or rest[0] not in ("start", "restart"):
        return None
    return RestartCommand(tuple(prefix), rest[0], tuple(rest[1:]))


# Answers that are no failure of a restart: ``start`` of a program that runs,
# and the stop half of ``restart`` of one that was not running.
_BENIGN = frozenset({"already started", "not running"})


def errors_in(output: str) -> list[str]:
    """supervisorctl's ``ERROR (…)`` answers in ``output`` that mean the
    program did not start (``spawn error``, ``no such process``…)."""
    return [line.strip() for line in output.splitlines()
            if (found := _ERROR.search(line)) and found.group(1) not in _BENIGN]


@dataclass(frozen=True)
class ProgramState:
    """One line of ``supervisorctl status``."""

    name: str
    state: str
    description: str
    line: str

    @property
    def uptime(self) -> float | None:
        """Seconds a RUNNING process has been up, from ``uptime H:MM:SS``."""
        found = _UPTIME.search(self.description)
        if found is None:
            return None
        days, hours, minutes, seconds = (int(g or 0) for g in found.groups())
        return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def parse_status(output: str) -> list[ProgramState]:
    """The process lines of ``supervisorctl status`` output; an unknown name
    (``app: ERROR (no such process)``) comes back with state ``UNKNOWN``."""
    states = []
    for line in output.splitlines():
        words = line.split(None, 2)
        if len(words) < 2:
            continue
        name, state = words[0].rstrip(":"), words[1]
        if state == "ERROR":
            states.append(ProgramState(name, "UNKNOWN", line.strip(), line.strip()))
        elif state.isupper():
            states.append(ProgramState(name, state, words[2] if len(words) > 2 else "",
                                       line.strip()))
    return states


@dataclass(frozen=True)
class Verdict:
    """What one status read says: ``done`` (every process RUNNING for long
    enough), ``failed`` (one is in a failed state, or none answered), or
    neither yet; ``line`` is supervisor's line to quote in the log."""

    done: bool
    failed: bool
    line: str


def judge(states: list[ProgramState], settle: float) -> Verdict:
    """Whether ``states`` show the restart took: every process RUNNING with
    at least ``settle`` seconds of uptime."""
    if not states:
        return Verdict(False, True, "supervisorctl status named no process")
    for state in states:
        if state.state in FAILED_STATES:
            return Verdict(False, True, state.line)
    waiting = [s for s in states if s.state != "RUNNING" or (s.uptime or 0) < settle]
    if waiting:
        return Verdict(False, False, waiting[0].line)
    return Verdict(True, False, "; ".join(s.line for s in states))
