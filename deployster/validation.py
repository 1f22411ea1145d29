"""Rules a deploy request must pass before anything is stored (SPEC §4)."""

from __future__ import annotations

import re

from .errors import InvalidRequest

# The seed's safety rule: the job must end by (re)starting its supervisor program.
# Accepts an optional sudo, a path to the binary, a -c config file, and one or more
# program names (supervisor's group:* syntax included), nothing chained after.
_LAST_COMMAND = re.compile(
    r"""^\s*(?:sudo\s+(?:-n\s+)?)?(?:/[^\s;&|]*/)?supervisorctl
        (?:\s+-c\s+[^\s;&|`$()<>]+)?
        \s+(?:start|restart)
        (?:\s+[A-Za-z0-9_.:*@+-]+)+\s*\Z""",
    re.VERBOSE,
)


def check_commands(commands: list[str]) -> None:
    if not commands:
        raise InvalidRequest("'commands' must list at least one command", code="empty_commands")
    for i, command in enumerate(commands, 1):
        if not command.strip():
            raise InvalidRequest(f"command {i} is empty", code="empty_command")
        if "\x00" in command:
            raise InvalidRequest(f"command {i} contains a NUL byte", code="invalid_command")
    if not _LAST_COMMAND.match(commands[-1]):
        raise InvalidRequest(
            "the last command must be 'supervisorctl start <program>' or "
            f"'supervisorctl restart <program>', got {commands[-1]!r}; nothing was queued",
            code="invalid_last_command",
        )
