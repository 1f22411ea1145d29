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


# Defaults of the settings max_commands and max_command_bytes.
MAX_COMMANDS = 100
MAX_COMMAND_BYTES = 64 * 1024


def check_commands(
    commands: list[str],
    *,
    max_commands: int = MAX_COMMANDS,
    max_command_bytes: int = MAX_COMMAND_BYTES,
) -> None:
    if not commands:
        raise InvalidRequest("'commands' must list at least one command", code="empty_commands")
    if len(commands) > max_commands:
        raise InvalidRequest(
            f"too many commands: {len(commands)} given, at most {max_commands} are allowed "
            "(DEPLOYSTER_MAX_COMMANDS); nothing was queued",
            code="too_many_commands",
        )
    for i, command in enumerate(commands, 1):
        try:
            size = len(command.encode("utf-8"))
        except UnicodeEncodeError:  # a lone surrogate ("\ud800" in the JSON)
            raise InvalidRequest(f"command {i} is not valid Unicode text",
                                 code="invalid_command") from None
        if size > max_command_bytes:
            raise InvalidRequest(
                f"command {i} is {size} bytes long, at most {max_command_bytes} are allowed "
                "(DEPLOYSTER_MAX_COMMAND_BYTES); nothing was queued",
                code="command_too_long",
            )
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


def check_text_fields(**fields: str) -> None:
    """``cd``, ``commit_hash`` and ``ref_name`` are text every store can hold.

    JSON may carry a lone surrogate ("\\ud800"), which no UTF-8 encoder takes
    (a 500 at the first path lookup or Redis write), and NUL, which PostgreSQL
    text refuses (the job's history row could never be written). Both were
    accepted before the issue #5 review; now a 422 and nothing is stored.
    """
    for name, value in fields.items():
        code = "invalid_cd" if name == "cd" else "invalid_field"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidRequest(f"'{name}' is not valid Unicode text", code=code) from None
        if "\x00" in value:
            raise InvalidRequest(f"'{name}' must not contain NUL bytes", code=code)
