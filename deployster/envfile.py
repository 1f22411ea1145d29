"""Writing a stage's variables to ``<cd>/.env`` (SPEC §5).

Atomic (a temp file in the same directory, fsynced, renamed over), mode 0600
from the first byte, and every value quoted so it reads back exactly and can
never add a line or a variable. Values were already refused at entry if they
hold a newline, CR or NUL; the quoting here is the second wall.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from .models import Stage

# \Z, not $: "$" also matches before a final newline ("KEY\n" would pass).
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")


def quote_value(value: str) -> str:
    """Quote for dotenv readers (dotenv, python-dotenv, compose) and ``sh``.

    Single quotes are literal everywhere, so they are used whenever the value has
    none; otherwise double quotes, escaping the characters those readers treat
    specially inside them.
    """
    if any(c in value for c in "\n\r\x00"):
        raise ValueError("a .env value cannot hold a newline, carriage return or NUL")
    if "'" not in value:
        return f"'{value}'"
    escaped = (
        value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$").replace("`", "\\`")
    )
    return f'"{escaped}"'


def render_env(stage: Stage, *, job_id: str) -> str:
    lines = [f"# Written by deployster for stage {stage.stage_name!r} (job {job_id})."]
    for var in stage.environment_variables:
        if not _IDENTIFIER.match(var.key):
            raise ValueError(f"{var.key!r} is not a valid variable name")
        lines.append(f"{var.key}={quote_value(var.value)}")
    return "\n".join(lines) + "\n"


def write_env_file(directory: str | Path, content: str) -> Path:
    """Atomically replace ``directory/.env`` with ``content``, mode 0600."""
    directory = Path(directory)
    target = directory / ".env"
    fd, tmp = tempfile.mkstemp(prefix=".env.", suffix=".tmp", dir=directory)  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(content)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return target
