"""Regenerate ``screenshots/`` from the dashboard's demo data (SVG, plus PNG when
``rsvg-convert`` or ``cairosvg`` is available).

    python scripts/screenshots.py [--out screenshots]

The data (``deployster.tui.demo``) and the clock are fixed, so the pictures
change only when the dashboard does.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from textual.pilot import Pilot

from deployster.tui.demo import DEMO_LOG, demo_app
from deployster.tui.screens.log import LogScreen

SIZE = (130, 32)


async def _log(pilot: Pilot[Any]) -> None:
    await pilot.app.push_screen(LogScreen("01JDQ7M2X4Y9K3TB5R8W1FAF3", text=DEMO_LOG))




SHOTS: dict[str, tuple[str, ...] | Callable[[Pilot[Any]], Awaitable[None]]] = {
    "projects": (),
    "filter": ("slash", "w", "o", "r", "enter"),
    "unlock-stale-lock": ("down", "down", "down", "u"),
    "log": _log,
    "keys": ("question_mark",),
}


async def shoot(name: str, steps: tuple[str, ...] | Callable[[Pilot[Any]], Awaitable[None]],
                out: Path) -> Path:
    app = demo_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        if callable(steps):
            await steps(pilot)
        else:
            await pilot.press(*steps)
        await pilot.pause(0.3)
        svg = app.export_screenshot(title=f"deployster · {name}")
    path = out / f"{name}.svg"
    path.write_text(svg)
    return path


def to_png(svg: Path) -> Path | None:
    png = svg.with_suffix(".png")
    if shutil.which("rsvg-convert"):
        subprocess.run(["rsvg-convert", "-o", str(png), str(svg)], check=True)
        return png
    try:
        import cairosvg  # optional
    except ImportError:
        return None
    cairosvg.svg2png(url=str(svg), write_to=str(png))
    return png


async def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, steps in SHOTS.items():
        svg = await shoot(name, steps, out)
        png = to_png(svg)
        print(f"wrote {svg}" + (f" and {png.name}" if png else ""))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="regenerate the dashboard's screenshots")
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).resolve().parent.parent / "screenshots")
    asyncio.run(main(parser.parse_args().out))
