"""The projects table: a DataTable that redraws only the cells that changed.

Textual's DataTable keys every rendered cell and line on one table-wide update
counter, and repaints the whole widget on each ``update_cell``: one new TTL
renders every cell and line on screen again. The projects view updates a few
cells every second (TTL, heartbeat, elapsed time, ages), which cost ~30 ms of
CPU a tick (``bench/tui.py``, TTLs ticking on every line of a 160x50 screen). Here

- ``update_cell`` repaints that cell's region only, and stamps the cell and its
  row with a version (the update counter at that change);
- a row's line is rendered here, as DataTable's ``_render_line`` and
  ``_render_line_in_row`` do for a one-line row under a row cursor, and kept
  per row under the row's version, each cell under its own: an unchanged line
  costs a lookup, a changed one renders its changed cells only.

Any other change (rows added, cleared or sorted, columns, a resize) moves the
counter without a stamp: every cell and line is rendered again. The header, and
a table with another cursor type, row labels, fixed rows or columns or taller
rows, go through DataTable's own code (textual is pinned to 8.2: the copied
steps are its).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Self

from rich.cells import cell_len
from rich.console import ConsoleOptions
from rich.padding import Padding
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual._segment_tools import line_crop
from textual.geometry import Region
from textual.renderables.styled import Styled
from textual.strip import Strip
from textual.widgets import DataTable
from textual.widgets._data_table import _EMPTY_TEXT, CellDoesNotExist, default_cell_formatter
from textual.widgets.data_table import ColumnKey, RowKey


@dataclass(frozen=True, slots=True)
class _Frame:
    """What every line of one render pass shares, worked out once a pass."""

    base_style: Style
    odd_style: Style  # zebra stripes (base_style without them)
    even_style: Style
    columns: tuple[tuple[ColumnKey, int], ...]  # in screen order, with render widths
    width: int  # the widget's
    remaining: int  # blank cells after the last column
    scroll_x: int
    first_row: int  # the row index of the line under the header
    top: int  # header lines
    cursor_row: int
    hover_row: int
    show_cursor: bool
    show_hover: bool
    css_foreground: bool  # the cursor's colours: the CSS's over the cell's
    css_background: bool
    options: ConsoleOptions  # the app's, for rich's rendering
    # A line is its cells then the blank after them, as they are: no crop,
    # and cell by cell simplified is simplified (a cell's meta names its
    # column, so no run of one style spans two cells).
    exact: bool
    generation: int  # moves when what a line's look depends on (above) moves


class ProjectsTable(DataTable[Any]):
    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._versions: dict[tuple[RowKey, ColumnKey], int] = {}
        self._row_versions: dict[RowKey, int] = {}
        self._base = self._seen = self._update_count
        self._one_line = True  # every row is one line high
        self._frame: _Frame | None = None  # the current render pass's
        self._in_pass = False  # in render_lines
        self._frame_facts: tuple[object, ...] = ()
        self._generation = 0
        self._metas: dict[tuple[int, int], Style] = {}
        self._lines: dict[RowKey, tuple[tuple[object, ...], Strip]] = {}
        self._cells: dict[tuple[RowKey, ColumnKey], tuple[tuple[object, ...], list[Segment]]] = {}

    # -------------------------------------------------------------- versions
    def _sync(self) -> None:
        if self._update_count != self._seen:  # something else changed: all cells
            self._versions.clear()
            self._row_versions.clear()
            self._base = self._seen = self._update_count

    def _simple(self) -> bool:
        """Whether lines are rendered here (else by DataTable)."""
        return (self.cursor_type == "row" and self._one_line and not self.fixed_rows
                and not self.fixed_columns and not self._should_render_row_labels)

    def add_row(self, *cells: Any, height: int | None = 1, key: str | None = None,
                label: Any = None) -> RowKey:
        if height != 1:
            self._one_line = False
        return super().add_row(*cells, height=height, key=key, label=label)

    def clear(self, columns: bool = False) -> Self:
        super().clear(columns)
        self._one_line = True
        self._update_count += 1  # DataTable's clear leaves the counter: rows are new
        self._lines.clear()
        self._cells.clear()
        return self

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._lines.clear()
        self._cells.clear()

    def update_cell(self, row_key: RowKey | str, column_key: ColumnKey | str, value: Any,
                    *, update_width: bool = False) -> None:
        if update_width or not self._simple():
            self._sync()
            super().update_cell(row_key, column_key, value, update_width=update_width)
            if not update_width:  # widths may move every cell: a change of everything
                self._stamp([(_row_key(row_key), _column_key(column_key))])
            return
        self.update_cells([(row_key, column_key, value)])

    def update_cells(self, changes: Sequence[tuple[RowKey | str, ColumnKey | str, Any]]) -> None:
        """``update_cell`` for each (row, column, value), with one repaint of
        those cells' regions (of those on screen).

        Raises ``CellDoesNotExist`` for a row or column the table does not
        have, updating none."""
        if not self._simple():
            for row_key, column_key, value in changes:
                self.update_cell(row_key, column_key, value)
            return
        self._sync()
        spans = self._column_spans()
        top = self.header_height if self.show_header else 0
        window = self.window_region
        scroll = self.scroll_offset
        cells = []
        regions = []
        for row_key, column_key, _ in changes:
            row_key, column_key = _row_key(row_key), _column_key(column_key)
            row_index = self._row_locations.get(row_key)
            if row_index is None or column_key not in spans:
                raise CellDoesNotExist(
                    f"No cell exists for row_key={row_key!r}, column_key={column_key!r}.")
            cells.append((row_key, column_key))
            x, width = spans[column_key]
            # One-line rows: a row's y is its index.
            region = Region(x, top + row_index, width, 1)
            if window.overlaps(region):
                regions.append(region.translate(-scroll))
        for (row_key, column_key), (_, _, value) in zip(cells, changes, strict=True):
            self._data[row_key][column_key] = value
        self._stamp(cells)
        if regions:
            self.refresh(*regions)

    def _stamp(self, cells: list[tuple[RowKey, ColumnKey]]) -> None:
        """Give ``cells`` (and their rows) a new version: drawn again."""
        self._update_count += 1
        self._seen = version = self._update_count
        for row_key, column_key in cells:
            self._versions[(row_key, column_key)] = self._row_versions[row_key] = version

    def _column_spans(self) -> dict[ColumnKey, tuple[int, int]]:
        """Each column's x and width on a line."""
        spans = {}
        x = self._row_label_column_width
        for column in self.ordered_columns:
            width = column.get_render_width(self)
            spans[column.key] = (x, width)
            x += width
        return spans

    def invalidate(self) -> None:
        """Render every cell again (a header label changed)."""
        self._update_count += 1
        self.refresh()

    # ------------------------------------------------ DataTable's own rendering
    def _render_cell(self, row_index: int, column_index: int, *args: Any,
                     **kwargs: Any) -> Any:
        self._sync()
        real = self._update_count
        key = self._cell_key(row_index, column_index)
        self._update_count = self._versions.get(key, self._base) if key else real
        try:
            return super()._render_cell(row_index, column_index, *args, **kwargs)
        finally:
            self._update_count = real

    def _cell_key(self, row_index: int, column_index: int) -> tuple[RowKey, ColumnKey] | None:
        if row_index < 0 or column_index < 0:
            return None  # the header and row labels: versioned as a whole
        row = self._row_locations.get_key(row_index)
        column = self._column_locations.get_key(column_index)
        return None if row is None or column is None else (row, column)

    # ------------------------------------------------------- rows' own lines
    def render_lines(self, crop: Region) -> list[Strip]:
        self._in_pass = True  # the first row's line works the frame out
        try:
            return super().render_lines(crop)
        finally:
            self._in_pass = False
            self._frame = None

    def render_line(self, y: int) -> Strip:
        if not self._simple() or (self.show_header and y < self.header_height):
            return super().render_line(y)
        frame = self._frame or self._new_frame()
        if self._in_pass:  # kept for the pass's other lines, and for it only
            self._frame = frame
        # One-line rows: the line's row is its index (DataTable's ``_get_offsets``
        # walks every row each time the update counter moved).
        row_index = y - frame.top + frame.first_row
        row_key = self._row_locations.get_key(row_index)
        if row_key is None:
            return Strip.blank(frame.width, frame.base_style)
        return self._row_line(row_key, row_index, frame)

    def _new_frame(self) -> _Frame:
        self._sync()
        base_style = self.rich_style
        odd = even = base_style
        if self.zebra_stripes:
            odd = self.get_component_styles("datatable--odd-row").rich_style
            even = self.get_component_styles("datatable--even-row").rich_style
        columns = tuple((c.key, c.get_render_width(self)) for c in self.ordered_columns)
        width = self.size.width
        remaining = max(0, width - sum(w for _, w in columns) - self._row_label_column_width)
        scroll_x, scroll_y = self.scroll_offset
        top = self.header_height if self.show_header else 0
        show_cursor, show_hover = self.show_cursor, self._show_hover_cursor
        exact = scroll_x == 0 and remaining > 0 and self.cell_padding > 0
        facts = (base_style, odd, even, columns, width, remaining, scroll_x, show_cursor,
                 show_hover, self._pseudo_class_state, self.cell_padding,
                 self.cursor_foreground_priority, self.cursor_background_priority)
        if facts != self._frame_facts:
            self._frame_facts = facts
            self._generation += 1
        return _Frame(base_style, odd, even, columns, width, remaining, scroll_x, scroll_y, top,
                      self.cursor_coordinate.row, self.hover_coordinate.row, show_cursor,
                      show_hover, self.cursor_foreground_priority == "css",
                      self.cursor_background_priority == "css", self.app.console_options,
                      exact, self._generation)

    def _meta(self, row_index: int, column_index: int) -> Style:
        """A cell's meta (what a click reports), made once: ``Style.from_meta``
        costs as much as the rest of a cell. Column -1: the blank after the
        last column."""
        meta = self._metas.get((row_index, column_index))
        if meta is None:
            meta = self._metas[(row_index, column_index)] = Style.from_meta(
                {"row": row_index, "column": 0, "out_of_bounds": True} if column_index < 0
                else {"row": row_index, "column": column_index})
        return meta

    def _row_line(self, row_key: RowKey, row_index: int, frame: _Frame) -> Strip:
        """DataTable's ``_render_line`` of a one-line row, cached under the row's version."""
        cursor = row_index == frame.cursor_row
        hover = row_index == frame.hover_row
        key = (self._row_versions.get(row_key, self._base), row_index, cursor, hover,
               frame.generation)
        cached = self._lines.get(row_key)
        if cached is not None and cached[0] == key:
            return cached[1]
        row_style = frame.odd_style if row_index % 2 else frame.even_style
        segments: list[Segment] = []
        for column_index, (column_key, cell_width) in enumerate(frame.columns):
            segments += self._cell_line(row_key, column_key, row_index, column_index,
                                        row_style, cell_width, cursor, hover, frame)
        extend_style, _ = self._get_styles_to_render_cell(
            False, False, False, hover, cursor, frame.show_cursor, frame.show_hover,
            False, False)
        extend_style = row_style + extend_style + self._meta(row_index, -1)
        segments.append(Segment(" " * frame.remaining, extend_style))
        width = frame.width
        if frame.exact:
            strip = Strip(segments, width)
        else:
            x1 = frame.scroll_x
            strip = Strip(line_crop(segments, x1, x1 + width, width)).adjust_cell_length(
                width, frame.base_style).simplify()
        self._lines[row_key] = (key, strip)
        return strip

    def _cell_line(self, row_key: RowKey, column_key: ColumnKey, row_index: int,
                   column_index: int, row_style: Style, width: int, cursor: bool,
                   hover: bool, frame: _Frame) -> list[Segment]:
        """The line of DataTable's ``_render_cell`` of a data cell, simplified,
        cached under the cell's version."""
        cell_key = (row_key, column_key)
        key = (self._versions.get(cell_key, self._base), row_index, row_style, cursor, hover,
               frame.generation)
        cached = self._cells.get(cell_key)
        if cached is not None and cached[0] == key:
            return cached[1]
        datum = self._data[row_key].get(column_key)
        component_style, post_style = self._get_styles_to_render_cell(
            False, False, False, hover, cursor, frame.show_cursor, frame.show_hover,
            frame.css_foreground, frame.css_background)
        pre_style = row_style + self._meta(row_index, column_index) + component_style
        options = frame.options
        text = _plain_text(datum) if options.justify in _PLAIN_JUSTIFY else None
        padding = self.cell_padding
        fill = width - 2 * padding - (0 if text is None else cell_len(text))
        line: list[Segment]
        if text is not None and fill >= 0:
            # What rich renders for it, simplified (and ~10x faster): padding,
            # the text, blanks to the width and padding in one style
            # (``Segment.apply_style``'s).
            style = pre_style + post_style if pre_style else post_style
            blank = " " * padding
            line = [Segment(f"{blank}{text}{' ' * fill}{blank}", style)]
        else:
            cell = _EMPTY_TEXT if datum is None else (
                default_cell_formatter(datum, wrap=False, height=1) or _EMPTY_TEXT)
            lines = self.app.console.render_lines(
                Styled(Padding(cell, (0, padding)), pre_style=pre_style, post_style=post_style),
                options.update_dimensions(width, 1).update(no_wrap=True))
            line = list(Segment.simplify(lines[0]))
        self._cells[cell_key] = (key, line)
        return line


# Text rich renders as one run in its base style, unchanged, when it fits: no
# markup ([), emoji codes (:), escapes or control characters.
_PLAIN = re.compile(r"[^\[\]:\\\x00-\x1f\x7f]*\Z")
_PLAIN_JUSTIFY = (None, "default")


def _plain_text(datum: object) -> str | None:
    """A cell's text when rich would render it as one unstyled run (a plain
    string, or a Text with no style, spans or layout of its own); else None."""
    if isinstance(datum, str):
        text = datum
    elif (type(datum) is Text and not datum.spans and not datum.style
          and datum.justify in _PLAIN_JUSTIFY and datum.overflow is None):
        text = datum.plain
    else:
        return None
    return text if _PLAIN.match(text) else None


def _row_key(key: RowKey | str) -> RowKey:
    return RowKey(key) if isinstance(key, str) else key


def _column_key(key: ColumnKey | str) -> ColumnKey:
    return ColumnKey(key) if isinstance(key, str) else key
