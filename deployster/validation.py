"""Rules a deploy request must pass before anything is stored
(docs/api.md#post-deploy)."""

from __future__ import annotations

import re

from .errors import InvalidRequest
from .printable import describe_control, escape_char, find_control

# The seed's safety rule: the job must end by (re)starting its supervisor program,
# so the last command is exactly that and nothing else runs after it. Accepts an
# optional sudo, a path to the binary, a -c config file, and one or more program
# names (supervisor's group:* syntax included). Words are separated by spaces or
# tabs only: ``\s`` also matches a newline, and "supervisorctl restart app\nid" ran
# ``id`` after the restart. Paths hold no character the shell gives a meaning to.
_PATH = r"[A-Za-z0-9_.+@%,:=~/-]"
_LAST_COMMAND = re.compile(
    rf"""[ \t]*(?:sudo[ \t]+(?:-n[ \t]+)?)?(?:/{_PATH}*/)?supervisorctl
        (?:[ \t]+-c[ \t]+{_PATH}+)?
        [ \t]+(?:start|restart)
        (?:[ \t]+[A-Za-z0-9_.:*@+-]+)+[ \t]*""",
    re.VERBOSE,
)
# What chains another command in sh, longest first, and how the 422 says so.
_CHAINS = (
    ("&&", "chains another command with '&&'"),
    ("||", "chains another command with '||'"),
    ("$(", "runs a command substitution '$('"),
    ("`", "runs a command substitution '`'"),
    (";", "chains another command with ';'"),
    ("|", "pipes into another command with '|'"),
    ("&", "chains another command with '&'"),
    (">", "redirects with '>'"),
    ("<", "redirects with '<'"),
)
_LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


def _last_command_problem(command: str) -> str:
    """What is wrong with ``command`` as the last command (a verb phrase)."""
    for char in command:
        if char in _LINE_BREAKS:
            return f"has a line break '{escape_char(char)}' (nothing may follow on another line)"
    for token, what in _CHAINS:
        if token in command:
            return what
    control = find_control(command.replace("\t", " "))
    if control is not None:
        return f"holds {describe_control(control)}"
    return "is not of that form"


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
    last = commands[-1]
    if not _LAST_COMMAND.fullmatch(last):
        raise InvalidRequest(
            "the last command must be exactly 'supervisorctl start <program>' or "
            "'supervisorctl restart <program>' (a program or group:* name) with nothing "
            f"chained after it; {last!r} {_last_command_problem(last)}; nothing was queued",
            code="invalid_last_command",
        )


def check_text_fields(**fields: str) -> None:
    """Every field of a request that is no command (``cd``, ``commit_hash``,
    ``ref_name``): text every store can hold, and no control character.

    JSON may carry a lone surrogate ("\\ud800"), which no UTF-8 encoder takes
    (a 500 at the first path lookup or Redis write), and NUL, which PostgreSQL
    text refuses (the job's history row could never be written). A newline, CR
    or ESC was printed as is in the job's header line, so a request could write
    a line such as ``[deployster] job complete`` into its own log (the control
    characters are those of ``printable.find_control``). Raises InvalidRequest
    (422, ``invalid_cd`` for ``cd``, else ``invalid_field``) naming the field;
    nothing is stored.
    """
    for name, value in fields.items():
        code = "invalid_cd" if name == "cd" else "invalid_field"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidRequest(f"'{name}' is not valid Unicode text", code=code) from None
        if "\x00" in value:
            raise InvalidRequest(f"'{name}' must not contain NUL bytes", code=code)
        control = find_control(value)
        if control is not None:
            raise InvalidRequest(
                f"'{name}' must not contain control characters (line breaks, carriage "
                f"returns, escapes…); found {describe_control(control)}; nothing was queued",
                code=code,
            )
