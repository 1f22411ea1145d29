"""``deployster tui`` on the command line: its options, and its mistakes in one line."""

from __future__ import annotations

import os

from deployster.settings import Settings
from tests.helpers.server import settings_env
from tests.test_cli import deployster


def test_tui_help_lists_serve(settings: Settings) -> None:
    result = deployster(dict(os.environ), "tui", "--help")
    assert result.returncode == 0
    assert "--serve" in result.stdout and "deploy server" in result.stdout


def test_tui_serve_without_a_token_is_one_clear_line(settings: Settings) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEPLOYSTER_")}
    env.update({k: v for k, v in settings_env(settings).items() if k != "DEPLOYSTER_TOKEN"})
    result = deployster(env, "tui", "--serve")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "token" in result.stderr.lower()
