"""The dashboard's modules import each other one way only.

The app knows every screen, screens know widgets and the reader, and nothing
knows the app: a screen needing the app (the ``?`` screen listing its keys, a
control reaching for its core) would be an import cycle, which a function-level
import hides until the day the import order changes. So the static import
graph of ``deployster/tui`` (every import: module level, under
``TYPE_CHECKING`` and inside functions alike) must have no cycle, imports sit
at the top of their module, and each module imports first on its own.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from tests.helpers.paths import REPO

TUI = REPO / "deployster" / "tui"
PACKAGE = "deployster.tui"

# Imports left inside a function on purpose: "module:line" -> why it cannot be
# at the top. None today; a new one needs a reason a reader can check.
DEFERRED: dict[str, str] = {}


def _modules(root: Path, package: str) -> dict[str, Path]:
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path, known: set[str]) -> Iterator[tuple[ast.stmt, str]]:
    """(import statement, module of ``known`` it imports) for every import in
    the file, wherever it stands."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = importlib.util.resolve_name("." * node.level + (node.module or ""), package)
            # ``from package import module`` imports that module.
            targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        for target in targets:
            if target in known:
                yield node, target


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports."""
    modules = _modules(root, package)
    return {name: {target for _, target in _imports(name, path, set(modules))} - {name}
            for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (its modules, the first repeated at the end), or None."""
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        if node in path:
            return [*path[path.index(node):], node]
        if node in done:
            return None
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if (cycle := visit(target)) is not None:
                return cycle
        path.pop()
        done.add(node)
        return None

    for node in sorted(graph):
        if (cycle := visit(node)) is not None:
            return cycle
    return None


def function_level_imports(root: Path, package: str) -> list[str]:
    """"module:line" of every import inside a function or class body."""
    found = []
    for name, path in _modules(root, package).items():
        tree = ast.parse(path.read_text(), str(path))
        for scope in ast.walk(tree):
            if not isinstance(scope, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                continue
            found += [f"{name}:{node.lineno}" for node in ast.walk(scope)
                      if isinstance(node, ast.Import | ast.ImportFrom)]
    return sorted(set(found))


def test_the_dashboard_has_no_import_cycle() -> None:
    graph = import_graph(TUI, PACKAGE)
    # The walk saw the package: a broken walk must not pass vacuously.
    assert {"deployster.tui.reader", "deployster.tui.screens.help",
            "deployster.tui.screens.projects"} <= graph["deployster.tui.app"]
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle or [])
    # Nothing below the app knows it (the one module that knows every screen).
    assert [m for m, targets in graph.items() if "deployster.tui.app" in targets] == [
        "deployster.tui.demo"]


def test_the_cycle_check_sees_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"b"}}) is None


def test_imports_sit_at_the_top_of_their_module() -> None:
    found = function_level_imports(TUI, PACKAGE)
    assert found == sorted(DEFERRED), "imports inside functions (move them to the top, " \
        f"or say in DEFERRED why they cannot be): {found}"


def core_users(root: Path, package: str, core_module: str) -> set[str]:
    """Dashboard modules importing functions (reads or acts, not data classes)
    of ``core_module``, or the module itself."""
    functions = {name for name, value in vars(importlib.import_module(core_module)).items()
                 if inspect.isfunction(value)}
    parent, _, leaf = core_module.rpartition(".")
    users = set()
    for name, path in _modules(root, package).items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import) and any(a.name == core_module for a in node.names):
                users.add(name)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and (
                    (node.module == core_module and {a.name for a in node.names} & functions)
                    or (node.module == parent and leaf in {a.name for a in node.names})):
                users.add(name)
    return users


def test_the_core_is_read_in_one_place_and_acted_on_in_one_place() -> None:
    """Screens and widgets read through the reader they are given (one data
    path, not some reading the app's state and others the core); the
    operator's controls are the screens' methods in ``screens/base.py``."""
    assert core_users(TUI, PACKAGE, "deployster.overview") == {"deployster.tui.reader"}
    assert core_users(TUI, PACKAGE, "deployster.control") == {"deployster.tui.screens.base"}


# Forgets every dashboard module, then imports one: a cycle through it fails
# ("partially initialized module") when entered from there. Textual and the
# core stay loaded: they are not what is checked, and loading them once keeps
# the check to one interpreter instead of one per module.
_PROBE = """
import importlib, sys
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m == "deployster.tui" or
                   m.startswith("deployster.tui.")]:
        del sys.modules[loaded]
    importlib.import_module(name)
print("ok", len(sys.argv) - 1)
"""


def test_each_module_imports_first_on_its_own() -> None:
    names = sorted(_modules(TUI, PACKAGE))
    assert len(names) > 15
    result = subprocess.run([sys.executable, "-c", _PROBE, *names], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ok", str(len(names))]
