"""Text a request sends that ends up on someone's screen: kept from passing
for deployster's own output.

A job's log is read on terminals (the CI client prints it byte for byte) and
its header lines (``[deployster] job … · ref …``, ``[2/4] $ yarn build``) are
what a reader trusts. Two rules keep a request from forging them:

* Fields that are no command (``cd``, ``commit_hash``, ``ref_name``, stage names
  and branches, project paths) may not hold a control character at all:
  ``find_control`` finds the first one, and validation refuses the field.
* Commands may span lines (a heredoc, a multi-line script), so their header is
  built by ``command_header``: every continuation line is marked, and every
  other control character is shown escaped, so no line of it starts where
  deployster's own lines start and no carriage return or escape sequence can
  rewrite a line on a terminal.

"Control character" means the C0 controls (ESC included), DEL, the C1 controls
and the Unicode line and paragraph separators (U+2028, U+2029), which some
viewers break lines at.
"""

from __future__ import annotations

import re

# A regex character class (without the brackets) of the control characters.
CONTROL_CLASS = "\x00-\x1f\x7f-\x9f\u2028\u2029"
_CONTROL = re.compile(f"[{CONTROL_CLASS}]")
_CONTROL_NOT_NEWLINE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029]")
# Escapes as Python and JSON write them, so a reader recognises them.
_NAMED = {"\t": "\\t", "\r": "\\r", "\n": "\\n", "\b": "\\b", "\f": "\\f"}
# What starts each continuation line of a multi-line command's header: no line of
# deployster's own starts with a space.
CONTINUATION = "    > "


def find_control(text: str) -> str | None:
    """The first control character in ``text``, or None."""
    found = _CONTROL.search(text)
    return found.group() if found else None


def describe_control(char: str) -> str:
    """A control character as a reader can name it: ``'\\n' (a line break)``."""
    what = {"\n": "a line break", "\r": "a carriage return", "\x1b": "ESC, an escape",
            "\t": "a tab", "\u2028": "a line separator", "\u2029": "a paragraph separator"}
    name = what.get(char, "a control character")
    return f"'{escape_char(char)}' ({name})"


def escape_char(char: str) -> str:
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_controls(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` with each control character written as its escape (``\\x1b``,
    ``\\r``); with ``keep_newlines`` a ``\\n`` stays a line break."""
    pattern = _CONTROL_NOT_NEWLINE if keep_newlines else _CONTROL
    if not pattern.search(text):
        return text
    return pattern.sub(lambda m: escape_char(m.group()), text)


def command_header(index: int, total: int, command: str) -> str:
    """The log line (newline included) announcing command ``index`` of ``total``.

    ``[2/4] $ yarn build``; a multi-line command goes on with one
    ``    > `` line per further line, and control characters other than those
    line breaks are shown escaped (see the module docstring).
    """
    first, *rest = escape_controls(command, keep_newlines=True).split("\n")
    lines = [f"[{index}/{total}] $ {first}", *(CONTINUATION + line for line in rest)]
    return "\n".join(lines) + "\n"
