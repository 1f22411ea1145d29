"""A yes/no modal that says exactly what will happen before it happens."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Static


class ConfirmScreen(ModalScreen[bool]):
    """Dismisses with True on ``y``, False on ``n`` or escape."""

    # A 24-line terminal: no padding, one-line buttons, so that every fact and
    # both buttons fit on screen.
    VERTICAL_BREAKPOINTS = [(0, "-short"), (32, "-tall")]

    BINDINGS = [
        Binding("y", "confirm", "Yes, do it", id="confirm.yes"),
        Binding("n", "cancel", "No", id="confirm.no"),
        Binding("escape", "cancel", "Cancel", id="confirm.escape"),
        # A modal hides the app's keys: q quits here too (nothing is done).
        Binding("q", "app.quit", "Quit", id="confirm.quit"),
    ]

    def __init__(
        self, title: str, facts: list[tuple[str, Text | str]], consequence: str,
        *, warning: str | None = None, confirm_label: str = "Yes (y)",
    ) -> None:
        super().__init__()
        self.title_text = title
        self.facts = facts
        self.consequence = consequence
        self.warning = warning
        self.confirm_label = confirm_label

    def compose(self) -> ComposeResult:
        width = max((len(label) for label, _ in self.facts), default=0)
        body = Text()
        for label, value in self.facts:
            body.append(f"{label:<{width}}  ", style="bold")
            body.append(value if isinstance(value, Text) else Text(str(value)))
            body.append("\n")
        body.rstrip()
        # markup=False: these hold a request's text (a commit in the title) and
        # error messages, which a "[" must not turn into styles or a crash.
        with Vertical(id="confirm-dialog"):
            yield Static(self.title_text, id="confirm-title", markup=False)
            yield Static(body, id="confirm-facts")
            if self.warning:
                yield Static(self.warning, id="confirm-warning", markup=False)
            yield Static(self.consequence, id="confirm-consequence", markup=False)
            with Horizontal(id="confirm-buttons"):
                yield Button(self.confirm_label, variant="error", id="yes")
                yield Button("No (n / esc)", variant="primary", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_confirm(self) -> None:
        self.dismiss(True)

    def action_cancel(self) -> None:
        self.dismiss(False)
