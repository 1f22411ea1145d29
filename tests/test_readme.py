"""The README keeps the user's original examples verbatim and starts with the
two set-up commands (install + serve, install + test)."""

from __future__ import annotations

import re
from pathlib import Path

from deployster.settings import Settings

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()
# The seed guide's two examples, verbatim (tests/server/test_seed_guide.py checks
# them against the guide wherever it is at hand).
SEED = Path(__file__).resolve().parent / "fixtures" / "seed"


def fenced_blocks(text: str) -> list[str]:
    return [m.group(1) for m in re.finditer(r"```[a-z]*\n(.*?)```", text, re.S)]


def test_readme_opens_with_the_two_commands() -> None:
    first = fenced_blocks(README)[0]
    commands = [line for line in first.splitlines() if line and not line.startswith("#")]
    assert len(commands) == 2
    assert "pip install ." in commands[0] and "deployster serve" in commands[0]
    assert "pip install -e '.[test]'" in commands[1] and "pytest" in commands[1]
    assert README.index(first) < 1200, "the commands belong in the README's first lines"


def test_readme_carries_the_seed_examples_unchanged() -> None:
    workflow = (SEED / "workflow.yml").read_text(encoding="utf-8")
    curl = (SEED / "local-curl.sh").read_text(encoding="utf-8")
    readme_blocks = fenced_blocks(README)
    assert curl in readme_blocks
    # The workflow's steps are the seed's, line for line (comments aside).
    steps = workflow[workflow.index("      - name: Trigger deploy") :]
    assert any(steps in block for block in readme_blocks)


def test_every_setting_is_in_the_configuration_table() -> None:
    table = README[README.index("## Configuration"):]
    table = table[:table.index("\n## ")]
    missing = [name for name in Settings.model_fields
               if f"`DEPLOYSTER_{name.upper()}`" not in table]
    assert missing == [], f"settings the README does not document: {missing}"
