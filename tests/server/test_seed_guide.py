"""The user's seed guide, run as written against a real ``deployster serve``.

Every client example in ``README.queued-deployments.md`` must keep working unchanged:
the GitHub Actions steps are taken from the guide's YAML and run with bash the way the
Actions runner runs them (only the ``${{ … }}`` expressions the runner itself fills in
are replaced), and the local curl example is run as-is with the two variables it reads.

The guide itself lives beside the repository (``../shared/seed``), which a user's
clone does not have, so its two examples are kept in ``tests/fixtures/seed/``
byte for byte (a test compares them with the guide wherever the guide is there):
the suite always replays them. Their commands deploy to ``/var/www/my-app``, so that
path is used unchanged: created for the test when missing (and removed afterwards),
used as-is when it already exists, and the tests are skipped when it cannot be created.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from deployster.service import Deployster
from deployster.settings import Settings
from tests.helpers.paths import REPO
from tests.helpers.server import LiveServer, serving

GUIDE = REPO.parent / "shared" / "seed" / "README.queued-deployments.md"
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "seed"
WORKFLOW = FIXTURES / "workflow.yml"  # the guide's GitHub Actions workflow, verbatim
LOCAL_CURL = FIXTURES / "local-curl.sh"  # the guide's local curl example, verbatim

APP = Path("/var/www/my-app")  # the guide's "cd", kept as written
QUEUED_MESSAGE = "Another deployment is running; this job is queued."
STEP_TIMEOUT = 120.0  # a hang guard only; nothing here asserts how long a step takes


# ------------------------------------------------------------- the guide itself


def _fenced_blocks(markdown: str) -> list[tuple[str, str]]:
    """Every ``` block of the guide as (language, text)."""
    return re.findall(r"^```(\w*)[ \t]*\n(.*?)^```[ \t]*$", markdown, re.MULTILINE | re.DOTALL)


def test_the_fixtures_are_the_guides_examples_verbatim() -> None:
    if not GUIDE.is_file():
        pytest.skip(f"the seed guide is not here ({GUIDE}): nothing to compare the "
                    "fixtures with (they are replayed by the other tests all the same)")
    blocks = _fenced_blocks(GUIDE.read_text(encoding="utf-8"))
    workflows = [text for lang, text in blocks if lang in ("yaml", "yml")]
    scripts = [text for lang, text in blocks
               if lang in ("bash", "sh") and text.lstrip().startswith("# Trigger deploy")]
    assert workflows == [WORKFLOW.read_text(encoding="utf-8")]
    assert scripts == [LOCAL_CURL.read_text(encoding="utf-8")]


def _workflow_steps() -> tuple[dict[str, Any], dict[str, Any]]:
    workflow = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    steps = [step for job in workflow["jobs"].values() for step in job["steps"]]
    trigger = [s for s in steps if s.get("id") == "trigger"]
    stream = [s for s in steps if s.get("name") == "Stream deploy status"]
    assert len(trigger) == 1 and trigger[0].get("name") == "Trigger deploy"
    assert len(stream) == 1
    return trigger[0], stream[0]


TRIGGER_STEP, STREAM_STEP = _workflow_steps()
LOCAL_CURL_SCRIPT = LOCAL_CURL.read_text(encoding="utf-8")


def sha(label: str) -> str:
    return hashlib.sha1(label.encode()).hexdigest()


# ------------------------------------------------------ an Actions-like runner

_EXPRESSION = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")


def substitute(script: str, context: Mapping[str, str]) -> str:
    """Fill in ``${{ expr }}`` as the Actions runner does before bash sees the script."""

    def value(match: re.Match[str]) -> str:
        expression = match.group(1)
        if expression not in context:
            raise AssertionError(f"the guide uses ${{{{ {expression} }}}}, unknown to this test")
        return context[expression]

    return _EXPRESSION.sub(value, script)


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return f"--- exit {self.code}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


async def run_bash(argv: list[str], script: str, path: Path, *, cwd: Path,
                   env: Mapping[str, str]) -> Result:
    """Write ``script`` to ``path`` and run ``argv + [path]`` in ``cwd``."""
    path.write_text(script, encoding="utf-8")
    proc = await asyncio.create_subprocess_exec(
        *argv, str(path), cwd=cwd, env=dict(env), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), STEP_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(
            f"{path.name} never finished (a seed client must not loop forever)"
        ) from None
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


class WorkflowRun:
    """One run of the guide's workflow: its own runner temp dir, its own outputs."""

    # GitHub's default for `run:` steps on Linux: `shell: bash` is
    # `bash --noprofile --norc -eo pipefail {0}`.
    SHELL = ["bash", "--noprofile", "--norc", "-eo", "pipefail"]

    def __init__(self, root: Path, server: LiveServer, commit: str, ref_name: str = "main"):
        self.root = root
        self.workspace = root / "workspace"
        self.workspace.mkdir(parents=True)
        self.runner_temp = root / "runner-temp"
        self.runner_temp.mkdir()
        self.commit = commit
        self.ref_name = ref_name
        self.context: dict[str, str] = {
            "secrets.DEPLOYSTER_TOKEN": server.token,
            "secrets.DEPLOYSTER_URL": server.url,
            "github.sha": commit,
            "github.ref_name": ref_name,
        }
        self.step_outputs: dict[str, dict[str, str]] = {}
        self.job_id = ""
        self.trigger_result: Result | None = None

    async def step(self, step: Mapping[str, Any]) -> Result:
        index = len(list(self.runner_temp.glob("step-*.sh"))) + 1
        output_file = self.runner_temp / f"github-output-{index}"
        output_file.touch()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", str(self.root)),
            "LANG": "C.UTF-8",
            "CI": "true",
            "GITHUB_ACTIONS": "true",
            "GITHUB_WORKSPACE": str(self.workspace),
            "RUNNER_TEMP": str(self.runner_temp),
            "GITHUB_SHA": self.commit,
            "GITHUB_REF_NAME": self.ref_name,
            "GITHUB_OUTPUT": str(output_file),
        }
        script = substitute(step["run"], self.context)
        result = await run_bash(self.SHELL, script, self.runner_temp / f"step-{index}.sh",
                                cwd=self.workspace, env=env)
        if step.get("id"):
            outputs = dict(
                line.split("=", 1) for line in output_file.read_text().splitlines() if "=" in line
            )
            self.step_outputs[step["id"]] = outputs
            for key, val in outputs.items():
                self.context[f"steps.{step['id']}.outputs.{key}"] = val
        return result

    async def trigger(self) -> dict[str, Any]:
        """Run "Trigger deploy"; returns the server's reply the step echoed."""
        result = await self.step(TRIGGER_STEP)
        self.trigger_result = result
        assert result.code == 0, result.output
        self.job_id = self.step_outputs["trigger"]["job_id"]
        reply: dict[str, Any] = json.loads(result.stdout.splitlines()[0])
        assert reply["job_id"] == self.job_id
        return reply

    async def stream(self) -> Result:
        return await self.step(STREAM_STEP)


# ------------------------------------------------------------------- fixtures

_MARKER = ".deployster-test-created"  # in APP: "the tests made this; list of made paths"
_LOCK_FILE = Path(tempfile.gettempdir()) / "deployster-test-var-www-my-app.lock"
_LOCAL_EXAMPLE_LOCK = Path(tempfile.gettempdir()) / "deployster-test-local-curl-example.lock"


@pytest.fixture
def guide_app_dir() -> Iterator[Path]:
    """``/var/www/my-app``: made for the test if missing, removed after if the tests made it.

    Test processes running side by side share the path: each holds a shared lock on a
    lock file while it uses it; a test-made directory is removed by whoever finishes
    last (it then gets the lock exclusively), a directory that existed before is never
    touched.
    """
    lock = _LOCK_FILE.open("a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_SH)
        made: list[Path] = []
        try:
            for path in (APP.parent, APP):
                if not path.exists():
                    path.mkdir()
                    made.append(path)
            if made:
                (APP / _MARKER).write_text("".join(f"{p}\n" for p in made))
        except FileExistsError:
            pass  # another test process made it a moment ago; it is theirs to remove
        except OSError as exc:
            for path in reversed(made):
                with contextlib.suppress(OSError):
                    path.rmdir()
            pytest.skip(f"the guide deploys to {APP}, which does not exist and cannot be "
                        f"created here ({exc})")
        if not APP.is_dir():
            pytest.skip(f"the guide deploys to {APP}, which is not a directory here")
        yield APP
    finally:
        _release_app_dir(lock)


def _release_app_dir(lock: Any) -> None:
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return  # another test process is still using it; it cleans up
        marker = APP / _MARKER
        if marker.is_file():
            made = [Path(line) for line in marker.read_text().splitlines() if line]
            shutil.rmtree(APP, ignore_errors=True)
            for path in sorted(made, key=lambda p: len(p.parts), reverse=True):
                with contextlib.suppress(OSError):
                    path.rmdir()
    finally:
        lock.close()


@pytest.fixture
async def guide_project(core: Deployster, guide_app_dir: Path) -> AsyncIterator[Path]:
    project = await core.projects.add(str(guide_app_dir))
    assert project.path == str(guide_app_dir)
    yield guide_app_dir


@pytest.fixture
def gate(tmp_path: Path) -> Path:
    """A file the yarn stub waits for (see tests/stubs/yarn); create it to let yarn go."""
    return tmp_path / "yarn-gate"


@pytest.fixture
def gated_server(settings: Settings, tmp_path: Path, gate: Path) -> Iterator[LiveServer]:
    yield from serving(settings, tmp_path, DEPLOYSTER_STUB_YARN_GATE=str(gate))


@pytest.fixture
def rooted_gated_server(settings: Settings, tmp_path: Path, gate: Path,
                        guide_app_dir: Path) -> Iterator[LiveServer]:
    """Nothing registered; the guide's ``cd`` lies under DEPLOYSTER_ALLOWED_ROOTS."""
    rooted = settings.with_overrides(allowed_roots=(guide_app_dir.parent,))
    yield from serving(rooted, tmp_path, DEPLOYSTER_STUB_YARN_GATE=str(gate))


@pytest.fixture
def failing_yarn_server(settings: Settings, tmp_path: Path) -> Iterator[LiveServer]:
    yield from serving(settings, tmp_path, DEPLOYSTER_STUB_YARN_FAIL="1")


# ---------------------------------------------------------------------- tests


def assert_deployed(stdout: str) -> None:
    for line in ("yarn install --frozen-lockfile", "yarn build",
                 "supervisorctl: restart my-app--main"):
        assert f"{line}\n" in stdout


async def test_github_actions_workflow_deploys(
    server: LiveServer, guide_project: Path, tmp_path: Path
) -> None:
    run = WorkflowRun(tmp_path / "run", server, sha("single run"))

    reply = await run.trigger()
    assert reply == {"job_id": run.job_id}
    streamed = await run.stream()

    assert streamed.code == 0, streamed.output
    assert f"Waiting on job: {run.job_id}\n" in streamed.stdout
    assert "Deployment complete" in streamed.stdout
    assert_deployed(streamed.stdout)
    assert f"[deployster] job {run.job_id} " in streamed.stdout
    assert run.commit in streamed.stdout
    assert "Deployment failed" not in streamed.stderr


async def test_two_racing_workflow_runs_queue_and_both_go_green(
    gated_server: LiveServer, guide_project: Path, tmp_path: Path, gate: Path
) -> None:
    runs = [WorkflowRun(tmp_path / f"run-{n}", gated_server, sha(f"race {n}")) for n in (1, 2)]

    # Both pushes land together. The first deploy's `yarn install` waits on the gate,
    # so the project's lock is certainly held when the other request arrives.
    replies = await asyncio.gather(*(run.trigger() for run in runs))
    assert runs[0].job_id != runs[1].job_id
    queued = [reply for reply in replies if reply.get("queued") is True]
    assert len(queued) == 1, replies
    assert queued[0] == {"job_id": queued[0]["job_id"], "queued": True,
                         "message": QUEUED_MESSAGE}
    started = next(reply for reply in replies if reply is not queued[0])
    assert started == {"job_id": started["job_id"]}

    gate.touch()
    streams = await asyncio.gather(*(run.stream() for run in runs))

    for run, other, streamed in zip(runs, reversed(runs), streams, strict=True):
        assert streamed.code == 0, streamed.output
        assert "Deployment complete" in streamed.stdout
        assert_deployed(streamed.stdout)
        assert f"[deployster] job {run.job_id} " in streamed.stdout
        assert run.commit in streamed.stdout
        assert f"[deployster] job {other.job_id} " not in streamed.stdout
        assert other.commit not in streamed.stdout


async def test_two_racing_runs_for_an_unregistered_directory_both_go_green(
    rooted_gated_server: LiveServer, core: Deployster, guide_app_dir: Path, tmp_path: Path,
    gate: Path,
) -> None:
    """The first deploys of a directory nobody registered, racing: it registers
    itself once (under the allowed roots), one run waits for the other."""
    assert await core.projects.all() == []
    runs = [WorkflowRun(tmp_path / f"run-{n}", rooted_gated_server, sha(f"new {n}"))
            for n in (1, 2)]
    replies = await asyncio.gather(*(run.trigger() for run in runs))
    assert len([reply for reply in replies if reply.get("queued") is True]) == 1, replies
    gate.touch()
    streams = await asyncio.gather(*(run.stream() for run in runs))
    for run, streamed in zip(runs, streams, strict=True):
        assert streamed.code == 0, streamed.output
        assert "Deployment complete" in streamed.stdout
        assert_deployed(streamed.stdout)
        assert f"[deployster] job {run.job_id} " in streamed.stdout
    assert [p.path for p in await core.projects.all()] == [str(guide_app_dir)]
    assert "Traceback" not in rooted_gated_server.log()


async def test_local_curl_example_deploys(
    server: LiveServer, guide_project: Path, tmp_path: Path
) -> None:
    workdir = tmp_path / "local"
    workdir.mkdir()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", str(workdir)),
        "LANG": "C.UTF-8",
        "DEPLOYSTER_TOKEN": server.token,
        "DEPLOYSTER_URL": server.url,
    }
    # As the guide has it, the example writes /tmp/deploy-response.json: test processes
    # running side by side take turns, so one never reads the other's reply.
    with _LOCAL_EXAMPLE_LOCK.open("a+") as lock:
        await asyncio.to_thread(fcntl.flock, lock, fcntl.LOCK_EX)
        result = await run_bash(["bash"], LOCAL_CURL_SCRIPT,
                                tmp_path / "local-curl-example.sh", cwd=workdir, env=env)

    assert result.code == 0, result.output
    assert "Deployment complete" in result.stdout
    assert_deployed(result.stdout)
    job_id = json.loads(result.stdout.splitlines()[0])["job_id"]
    assert f"[deployster] job {job_id} " in result.stdout


def _readme_curl_example() -> str:
    """Our README's copy of the local example (the seed's, corrected: tests/test_readme.py)."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = [text for lang, text in _fenced_blocks(readme)
              if lang in ("bash", "sh") and text.startswith("# Trigger deploy")]
    assert len(blocks) == 1
    return blocks[0]


@pytest.fixture
def checkout(tmp_path: Path) -> tuple[Path, str]:
    """A git work tree with one commit, and that commit's hash."""
    path = tmp_path / "checkout"
    path.mkdir()
    git = ["git", "-C", str(path), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    for args in (["init", "-q"], ["commit", "-q", "--allow-empty", "-m", "the commit"]):
        subprocess.run([*git, *args], check=True, capture_output=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True,
                          text=True).stdout.strip()
    return path, head


async def test_the_readme_curl_example_sends_the_commit_and_prints_line_breaks(
    server: LiveServer, guide_project: Path, tmp_path: Path, checkout: tuple[Path, str]
) -> None:
    """Run where the README says to, in the checkout of the commit to deploy:
    the job gets that commit, not the text ``$(git rev-parse HEAD)``, and the
    status lines end with a line break, not a literal ``\\n``."""
    workdir, head = checkout
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
           "LANG": "C.UTF-8", "DEPLOYSTER_TOKEN": server.token, "DEPLOYSTER_URL": server.url}
    with _LOCAL_EXAMPLE_LOCK.open("a+") as lock:
        await asyncio.to_thread(fcntl.flock, lock, fcntl.LOCK_EX)
        result = await run_bash(["bash"], _readme_curl_example(),
                                tmp_path / "readme-curl-example.sh", cwd=workdir, env=env)

    assert result.code == 0, result.output
    assert "\nDeployment complete\n" in result.stdout
    assert "\\n" not in result.stdout
    job_id = json.loads(result.stdout.splitlines()[0])["job_id"]
    async with server.client() as client:
        assert (await client.get(f"/jobs/{job_id}")).json()["commit_hash"] == head


async def test_failing_deploy_ends_the_seed_client_with_an_error(
    failing_yarn_server: LiveServer, guide_project: Path, tmp_path: Path
) -> None:
    run = WorkflowRun(tmp_path / "run", failing_yarn_server, sha("failing run"))

    await run.trigger()  # accepted: the failure only shows while it runs
    streamed = await run.stream()

    assert streamed.code != 0, streamed.output
    assert "Deployment failed" in streamed.stderr
    assert "Deployment complete" not in streamed.stdout
    assert "yarn install --frozen-lockfile\n" in streamed.stdout
    assert "error: yarn install --frozen-lockfile failed" in streamed.stdout
    # The job stopped at the failing command: the app was never restarted.
    assert "yarn build" not in streamed.stdout
    assert "supervisorctl: restart" not in streamed.stdout
