"""The stage ``.env`` (deployster/envfile.py), read by the real dotenv readers.

Every stage value either reads back byte for byte in python-dotenv (default
settings), ``node --env-file`` and the npm ``dotenv``, or ``deployster project
add`` refuses it with one line naming the key and the characters at fault. A
refused value is one that no quoting carries through all three (checked here
against the readers too, so the rule is not stricter than it must be). The
commands get the same variables in their environment, exactly as set.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from dotenv import dotenv_values

from deployster import store
from deployster.envfile import render_env, value_problem
from deployster.models import EnvVar, Stage
from deployster.service import Deployster
from deployster.settings import Settings
from tests.helpers.cli import one_line_error
from tests.helpers.deploys import deploy_body, wait_for_status
from tests.helpers.server import LiveServer, serving, settings_env
from tests.test_cli import deployster, ok

# Values that must reach the app exactly. The comment says which quoting the
# writer is expected to pick, for the reader of this list; the test does not care.
ACCEPTED = [
    "pa'ss$word",  # "…": the value from the field report
    "plain",
    "",
    "$HOME and $$ and a$",  # '…': no reader expands $NAME without braces
    "it's",
    "'leading single",
    "trailing single'",
    'say "hi"',
    '"',
    "'",
    "`backticks` and `id`",
    "`",
    "back\\slash",
    "\\n as two characters",
    "C:\\\\server\\\\share",  # bare: two backslashes garble both quotings
    "ends with a backslash\\",  # bare
    "it's \\n",  # bare: ' rules out '…', \n rules out "…"
    "it's\\\\",  # bare
    "it's \"both\"",  # bare
    "a'b\"c`d$e\\f",  # bare
    "x ' \\ y",  # "…": \<space> is no escape anywhere
    "it's 100%",
    "a # not a comment",
    "#",
    "#hash first",
    "  padded both sides  ",
    "\ttab first",
    "key=value=more",
    "ünïcödé ✓ 😀 中文",
    "\u00a0no-break spaces\u00a0",
    "\ufeffbyte order mark",
    "line\u2028separator\u2029",
    "it's\u2028'x' fine in double quotes",
    "$(id) ; rm -rf / `id` && echo",
    "{curly} [square] (round) <angle>",
    "-dash first",
    "=equals first",
]

# Values no quoting carries, and what the one-line error must name.
REFUSED: dict[str, str] = {
    "it's \"quoted\" #1": "combines ', \" and #,",
    " it's \"x\"": "combines ', \" and leading whitespace,",
    "it's \"x\" ": "combines ', \" and trailing whitespace,",
    "'\"": "combines ' and \",",
    "\"it's\"": "combines ' and \",",
    "it's \\n #": "combines ', \\ and #,",
    "`it's\"`": "combines ', \" and a leading `,",
    "it's\u2028\"x\"": "combines ', \" and U+2028/U+2029 before a quote,",
    "${HOME}": "holds ${, which python-dotenv expands",
    "x${Y:-d}y": "holds ${, which python-dotenv expands",
    "pa'ss${word}": "holds ${, which python-dotenv expands",
    # python-dotenv leaves an unclosed one alone, but every ${ is refused: one
    # rule to remember, and still right if its grammar grows.
    "${unclosed": "holds ${, which python-dotenv expands",
    "a\nb": "contains a newline, carriage return or NUL",
    "a\rb": "contains a newline, carriage return or NUL",
    "a\x00b": "contains a newline, carriage return or NUL",
    "lone \ud800 surrogate": "holds a lone surrogate (U+D800), which is not text",
}

# A stage name is free text; it lands in the file's comment line.
STAGE_NAME = "Prod # 'x' \"y\" ${Z} INJECTED=1"


# ------------------------------------------------------------------ readers

Reader = Callable[[list[Path]], list[dict[str, str | None]]]
READER_NAMES = ("python-dotenv", "node --env-file", "npm dotenv")
# The npm dotenv release the rules were worked out against: pinned, so that a
# new release's parser changes reach this suite as a deliberate bump.
NPM_DOTENV = "18.0.10"


def read_python_dotenv(paths: list[Path]) -> list[dict[str, str | None]]:
    return [dict(dotenv_values(path)) for path in paths]


def _node_env_file(node: str) -> Reader:
    script = "process.stdout.write(JSON.stringify(process.env))"

    def read(paths: list[Path]) -> list[dict[str, str | None]]:
        out = []
        for path in paths:
            # An empty environment: what node prints is what it read from the file.
            result = subprocess.run(
                [node, f"--env-file={path}", "-e", script],
                env={}, capture_output=True, text=True, timeout=60, check=True,
            )
            out.append(json.loads(result.stdout))
        return out
    return read


def _npm_dotenv(node: str, package: Path) -> Reader:
    script = (
        "const dotenv = require(process.argv[1]); const fs = require('fs');"
        "process.stdout.write(JSON.stringify("
        "process.argv.slice(2).map(p => dotenv.parse(fs.readFileSync(p)))))"
    )

    def read(paths: list[Path]) -> list[dict[str, str | None]]:
        result = subprocess.run(
            [node, "-e", script, str(package), *map(str, paths)],
            capture_output=True, text=True, timeout=60, check=True,
        )
        return list(json.loads(result.stdout))
    return read


@pytest.fixture(scope="session")
def readers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Reader | str]:
    """Each reader by name, or the reason it is not available here."""
    found: dict[str, Reader | str] = {"python-dotenv": read_python_dotenv}
    node = shutil.which("node")
    if node is None:
        found["node --env-file"] = found["npm dotenv"] = "node is not installed"
        return found
    probe = tmp_path_factory.mktemp("node-probe") / ".env"
    probe.write_text("A=1\n")
    if subprocess.run([node, f"--env-file={probe}", "-e", "0"],
                      capture_output=True, timeout=60).returncode != 0:
        version = subprocess.run([node, "--version"], capture_output=True, text=True).stdout
        found["node --env-file"] = f"node {version.strip()} has no --env-file (needs 20.6+)"
    else:
        found["node --env-file"] = _node_env_file(node)
    npm = shutil.which("npm")
    if npm is None:
        found["npm dotenv"] = "npm is not installed"
        return found
    prefix = tmp_path_factory.mktemp("npm-dotenv")
    try:
        result = subprocess.run(
            [npm, "install", "--prefix", str(prefix), "--no-save", "--no-audit", "--no-fund",
             "--fetch-retries=1", "--fetch-timeout=30000", f"dotenv@{NPM_DOTENV}"],
            capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL,
        )
        installed = result.returncode == 0
        why = (result.stderr.strip().splitlines() or ["no output"])[-1]
    except subprocess.TimeoutExpired:
        installed, why = False, "timed out"
    package = prefix / "node_modules" / "dotenv"
    if installed and package.is_dir():
        found["npm dotenv"] = _npm_dotenv(node, package)
    else:
        found["npm dotenv"] = f"npm could not install dotenv (registry unreachable?): {why}"
    return found


@pytest.fixture(params=READER_NAMES)
def reader(request: pytest.FixtureRequest, readers: dict[str, Reader | str]) -> Reader:
    found = readers[request.param]
    if isinstance(found, str):
        pytest.skip(found)
    return found


def every_reader(readers: dict[str, Reader | str]) -> dict[str, Reader]:
    missing = [f"{name}: {why}" for name, why in readers.items() if isinstance(why, str)]
    if missing:
        pytest.skip("needs all three readers; " + "; ".join(missing))
    return {name: r for name, r in readers.items() if not isinstance(r, str)}


def keyed(values: list[str]) -> dict[str, str]:
    return {f"K_{i:02d}": value for i, value in enumerate(values)}


# ------------------------------------------------------------- the writer


def test_the_lists_are_what_the_rule_says() -> None:
    """The lists above agree with ``value_problem`` (and so with ``project add``,
    which calls it; the CLI test below checks that for real)."""
    assert [v for v in ACCEPTED if value_problem(v) is not None] == []
    for value, fragment in REFUSED.items():
        problem = value_problem(value)
        assert problem is not None and fragment in problem, (value, problem)


def test_every_accepted_value_reads_back_exactly(reader: Reader, tmp_path: Path) -> None:
    """All of them in one file, as a deploy writes it: none may disturb another."""
    expected = keyed(ACCEPTED)
    # A line break too: one stored before stage names were checked.
    stage = Stage(STAGE_NAME + "\nINJECTED=2", "main",
                  tuple(EnvVar(k, v) for k, v in expected.items()))
    path = tmp_path / ".env"
    path.write_text(render_env(stage, job_id="01JD0000000000000000000000"), encoding="utf-8")
    # One line per variable after the comment: nothing added a line.
    assert len(path.read_bytes().split(b"\n")) == 1 + len(expected) + 1
    (got,) = reader([path])
    wrong = {k: (v, got.get(k)) for k, v in expected.items() if got.get(k) != v}
    assert wrong == {}
    assert set(got) == set(expected)  # no INJECTED from the stage name, nothing else


def test_no_quoting_carries_a_refused_value(
    readers: dict[str, Reader | str], tmp_path: Path
) -> None:
    """The refusals are needed: for each refused value, every way of writing it
    on one line (bare, or in any of the three quotes, raw or backslash-escaped)
    is read back differently by at least one reader. Line breaks, NUL, lone
    surrogates and an unclosed ``${`` are refused by rule, not for the readers."""
    all_readers = every_reader(readers)
    values = [v for v in REFUSED if "combines" in REFUSED[v] or re.search(r"\$\{.*\}", v)]
    files: list[tuple[str, str, Path]] = []
    for i, value in enumerate(values):
        forms = {"bare": value}
        for q in ("'", '"', "`"):
            forms[f"{q}raw{q}"] = f"{q}{value}{q}"
            escaped = value.replace("\\", "\\\\").replace(q, "\\" + q)
            forms[f"{q}escaped{q}"] = f"{q}{escaped}{q}"
        for name, text in forms.items():
            path = tmp_path / f"{i}-{len(files)}.env"
            path.write_text(f"A=before\nV={text}\nB=after\n", encoding="utf-8")
            files.append((value, name, path))
    results = {name: r([p for _, _, p in files]) for name, r in all_readers.items()}
    carried = [
        (value, form)
        for n, (value, form, _) in enumerate(files)
        if all(results[name][n] == {"A": "before", "V": value, "B": "after"}
               for name in all_readers)
    ]
    assert carried == []


# ---------------------------------------------------------------- the CLI


@pytest.fixture
def cli_env(settings: Settings) -> dict[str, str]:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("DEPLOYSTER_")}
    return {**inherited, **settings_env(settings)}


def write_stage(path: Path, variables: dict[str, str]) -> Path:
    # ensure_ascii: a lone surrogate travels as \ud800, as a JSON client sends it.
    path.write_text(json.dumps([{
        "stage_name": STAGE_NAME, "git_branch": "main",
        "environment_variables": [{"key": k, "value": v} for k, v in variables.items()],
    }]))
    return path


def test_project_add_refuses_exactly_the_values_no_reader_agrees_on(
    cli_env: dict[str, str], project_dir: Path, tmp_path: Path
) -> None:
    """Every value in one pipeline; ``project add`` names one bad key at a time,
    which is dropped and the add tried again, until the rest is accepted."""
    variables = keyed(ACCEPTED + list(REFUSED))
    pipeline = tmp_path / "stages.json"
    refused: dict[str, str] = {}
    for _ in range(len(REFUSED) + 1):
        result = deployster(cli_env, "project", "add", str(project_dir),
                            "--pipeline", str(write_stage(pipeline, variables)))
        if result.returncode == 0:
            break
        line = one_line_error(result)
        match = re.search(r"value of (K_\d\d) ", line)
        assert match, line
        refused[match.group(1)] = line
        del variables[match.group(1)]
    assert sorted(variables.values()) == sorted(ACCEPTED)
    everything = keyed(ACCEPTED + list(REFUSED))
    assert {everything[k] for k in refused} == set(REFUSED)
    for key, line in refused.items():
        stage = f"stage {STAGE_NAME!r}"
        assert line.startswith(f"deployster: error: {stage}: value of {key} "), line
        assert REFUSED[everything[key]] in line, line
        assert everything[key] not in line[len("deployster: error: ") + len(stage):]
    # The one from the field report, in full.
    key = next(k for k in refused if everything[k] == "it's \"quoted\" #1")
    assert refused[key].endswith(
        f"value of {key} combines ', \" and #, which no .env quoting reads back unchanged "
        "in python-dotenv, node --env-file and the npm dotenv"
    )

    # What was stored is exactly what was sent.
    shown = json.loads(ok(deployster(cli_env, "project", "show", str(project_dir), "--json")))
    stored = {v["key"]: v["value"] for v in shown["pipeline"][0]["environment_variables"]}
    assert stored == variables

    # project edit checks the same way, and changes nothing when it refuses.
    bad = write_stage(tmp_path / "bad.json", {"API_KEY": "it's \"x\" #"})
    assert "value of API_KEY combines ', \" and #," in one_line_error(
        deployster(cli_env, "project", "edit", str(project_dir), "--pipeline", str(bad)))
    again = json.loads(ok(deployster(cli_env, "project", "show", str(project_dir), "--json")))
    assert again["pipeline"] == shown["pipeline"]


# ----------------------------------------------------------- a real deploy


async def test_a_deploy_writes_a_file_every_reader_reads_back_and_sets_the_environment(
    server: LiveServer, core: Deployster, project_dir: Path,
    readers: dict[str, Reader | str],
) -> None:
    variables = keyed(ACCEPTED)
    # A stage variable of a name the server has too: the stage's value wins,
    # DEPLOYSTER_REF stays the job's own.
    variables["HOME"] = "/stage/home"
    variables["DEPLOYSTER_REF"] = "from-the-stage"
    pipeline = [{"stage_name": STAGE_NAME, "git_branch": "main",
                 "environment_variables": [{"key": k, "value": v}
                                           for k, v in variables.items()]}]
    await core.projects.add(str(project_dir), pipeline=pipeline)
    out = project_dir / "printenv"
    command = (
        f"mkdir -p {out}; for k in {' '.join(variables)}; do "
        f'printenv "$k" > "{out}/$k" || exit 1; done'
    )
    async with server.client() as client:
        job = (await client.post("/deploy", json=deploy_body(project_dir, command))).json()
        final = await wait_for_status(client, job["job_id"])
    assert final["status"] == "complete", final

    # The commands' environment, as printenv prints it (value + newline).
    printed = {k: (out / k).read_bytes() for k in variables}
    expected_env = {k: v.encode() + b"\n" for k, v in variables.items()}
    expected_env["DEPLOYSTER_REF"] = b"main\n"
    assert printed == expected_env

    # The file the deploy wrote, in every reader that is here.
    env_file = project_dir / ".env"
    for name in READER_NAMES:
        read = readers[name]
        if isinstance(read, str):
            continue  # the parametrised test above reports the skip
        (got,) = read([env_file])
        assert got == variables, name


async def test_a_stored_value_no_reader_agrees_on_fails_the_deploy_before_any_command(
    settings: Settings, core: Deployster, project_dir: Path, tmp_path: Path
) -> None:
    """A project stored before the rule (straight into the database here) may
    hold such a value: the deploy must not write a file the app misreads, nor
    run the commands without it. It fails, naming the key, never the value."""
    secret = "it's \"quoted\" #1"
    pipeline_json = json.dumps([{"stage_name": "Production", "git_branch": "main",
                                 "environment_variables": [
                                     {"key": "GOOD", "value": "fine"},
                                     {"key": "API_KEY", "value": secret}]}])
    project = await store.insert_project(
        core.db, name="legacy", path=str(project_dir), pipeline_json=pipeline_json,
        lock_ttl=600, timeout=3600)
    assert project is not None
    previous = project_dir / ".env"
    previous.write_text("GOOD='from the last good deploy'\n")
    marker = project_dir / "ran"
    with contextlib.contextmanager(serving)(settings, tmp_path) as live:
        async with live.client() as client:
            job = (await client.post("/deploy", json=deploy_body(
                project_dir, f"touch {marker}"))).json()
            final = await wait_for_status(client, job["job_id"])
    assert (final["status"], final["reason"]) == ("failed", "invalid"), final
    logs = str(final["logs"])
    assert (
        f"[deployster] could not write {project_dir}/.env: stage 'Production': value of API_KEY"
        " combines ', \" and #, which no .env quoting reads back unchanged in python-dotenv,"
        " node --env-file and the npm dotenv; change it with 'deployster project edit'\n"
    ) in logs
    assert secret not in logs
    assert not marker.exists()  # no command ran
    assert previous.read_text() == "GOOD='from the last good deploy'\n"
    assert not list(project_dir.glob(".env.*.tmp"))
