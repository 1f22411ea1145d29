"""The core imports neither front end's framework (README.md#development): the
CLI and the dashboard must not pay for Quart, and the server must not pay for
Textual.

Each check runs in a fresh interpreter, so what this test process (or another
test) already imported can neither hide nor fake an import. Modules are found
with ``pkgutil``, so a new module is covered the day it is added.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.helpers.paths import REPO

WEB = ("quart", "hypercorn", "quart_schema")
TUI = ("textual",)

# argv: package to walk, then subpackages to leave out. Imports every module
# found (packages are imported only to walk into them, so a left-out package is
# never imported at all) and prints {"modules": [...], "loaded": [...top-level
# names in sys.modules...]} as JSON.
_PROBE = """
import importlib, json, pkgutil, sys

root, skip = sys.argv[1], set(sys.argv[2:])

def walk(package):
    yield package
    module = importlib.import_module(package)
    for info in pkgutil.iter_modules(getattr(module, "__path__", []), package + "."):
        if info.name in skip or info.name.endswith(".__main__"):
            continue  # __main__ runs the CLI when imported
        if info.ispkg:
            yield from walk(info.name)
        else:
            yield info.name

names = list(walk(root))
for name in names:
    importlib.import_module(name)
print(json.dumps({"modules": names, "loaded": sorted({m.split(".")[0] for m in sys.modules})}))
"""


def import_all(package: str, *, skip: tuple[str, ...] = ()) -> tuple[list[str], set[str]]:
    """Import ``package`` and every module under it in a fresh interpreter."""
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, package, *skip],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout.splitlines()[-1])
    return reply["modules"], set(reply["loaded"])


def test_the_core_imports_no_web_or_terminal_framework() -> None:
    modules, loaded = import_all("deployster", skip=("deployster.server", "deployster.tui"))
    # The walk really covered the core: a broken walk must not pass vacuously.
    assert {"deployster", "deployster.cli", "deployster.service", "deployster.store",
            "deployster.history", "deployster.dispatcher", "deployster.runner"} <= set(modules)
    assert not [m for m in modules if m.startswith(("deployster.server", "deployster.tui"))]
    assert loaded & {*WEB, *TUI} == set()


def test_the_server_imports_no_terminal_framework() -> None:
    modules, loaded = import_all("deployster.server")
    assert {"deployster.server.app", "deployster.server.api", "deployster.server.serve"} <= set(
        modules
    )
    # The probe does see a framework when one is imported: the server loads Quart.
    assert set(WEB) <= loaded
    assert loaded & set(TUI) == set()


def test_the_dashboard_imports_no_web_framework() -> None:
    modules, loaded = import_all("deployster.tui")
    assert {"deployster.tui.app", "deployster.tui.screens.projects",
            "deployster.tui.widgets.log_pane"} <= set(modules)
    assert set(TUI) <= loaded
    assert loaded & set(WEB) == set()


# ------------------------------------------- the CI client, served as a file

CLIENT = REPO / "deployster" / "client.py"


def test_the_ci_client_imports_the_standard_library_only() -> None:
    """``GET /client`` hands out this one file: it must run on a CI runner's
    bare python3, so no third-party package and no other deployster module."""
    import ast

    tree = ast.parse(CLIENT.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"relative import in client.py: line {node.lineno}"
            imported.add((node.module or "").split(".")[0])
    assert imported, "the check found no imports at all"
    outside = sorted(imported - set(sys.stdlib_module_names) - {"__future__"})
    assert outside == [], f"client.py imports {outside}"


def test_the_ci_client_runs_on_python_3_8() -> None:
    """GitHub's and most VPSes' python3 is older than ours (ubuntu-22.04: 3.10,
    Debian 11: 3.9): vermin finds any construct newer than 3.8."""
    # Annotations are not evaluated (``from __future__ import annotations``), so
    # ``X | None`` in them is fine on 3.8; everything else counts.
    vermin = Path(sys.executable).with_name("vermin")
    result = subprocess.run(
        [str(vermin), "--target=3.8-", "--violations", "--no-tips", str(CLIENT)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Minimum required versions" in result.stdout  # it did analyse the file
