"""Plain-text tables for the command line (``project list``, ``job list``).

A header row, then one line per row; each column as wide as its widest cell
(header included), so no value shifts the columns after it. A column given a
cap cuts longer values with an ellipsis; the last column is never padded.
Widths are terminal cells: a wide (CJK) character takes two, a combining mark
none, so a path in any script stays aligned.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

ELLIPSIS = "…"


def cell_width(text: str) -> int:
    """How many terminal cells ``text`` takes."""
    width = 0
    for char in text:
        if unicodedata.combining(char):
            continue
        width += 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1
    return width


def fit(text: str, cap: int) -> str:
    """``text`` if it fits in ``cap`` cells, else its first ``cap - 1`` cells
    or fewer (a wide character is not split) and an ellipsis."""
    if cell_width(text) <= cap:
        return text
    room = cap - cell_width(ELLIPSIS)
    kept: list[str] = []
    for char in text:
        room -= cell_width(char)
        if room < 0:
            break
        kept.append(char)
    return "".join(kept) + ELLIPSIS


@dataclass(frozen=True)
class Column:
    """``cap``: the most cells a value may take (None: no limit);
    ``right``: right-aligned (numbers)."""

    header: str
    cap: int | None = None
    right: bool = False


def render(columns: Sequence[Column], rows: Sequence[Sequence[str]]) -> list[str]:
    """The table's lines, header first; two spaces between columns."""
    cells = [[c.header for c in columns]]
    for row in rows:
        cells.append([value if c.cap is None else fit(value, c.cap)
                      for c, value in zip(columns, row, strict=True)])
    widths = [max(cell_width(line[i]) for line in cells) for i in range(len(columns))]
    lines = []
    for line in cells:
        parts = []
        for i, (column, value) in enumerate(zip(columns, line, strict=True)):
            pad = " " * (widths[i] - cell_width(value))
            last = i == len(columns) - 1
            parts.append(pad + value if column.right else value + ("" if last else pad))
        lines.append("  ".join(parts))
    return lines
