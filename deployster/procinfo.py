"""Telling whether a pid still names the process we started.

A pid alone is not an identity: after a crash the kernel may have handed it to
something else. ``/proc/<pid>/stat`` gives the process's start time (clock ticks
since boot) and ``/proc/sys/kernel/random/boot_id`` the boot, so
"boot id + start time" names one process for ever. Where /proc is missing the
identity is None and callers must not kill anything on a pid alone.
"""

from __future__ import annotations

import os
import socket
from functools import cache


@cache
def boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            return fh.read().strip()
    except OSError:
        return ""


@cache
def hostname() -> str:
    return socket.gethostname()


def process_identity(pid: int) -> str | None:
    """``<boot id>:<start time>`` of ``pid``, or None if it is gone/unknowable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read().decode("ascii", "replace")
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after it.
    fields = stat[stat.rfind(")") + 2 :].split()
    if len(fields) < 20 or not boot_id():
        return None
    return f"{boot_id()}:{fields[19]}"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
