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

from deployster.tui.demo import demo_app, demo_log_screen, demo_overview, demo_project_screen
from deployster.tui.messages import DataRefreshed

SIZE = (130, 32)


async def _project(pilot: Pilot[Any]) -> None:
    await pilot.app.push_screen(demo_project_screen())


async def _log(pilot: Pilot[Any]) -> None:
    await pilot.app.push_screen(demo_log_screen())


async def _log_search(pilot: Pilot[Any]) -> None:
    await _log(pilot)
    await pilot.pause()
    await pilot.press("t", "slash", *"modules", "enter")


async def _no_runner(pilot: Pilot[Any]) -> None:
    """No deploy server alive: the header, the runners' jobs, the queues."""
    overview = demo_overview(runners=frozenset())
    pilot.app.overview = overview  # type: ignore[attr-defined]
    pilot.app.screen.post_message(DataRefreshed(overview))


SHOTS: dict[str, tuple[str, ...] | Callable[[Pilot[Any]], Awaitable[None]]] = {
    "projects": (),
    "no-runner": _no_runner,
    "filter": ("slash", "w", "o", "r", "enter"),
    "unlock-stale-lock": ("down",) * 9 + ("u",),  # worker, the last row: STALE
    "project": _project,
    "log": _log,
    "log-search-timestamps": _log_search,
    "keys": ("question_mark",),
}
# The same views on an 80x24 terminal (the compact layout).
SMALL = (80, 24)
SMALL_SHOTS = ("projects", "project", "unlock-stale-lock")
# Over three nodes, one down (``demo_app(fleet=True)``: README.md#several-hosts).
FLEET_SHOTS: dict[str, tuple[str, ...]] = {"fleet": ()}


async def settled(pilot: Pilot[Any], *, title: str, tries: int = 40) -> str:
    """The screen once it stops changing: two renders 0.1 s apart agree (the
    footer, say, recomposes a moment after focus moves)."""
    last = ""
    for _ in range(tries):
        await pilot.pause(0.1)
        svg = pilot.app.export_screenshot(title=title)
        if svg == last:
            return svg
        last = svg
    return last


async def shoot(name: str, steps: tuple[str, ...] | Callable[[Pilot[Any]], Awaitable[None]],
                out: Path, *, size: tuple[int, int] = SIZE, fleet: bool = False) -> Path:
    app = demo_app(fleet=fleet)
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        if callable(steps):
            await steps(pilot)
        else:
            await pilot.press(*steps)
        svg = await settled(pilot, title=f"deployster · {name}")
    path = out / f"{name}.svg"
    path.write_text(svg)
    return path


def to_png(svg: Path) -> Path | None:
    png = svg.with_suffix(".png")
    if shutil.which("rsvg-convert"):
        # rsvg draws Textual's non-breaking spaces zero-wide and stretches the
        # rest of each run to fit (``textLength``): words run together. Plain
        # spaces, preserved, keep every cell where the terminal had it.
        text = svg.read_text().replace("&#160;", " ").replace(
            "<svg ", '<svg xml:space="preserve" ', 1)
        subprocess.run(["rsvg-convert", "-o", str(png)], input=text.encode(), check=True)
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
    for name in SMALL_SHOTS:
        svg = await shoot(f"{name}-80x24", SHOTS[name], out, size=SMALL)
        png = to_png(svg)
        print(f"wrote {svg}" + (f" and {png.name}" if png else ""))
    for name, keys in FLEET_SHOTS.items():
        svg = await shoot(name, keys, out, fleet=True)
        png = to_png(svg)
        print(f"wrote {svg}" + (f" and {png.name}" if png else ""))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="regenerate the dashboard's screenshots")
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).resolve().parent.parent / "screenshots")
    asyncio.run(main(parser.parse_args().out))
