"""Ending a process a test started: a signal, a grace to exit, then SIGKILL."""

from __future__ import annotations

import signal
import subprocess
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
