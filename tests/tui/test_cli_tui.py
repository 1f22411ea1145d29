"""``deployster tui`` on the command line: its options, and its mistakes in one line."""

from __future__ import annotations

import os

from deployster.settings import Settings
from tests.test_cli import deployster


def test_tui_help_lists_serve(settings: Settings) -> None:
    result = deployster(dict(os.environ), "tui", "--help")
    assert result.returncode == 0
    assert "--serve" in result.stdout and "deploy server" in result.stdout
