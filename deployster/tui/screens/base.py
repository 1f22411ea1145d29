"""What every dashboard screen shares: typed access to the app and its core."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from textual.screen import Screen

from deployster.service import Deployster

if TYPE_CHECKING:
    from ..app import DeploysterApp


class CoreScreen(Screen[None]):
    @property
    def dapp(self) -> DeploysterApp:
        return cast("DeploysterApp", self.app)

    @property
    def core(self) -> Deployster:
        return self.dapp.core
