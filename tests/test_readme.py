"""The README starts with the two set-up commands (install + serve, install +
test), keeps the user's original examples with only their two mistakes
corrected, and documents every setting and every metric. Its "First ten minutes" runs for real in
tests/test_first_ten_minutes.py, its curl example in
tests/server/test_seed_guide.py."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from deployster import metrics
from deployster.models import Project
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


# Where the README's copies of the seed's two examples differ from the seed, and
# nothing else (README.md#curl): printf, so "\n" is a line break under bash (the
# seed's echo printed it as is); in the curl example an unquoted heredoc, so
# $(git rev-parse HEAD) is run (the seed's quoted one sent the text itself).
STATUS_LINES = [(f'echo "\\n{what}"', f"printf '\\n{what}\\n'")
                for what in ("Deployment complete", "Deployment failed", "Job not found")]
HEREDOC = [("<<'JSON' | tee", "<<JSON | tee")]


def corrected(text: str, corrections: list[tuple[str, str]]) -> str:
    for seed, ours in corrections:
        assert seed in text, seed
        text = text.replace(seed, ours)
    return text


def test_readme_carries_the_seed_examples_corrected() -> None:
    workflow = (SEED / "workflow.yml").read_text(encoding="utf-8")
    curl = (SEED / "local-curl.sh").read_text(encoding="utf-8")
    readme_blocks = fenced_blocks(README)
    assert corrected(curl, HEREDOC + STATUS_LINES) in readme_blocks
    # The workflow's steps are the seed's, line for line (comments aside).
    steps = workflow[workflow.index("      - name: Trigger deploy") :]
    assert any(corrected(steps, STATUS_LINES) in block for block in readme_blocks)
    # The seed's mistakes are not in it.
    assert curl not in README and steps not in README
    for seed, _ in STATUS_LINES:
        assert seed not in README


def test_no_readme_example_quotes_a_heredoc_that_needs_the_shell() -> None:
    """A command substitution in a quoted heredoc is sent as text (the seed's
    mistake); in the workflow, ${{ … }} is filled in before the shell runs."""
    for block in fenced_blocks(README):
        for heredoc in re.finditer(r"<<'(\w+)'.*?\n(.*?)^\s*\1$", block, re.S | re.M):
            assert "$(" not in heredoc.group(2) and "`" not in heredoc.group(2), block


def test_every_setting_is_in_the_configuration_table() -> None:
    table = README[README.index("## Configuration"):]
    table = table[:table.index("\n## ")]
    missing = [name for name in Settings.model_fields
               if f"`DEPLOYSTER_{name.upper()}`" not in table]
    assert missing == [], f"settings the README does not document: {missing}"


def test_the_metrics_section_names_what_the_page_shows() -> None:
    """Its table lists every metric family of ``GET /metrics`` and no other, and
    its sample alert rules are a rule file that uses only those."""
    section = README[README.index("## Metrics"):]
    section = section[:section.index("\n## ")]
    project = Project(id=1, name="app", path="/srv/app")
    state = metrics.ProjectState(project, None, -2, 0, None, False, None, None, {})
    shown = {f.name + ("_total" if f.type == "counter" else "")
             for f in metrics.StateCollector(metrics.Snapshot(0.0, [state], {}, {}, 0)).collect()}
    listed = set(re.findall(r"^\| `(deployster_\w+)` \|", section, re.M))
    assert listed == shown
    rules = next(b for b in fenced_blocks(section) if b.startswith("groups:"))
    parsed = yaml.safe_load(rules)
    alerts = [rule["alert"] for group in parsed["groups"] for rule in group["rules"]]
    assert alerts == ["DeployFailed", "DeployQueueStuck", "DeployLockStale", "DeployNodeDown"]
    used = {re.sub(r"_(bucket|sum|count)$", "", name)
            for name in re.findall(r"\bdeployster_\w+", rules)}
    assert used and used <= shown, used - shown
