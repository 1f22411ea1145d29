"""``?``: every key of every screen, read from the bindings themselves."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static


def binding_sections() -> list[tuple[str, list[Binding]]]:
    from ..app import DeploysterApp
    from ..widgets.log_pane import LogPane
    from .confirm import ConfirmScreen
    from .log import LogScreen
    from .project import ProjectScreen
    from .projects import ProjectsScreen

    def only(items: list[BindingType]) -> list[Binding]:
        return [b for b in items if isinstance(b, Binding)]

    return [
        ("everywhere", only(DeploysterApp.BINDINGS)),
        ("projects", only(ProjectsScreen.BINDINGS)),
        ("project", only(ProjectScreen.BINDINGS)),
        ("log (project screen and full log)", only(LogPane.BINDINGS + LogScreen.BINDINGS)),
        ("confirmation", only(ConfirmScreen.BINDINGS)),
    ]


class HelpScreen(ModalScreen[None]):
    BINDINGS = [
        Binding("escape", "dismiss", "Close", id="help.close"),
        Binding("question_mark", "dismiss", "Close", key_display="?", id="help.close2"),
        # q quits, as the "everywhere" section says (a modal hides the app's keys).
        Binding("q", "app.quit", "Quit", id="help.quit"),
    ]

    def compose(self) -> ComposeResult:
        table = Text()
        for section, bindings in binding_sections():
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
