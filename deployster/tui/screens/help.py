"""``?``: every key of every screen, read from the bindings themselves."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

# (section title, its keys): given by the app (``binding_sections`` in app.py), which
# knows every screen; this screen knows none of them.
Sections = list[tuple[str, list[Binding]]]


class HelpScreen(ModalScreen[None]):
    BINDINGS = [
        Binding("escape", "dismiss", "Close", id="help.close"),
        Binding("question_mark", "dismiss", "Close", key_display="?", id="help.close2"),
        # q quits, as the "everywhere" section says (a modal hides the app's keys).
        Binding("q", "app.quit", "Quit", id="help.quit"),
    ]

    def __init__(self, sections: Sections) -> None:
        super().__init__()
        self.sections = sections

    def compose(self) -> ComposeResult:
        table = Text()
        for section, bindings in self.sections:
            table.append(f"{section}\n", style="bold underline")
            for b in bindings:
                table.append(f"  {b.key_display or b.key:<12}", style="bold cyan")
                table.append(f"{b.description}\n")
            table.append("\n")
        with VerticalScroll(id="help-dialog"):
            yield Static("Keys  (esc to close)", id="help-title")
            yield Static(table, id="help-keys")

    async def action_dismiss(self, result: None = None) -> None:
        self.dismiss(None)
