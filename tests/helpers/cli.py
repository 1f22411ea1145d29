"""What a test reads from a ``deployster`` command it ran."""

from __future__ import annotations

import subprocess


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The single ``deployster: error: …`` line of a failed command (exit 2)."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("deployster: error: ")
    assert result.stdout == ""
    return lines[0]
