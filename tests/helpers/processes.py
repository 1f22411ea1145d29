"""Ending a process a test started (a signal, a grace to exit, then SIGKILL),
and telling that one has ended."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any


def stop_process(
    process: subprocess.Popen[Any], sig: int = signal.SIGTERM, grace: float = 20
) -> int:
    """Send ``sig`` to ``process`` if it still runs, give it ``grace`` seconds
    to exit, then SIGKILL it (and wait up to 5 s more). Its exit code."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
    return process.returncode


def pid_gone(pid: int) -> bool:
    """Exited: no such process, or a zombie that init has not reaped yet."""
    try:
        os.kill(pid, 0)
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (ProcessLookupError, FileNotFoundError):
        return True
    return state == "Z"
