"""README.md#first-ten-minutes, run for real: its shell steps as written, on a
fresh data dir (the default one, under a ``XDG_DATA_HOME`` of the test's own),
with the embedded Redis, a server on a free port, real curl, and the dashboard
in tmux. Only the install is not run: the test runs in the installed venv,
which the "clone" it works in links to as ``.venv``."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from deployster.embedded_redis import stop_embedded_redis
from tests.helpers.paths import REPO, STUB_BIN
from tests.helpers.server import free_port
from tests.server.test_embedded import pids, wait_stopped
from tests.server.test_seed_guide import guide_app_dir  # noqa: F401 (a fixture)
from tests.tui.test_tmux import Tmux, launch, tmux, wait_exit  # noqa: F401 (tmux: a fixture)

pytestmark = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("tmux", "curl", "bash")),
    reason="needs tmux, curl and bash")

README = (REPO / "README.md").read_text(encoding="utf-8")
DEFAULT_URL = "http://127.0.0.1:3259"


def walkthrough() -> list[str]:
    """The section's shell blocks: install and serve, register and deploy, the dashboard."""
    section = README[README.index("## First ten minutes"):]
    section = section[:section.index("\n## ", 1)]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    assert len(blocks) == 3, blocks
    return blocks


@pytest.fixture
def machine(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """A clone (``.venv`` in it: this test's venv) and the environment of a
    user's shell: no DEPLOYSTER_* variable, a data home of its own (short: the
    embedded Redis's socket lives there), supervisorctl the tests' stand-in."""
    clone = tmp_path / "clone"
    clone.mkdir()
    (clone / ".venv").symlink_to(sys.prefix)
    data_home = Path(tempfile.mkdtemp(prefix="dst-10m-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEPLOYSTER_")}
    env.update({"XDG_DATA_HOME": str(data_home), "TERM": "xterm-256color",
                "PATH": f"{STUB_BIN}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"})
    try:
        yield clone, env
    finally:
        stop_embedded_redis(data_home / "deployster")
        shutil.rmtree(data_home, ignore_errors=True)


def wait_for_line(path: Path, text: str, process: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        log = path.read_text(errors="replace")
        if text in log:
            return log
        if process.poll() is not None:
            break
        time.sleep(0.1)
    raise AssertionError(f"{text!r} never came:\n{path.read_text(errors='replace')}")


def test_the_first_ten_minutes_as_the_readme_has_them(
    machine: tuple[Path, dict[str, str]], guide_app_dir: Path,  # noqa: F811
    tmux: Tmux, tmp_path: Path,  # noqa: F811
) -> None:
    clone, env = machine
    install_and_serve, deploy, dashboard = walkthrough()
    first_commands = re.findall(r"```sh\n(.*?)```", README, re.S)[0]
    assert install_and_serve.strip() in first_commands  # README command 1
    serve = install_and_serve.strip().rsplit(" && ", 1)[1]
    assert serve == ".venv/bin/deployster serve"

    port = free_port()
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log_file:
        server = subprocess.Popen(["bash", "-c", serve], cwd=clone, stdin=subprocess.DEVNULL,
                                  stdout=log_file, stderr=subprocess.STDOUT,
                                  env={**env, "DEPLOYSTER_PORT": str(port)})
    try:
        log = wait_for_line(log_path, "deployster listening on", server)
        data_dir = Path(env["XDG_DATA_HOME"]) / "deployster"
        token = (data_dir / "token").read_text().strip()
        assert f"made the admin token, kept in {data_dir / 'token'}" in log and token in log
        assert f"listening on http://127.0.0.1:{port} (data dir: {data_dir}; " in log
        redis_and_keeper = pids(data_dir)

        steps = tmp_path / "second-terminal.sh"
        steps.write_text(deploy.replace(DEFAULT_URL, f"http://127.0.0.1:{port}"))
        ran = subprocess.run(["bash", "-eo", "pipefail", str(steps)], cwd=clone, env=env,
                             capture_output=True, text=True, timeout=120)
        assert ran.returncode == 0, ran.stdout + ran.stderr
        assert "registered project 'my-app'" in ran.stdout
        job_id = json.loads(ran.stdout.splitlines()[-1])["job_id"]

        assert dashboard.strip() == "deployster tui"
        rc_file = launch(tmux, tmp_path, env)
        tmux.wait_for("my-app")
        tmux.wait_for("✔")  # the deploy completed
        tmux.run("send-keys", "-t", "dash", "Enter")
        screen = tmux.wait_for("job complete")  # the job's log
        assert f"[deployster] job {job_id} · project my-app" in screen, screen
        assert "[1/2] $ echo building" in screen and "restart verified: my-app" in screen
        tmux.run("send-keys", "-t", "dash", "q")
        assert wait_exit(rc_file) == 0
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
    assert server.returncode == 0 and "Traceback" not in log_path.read_text()
    # Nothing left running: the embedded Redis went with its last user.
    wait_stopped(data_dir, *redis_and_keeper)
