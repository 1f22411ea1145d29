"""The projects table: a DataTable whose rendered cells survive other cells'
updates.

Textual's DataTable keys every rendered cell on one table-wide update counter,
so a single ``update_cell`` re-renders every cell on screen. The projects view
updates a few cells every second (TTL, heartbeat, elapsed time), which made each
tick repaint ~400 cells (~50 ms of CPU with 500 projects). Here each cell keeps
its own version: the one of its last ``update_cell``, or of the last change
that was not an ``update_cell`` (rows added or cleared, a resize, a sort), so
only the cells that changed are rendered again.
"""

from __future__ import annotations

from typing import Any

from textual.widgets import DataTable
from textual.widgets.data_table import ColumnKey, RowKey


class ProjectsTable(DataTable[Any]):
    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._versions: dict[tuple[RowKey, ColumnKey], int] = {}
        self._base = self._seen = self._update_count

    def _sync(self) -> None:
        if self._update_count != self._seen:  # something else changed: all cells
            self._versions.clear()
            self._base = self._seen = self._update_count

    def update_cell(self, row_key: RowKey | str, column_key: ColumnKey | str, value: Any,
                    *, update_width: bool = False) -> None:
        self._sync()
        super().update_cell(row_key, column_key, value, update_width=update_width)
        if update_width:
            return  # widths may move every cell: leave it a change of everything
        self._seen = self._update_count
        self._versions[(RowKey(row_key) if isinstance(row_key, str) else row_key,
                        ColumnKey(column_key) if isinstance(column_key, str) else column_key)
                       ] = self._update_count

    def invalidate(self) -> None:
        """Render every cell again (a header label changed)."""
        self._update_count += 1
        self.refresh()

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
