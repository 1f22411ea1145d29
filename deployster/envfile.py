"""Writing a stage's variables to ``<cd>/.env``, for the app's dotenv library.

Every value must read back byte for byte in python-dotenv (default settings),
``node --env-file`` and the npm ``dotenv`` package, or be refused when the
pipeline is entered. Run against the readers themselves (``tests/test_envfile.py``
does), they agree on less than their READMEs suggest:

- ``'v'`` is literal in node and npm dotenv; python-dotenv decodes ``\\\\`` and
  ``\\'`` and lets a final ``\\`` escape the closing quote. It carries a value
  with no ``'``, no ``\\\\`` and no final ``\\``.
- ``"v"``: python-dotenv decodes ``\\`` before any of ``\\'"abfnrtv``, node and npm
  dotenv decode ``\\n`` (npm also ``\\r``), npm dotenv keeps ``\\"`` as it is. It
  carries a value with no ``"`` and no ``\\`` that starts one of those escapes or
  ends the value.
- bare ``v``: each reader trims whitespace (each its own set), node and npm dotenv
  cut at any ``#``, a leading quote or backtick opens a quoted value, and npm
  dotenv strips quotes around a piece that follows U+2028 or U+2029.
- backticks are not quotes to python-dotenv, so they are never used.
- python-dotenv expands ``${NAME}`` in every form and has no escape for ``$``:
  every ``${`` is refused, rather than mirroring its grammar.

The file is not meant to be sourced by ``sh`` (a dotenv-exact ``"…$x…"`` is not
shell-exact); commands get the same variables in their environment.

Written atomically (a temp file in the same directory, fsynced, renamed over),
mode 0600 from the first byte; no value can add a line or a variable.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from .models import Stage

# \Z, not $: "$" also matches before a final newline ("KEY\n" would pass).
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
_LINE_BREAKS = ("\n", "\r", "\x00")
# A backslash python-dotenv decodes inside double quotes, or one before the
# closing quote; node and npm dotenv decode \n, npm dotenv \r.
_DOUBLE_QUOTE_ESCAPE = re.compile(r"\\(?:[\\'\"abfnrtv]|\Z)")
# npm dotenv strips a quoted piece that starts a "line" after U+2028/U+2029.
_JS_LINE_THEN_QUOTE = re.compile("[\u2028\u2029][\"'`]")
READERS = "python-dotenv, node --env-file and the npm dotenv"


def _is_space(char: str) -> bool:
    # Python's whitespace (python-dotenv strips it) plus U+FEFF, which JS's
    # String.prototype.trim (npm dotenv) strips too.
    return char.isspace() or char == "\ufeff"


def _single_blockers(value: str) -> list[str]:
    found = []
    if "'" in value:
        found.append("'")
    if "\\\\" in value or value.endswith("\\"):
        found.append("\\")
    return found


def _double_blockers(value: str) -> list[str]:
    found = []
    if '"' in value:
        found.append('"')
    if _DOUBLE_QUOTE_ESCAPE.search(value):
        found.append("\\")
    return found


def _bare_blockers(value: str) -> list[str]:
    found = []
    if value[:1] in ("'", '"'):
        found.append(value[0])
    if value[:1] == "`":
        found.append("a leading `")
    if value and _is_space(value[0]):
        found.append("leading whitespace")
    if value and _is_space(value[-1]):
        found.append("trailing whitespace")
    if "#" in value:
        found.append("#")
    if _JS_LINE_THEN_QUOTE.search(value):
        found.append("U+2028/U+2029 before a quote")
    return found


def value_problem(value: str) -> str | None:
    """Why ``value`` cannot be written to ``.env`` exactly, or None if it can.

    The answer completes "value of KEY …" in a one-line error; it never quotes
    the value (stage values are secrets). See the module docstring for the rules.
    """
    if any(c in value for c in _LINE_BREAKS):
        return "contains a newline, carriage return or NUL, which .env cannot hold safely"
    surrogates = sorted({f"U+{ord(c):04X}" for c in value if "\ud800" <= c <= "\udfff"})
    if surrogates:
        return f"holds a lone surrogate ({', '.join(surrogates)}), which is not text"
    if "${" in value:
        return "holds ${, which python-dotenv expands as a variable in any quoting"
    blockers = [_single_blockers(value), _double_blockers(value), _bare_blockers(value)]
    if not all(blockers):
        return None
    named = list(dict.fromkeys(b for form in blockers for b in form))
    listed = named[0] if len(named) == 1 else f"{', '.join(named[:-1])} and {named[-1]}"
    return f"combines {listed}, which no .env quoting reads back unchanged in {READERS}"


def quote_value(value: str) -> str:
    """``value`` as the right-hand side of a ``.env`` line that all readers agree on.

    Single quotes when they carry it, else double quotes, else bare.
    Raises ValueError (naming no value) when no form does: see ``value_problem``.
    """
    problem = value_problem(value)
    if problem is not None:
        raise ValueError(f"the value {problem}")
    if not _single_blockers(value):
        return f"'{value}'"
    if not _double_blockers(value):
        return f'"{value}"'
    return value


def render_env(stage: Stage, *, job_id: str) -> str:
    """The ``.env`` text for ``stage``: a comment line, then one ``KEY=value`` per variable.

    Raises ValueError naming the stage and key (never the value) for a variable
    that cannot be written exactly: one stored before the rules were enforced.
    """
    lines = [f"# Written by deployster for stage {stage.stage_name!r} (job {job_id})."]
    for var in stage.environment_variables:
        if not _IDENTIFIER.match(var.key):
            raise ValueError(f"{var.key!r} is not a valid variable name")
        problem = value_problem(var.value)
        if problem is not None:
            raise ValueError(
                f"stage {stage.stage_name!r}: value of {var.key} {problem};"
                " change it with 'deployster project edit'"
            )
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
