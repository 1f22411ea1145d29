"""The projects table draws exactly what Textual's DataTable draws for the same
cells (it renders rows and cells itself, and only those that changed), through
updates, the cursor moving, a narrow screen and a resize."""

from __future__ import annotations

from typing import Any

import pytest
from rich.text import Text
from textual.app import App, ComposeResult
from textual.geometry import Region
from textual.widgets import DataTable
from textual.widgets.data_table import CellDoesNotExist

from deployster.tui.widgets.projects_table import ProjectsTable

# Plain strings (the fast path), markup, emoji codes, too long for the column,
# empty, styled and spanned Text, and what is not text at all.
CELLS: list[Any] = [
    "9m 59s",
    "—",
    "",
    "no expiry",
    "a[bold]b[/]",
    ":smile: x",
    "a much too long value",
    Text("none"),
    Text("plain", style="bold"),
    Text.assemble(("✔", "green"), " 4m ago"),
    Text("STALE 12s"),
    42,
    3.5,
    None,
    "ends  ",
    "  starts",
    "ünïcödé",
    "全角",
]


class Tables(App[None]):
    AUTO_FOCUS = None  # neither table focused: the same pseudo-classes

    def compose(self) -> ComposeResult:
        yield ProjectsTable(id="ours", cursor_type="row", zebra_stripes=True)
        yield DataTable(id="theirs", cursor_type="row", zebra_stripes=True)


def tables(app: App[None]) -> tuple[ProjectsTable, DataTable[Any]]:
    return app.query_one("#ours", ProjectsTable), app.query_one("#theirs", DataTable)


def lines(table: DataTable[Any]) -> list[list[tuple[str, object]]]:
    """Every line on screen, as (text, style) runs: what the terminal shows."""
    width, height = table.size
    return [
        [(s.text, s.style) for s in strip]
        for strip in table.render_lines(Region(0, 0, width, height))
    ]


async def same(app: App[None], pilot: Any) -> None:
    await pilot.pause()
    ours, theirs = tables(app)
    assert lines(ours) == lines(theirs)


async def test_the_table_draws_what_a_datatable_draws() -> None:
    app = Tables()
    async with app.run_test(size=(120, 40)) as pilot:
        for table in tables(app):
            table.styles.height = 18
            for key, width in (("a", None), ("b", 12), ("c", 8), ("d", None)):
                table.add_column(key.upper(), key=key, width=width)
            for i in range(30):
                n = len(CELLS)
                table.add_row(
                    CELLS[i % n],
                    CELLS[(i + 3) % n],
                    CELLS[(i + 7) % n],
                    CELLS[(i + 11) % n],
                    key=str(i),
                )
        await same(app, pilot)

        ours, theirs = tables(app)
        for i, value in enumerate(["9m 58s", Text("1m 02s"), "x[y]", Text.assemble(("✘", "red"))]):
            ours.update_cells([(str(i), "b", value), (str(i + 1), "c", CELLS[i])])
            theirs.update_cell(str(i), "b", value)
            theirs.update_cell(str(i + 1), "c", CELLS[i])
            await same(app, pilot)
        ours.update_cell("2", "a", "new")
        theirs.update_cell("2", "a", "new")
        await same(app, pilot)
        with pytest.raises(CellDoesNotExist):  # one unknown cell: none updated
            ours.update_cells([("3", "a", "lost"), ("nope", "a", "x")])
        await same(app, pilot)

        for row in (1, 5, 29, 0):  # the cursor's row is drawn apart
            for table in tables(app):
                table.move_cursor(row=row, animate=False)
            await same(app, pilot)
        seen = []
        for table in tables(app):  # focused, as on the projects screen
            table.focus()
            await pilot.pause()
            seen.append(lines(table))
        assert seen[0] == seen[1]
        app.set_focus(None)
        seen = []
        for table in tables(app):  # the mouse over a row
            await pilot.hover(f"#{table.id}", offset=(3, 4))
            seen.append(lines(table))
        assert seen[0] == seen[1]
        await pilot.hover(None, offset=(0, 38))  # off both tables
        for table in tables(app):  # rows scrolled off and back
            table.scroll_to(y=10, animate=False)
        ours.update_cells([("12", "b", "scrolled")])
        theirs.update_cell("12", "b", "scrolled")
        await same(app, pilot)

        await pilot.resize_terminal(30, 40)  # narrower than the table: cropped
        await same(app, pilot)
        for table in tables(app):
            table.scroll_to(x=6, animate=False)
        await same(app, pilot)
        await pilot.resize_terminal(120, 40)
        for table in tables(app):
            table.clear()
            table.add_row("after", "a", "clear", "!", key="0")
        await same(app, pilot)
