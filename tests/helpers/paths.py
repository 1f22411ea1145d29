"""Where things are: the repository, and the stand-in programs the tests'
servers find first on their PATH."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Stand-ins for ``supervisorctl`` and ``yarn`` that say what they would do (the
# tests of the verified restart run a real one: ``supervisord.py``).
STUB_BIN = REPO / "tests" / "stubs"
