"""The dashboard in a real terminal: tmux runs ``deployster tui``, we type keys
(send-keys) and read the screen (capture-pane). Skipped without tmux."""

from __future__ import annotations

import asyncio
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from deployster.embedded_redis import stop_embedded_redis
from deployster.service import DeployRequest, Deployster
from deployster.settings import Settings
from tests.helpers.deploys import deploy_body
from tests.helpers.locks import hold_lock
from tests.helpers.paths import REPO, STUB_BIN
from tests.helpers.server import TOKEN, free_port, settings_env, start_server
from tests.test_cli import deployster

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


class Tmux:
    def __init__(self, socket: str) -> None:
        self.socket = socket

    def run(self, *args: str) -> str:
        # -f /dev/null: no user config (it may fix the window size, say).
        return subprocess.run(["tmux", "-L", self.socket, "-f", "/dev/null", *args],
                              capture_output=True,
                              text=True, timeout=10).stdout

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "dash")

    def wait_for(self, text: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen = self.screen()
            if text in screen:
                return screen
            time.sleep(0.2)
        raise AssertionError(f"{text!r} never appeared:\n{self.screen()}")


@pytest.fixture
def tmux() -> Iterator[Tmux]:
    t = Tmux(f"dst-{uuid.uuid4().hex[:8]}")
    yield t
    t.run("kill-server")


def launch(tmux: Tmux, tmp_path: Path, env: dict[str, str], *args: str,
           unset: tuple[str, ...] = (), size: tuple[int, int] = (160, 40)) -> Path:
    rc_file = tmp_path / "tui.rc"
    script = tmp_path / "run-tui.sh"
    exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())
    script.write_text(
        # The terminal's own size, not one inherited from pytest's environment.
        f"unset COLUMNS LINES {' '.join(unset)}\n{exports}cd {shlex.quote(str(REPO))}\n"
        f"{shlex.quote(sys.executable)} -m deployster tui {' '.join(args)}\n"
        f"echo $? > {shlex.quote(str(rc_file))}\nsleep 60\n"
    )
    width, height = str(size[0]), str(size[1])
    tmux.run("new-session", "-d", "-s", "dash", "-x", width, "-y", height,
             f"sh {shlex.quote(str(script))}")
    tmux.run("resize-window", "-t", "dash", "-x", width, "-y", height)
    return rc_file


def wait_exit(rc_file: Path, timeout: float = 20) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if rc_file.exists() and rc_file.read_text().strip():
            return int(rc_file.read_text())
        time.sleep(0.1)
    raise AssertionError("the dashboard did not exit")


def test_tui_shows_the_projects_and_q_quits(
    tmux: Tmux, settings: Settings, project_dir: Path, tmp_path: Path
) -> None:
    env = settings_env(settings)
    assert deployster(env, "project", "add", str(project_dir), "--name",
                      "smoke-app").returncode == 0
    rc_file = launch(tmux, tmp_path, {"TERM": "xterm-256color", **env})
    screen = tmux.wait_for("smoke-app")
    assert "1 project ·" in screen and "redis ok" in screen
    tmux.run("send-keys", "-t", "dash", "?")
    tmux.wait_for("what the columns say")
    tmux.run("send-keys", "-t", "dash", "Escape")
    time.sleep(0.5)
    tmux.run("send-keys", "-t", "dash", "q")
    assert wait_exit(rc_file) == 0


def test_tui_serve_runs_the_http_server_in_the_same_process(
    tmux: Tmux, settings: Settings, project_dir: Path, tmp_path: Path
) -> None:
    env = settings_env(settings)
    assert deployster(env, "project", "add", str(project_dir)).returncode == 0
    port = free_port()
    env = {"TERM": "xterm-256color", **env, "DEPLOYSTER_PORT": str(port),
           "PATH": f"{STUB_BIN}:/usr/bin:/bin"}
    rc_file = launch(tmux, tmp_path, env, "--serve")
    tmux.wait_for("my-app")
    url = f"http://127.0.0.1:{port}"
    headers = {"x-deployster-token": TOKEN}
    deadline = time.monotonic() + 20
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    job = httpx.post(f"{url}/deploy", json=deploy_body(project_dir, "echo served"),
                     headers=headers, timeout=10).json()
    deadline = time.monotonic() + 30
    status: dict[str, object] = {}
    while time.monotonic() < deadline:
        status = httpx.get(f"{url}/status/{job['job_id']}", headers=headers, timeout=5).json()
        if status["status"] in ("complete", "failed"):
            break
        time.sleep(0.1)
    assert status["status"] == "complete", status
    tmux.wait_for("✔")  # the dashboard shows the finished deploy
    tmux.run("send-keys", "-t", "dash", "q")
    assert wait_exit(rc_file) == 0, tmux.screen() + (settings.data_dir / "tui.log").read_text()
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{url}/healthz", timeout=1)


def test_tui_starts_the_embedded_redis_when_none_is_configured(
    tmux: Tmux, settings: Settings, project_dir: Path, tmp_path: Path
) -> None:
    """Out of the box (no Redis URL): the dashboard starts the embedded Redis in
    the data dir, the one the server would start or has started."""
    data_dir = tmp_path / "data"
    env = {k: v for k, v in settings_env(settings).items()
           if k not in ("DEPLOYSTER_REDIS_URL", "DEPLOYSTER_DATABASE_URL")}
    env["DEPLOYSTER_DATA_DIR"] = str(data_dir)
    assert deployster(env, "project", "add", str(project_dir), "--name",
                      "embedded-app").returncode == 0
    try:
        rc_file = launch(tmux, tmp_path, {"TERM": "xterm-256color", **env},
                         unset=("DEPLOYSTER_REDIS_URL", "DEPLOYSTER_DATABASE_URL"))
        screen = tmux.wait_for("embedded-app")
        assert "redis ok" in screen and "db ok" in screen
        assert list(data_dir.glob("**/*.sock")), "no embedded Redis socket in the data dir"
        tmux.run("send-keys", "-t", "dash", "q")
        assert wait_exit(rc_file) == 0
    finally:
        stop_embedded_redis(data_dir)


def test_an_80x24_terminal_shows_what_an_operator_acts_on(
    tmux: Tmux, settings: Settings, project_dir: Path, tmp_path: Path
) -> None:
    """On the smallest usual terminal nothing the operator needs before u, c or
    r is cut off: the holder, TTL, heartbeat (STALE), queue and last outcome in
    the table, Redis's state in the header, ? and q in the key bar; the project
    view's title has the lock's TTL and heartbeat; the unlock modal's facts and
    both buttons fit; q leaves and the terminal is given back."""
    env = settings_env(settings)
    long_name = "a-project-with-a-rather-long-name"
    assert deployster(env, "project", "add", str(project_dir), "--name",
                      long_name).returncode == 0

    async def lock_it() -> None:
        core = await Deployster.open(settings)
        try:
            project = await core.projects.find(long_name)
            await hold_lock(core, project.id, "01JDZZZZZZZZZZZZZZZZZZZZF3", 300_000)
        finally:
            await core.close()

    asyncio.run(lock_it())
    rc_file = launch(tmux, tmp_path, {"TERM": "xterm-256color", **env}, size=(80, 24))
    tmux.wait_for("STALE")
    screen = tmux.wait_for("? Keys q Quit")  # the key bar composes a moment later
    lines = screen.rstrip("\n").splitlines()
    header = next(line for line in lines if "heartbeat" in line)
    for column in ("holder", "TTL", "heartbeat", "queue", "last"):
        assert column in header, screen
    row = next(line for line in lines if "a-project-w" in line)
    assert "01JD…ZZF3" in row and re.search(r"[45]m \d\ds", row), screen  # holder, TTL
    assert "redis ok" in lines[0], screen
    assert lines[-1].startswith("? Keys q Quit"), screen
    tmux.run("send-keys", "-t", "dash", "Enter")
    tmux.wait_for("lock 01JD…ZZF3 · TTL ")
    screen = tmux.wait_for("? Keys q Quit esc Back")
    assert "STALE" in screen.splitlines()[0], screen
    assert screen.rstrip("\n").splitlines()[-1].startswith("? Keys q Quit esc Back"), screen
    tmux.run("send-keys", "-t", "dash", "u")
    screen = tmux.wait_for("Release (y)")
    for fact in ("Release a-project", "holder", "TTL", "STALE", "queued",
                 "compare-and-set", "No (n / esc)"):
        assert fact in screen, screen
    tmux.run("send-keys", "-t", "dash", "n")
    time.sleep(0.5)
    tmux.run("send-keys", "-t", "dash", "q")
    assert wait_exit(rc_file) == 0
    flags = tmux.run("display", "-p", "-t", "dash", "#{alternate_on} #{mouse_any_flag}")
    assert flags.split() == ["0", "0"]  # out of the alternate screen, mouse released


def test_a_real_terminal_names_the_data_says_no_runner_and_how_to_add_a_project(
    tmux: Tmux, settings: Settings, project_dir: Path, tmp_path: Path
) -> None:
    """No deploy server and no project yet: the header says 'no runner', the
    table's border names the Redis and database read, and a line says how to
    register a project; once one is added (CLI) it shows, and a job queued
    for it says it waits for a runner."""
    env = settings_env(settings)
    rc_file = launch(tmux, tmp_path, {"TERM": "xterm-256color", **env})
    screen = tmux.wait_for("No projects yet")
    assert "deployster project add PATH" in screen.replace("\n", " ")
    assert "no runner" in screen.splitlines()[0], screen
    assert f"redis {settings.redis_url}" in screen and "db sqlite:///" in screen, screen
    assert deployster(env, "project", "add", str(project_dir), "--name",
                      "fresh-app").returncode == 0
    tmux.wait_for("fresh-app")

    async def queue_one() -> None:
        core = await Deployster.open(settings)
        try:
            await core.submit(DeployRequest(str(project_dir), ["supervisorctl restart x"],
                                            "a1b2c3d4", "main"), run_here=False)
        finally:
            await core.close()

    asyncio.run(queue_one())
    screen = tmux.wait_for("waiting for a runner")
    assert "No projects yet" not in screen
    tmux.run("send-keys", "-t", "dash", "q")
    assert wait_exit(rc_file) == 0


def test_a_real_terminal_shows_a_logs_colours_and_nothing_else_it_sends(
    tmux: Tmux, settings: Settings, project_dir: Path, tmp_path: Path
) -> None:
    """A job's colours reach the terminal as colours; its screen clear, cursor
    moves and title do not reach it at all. A notification leaves the table's
    border whole."""
    env = settings_env(settings)
    assert deployster(env, "project", "add", str(project_dir), "--name",
                      "colour-app").returncode == 0
    server = start_server(settings, tmp_path / "server.log")
    try:
        body = deploy_body(project_dir, r"printf '\033[31mred-word\033[0m plain-word\n'; "
                           r"printf '\033[2J\033[H\033[10Bmoved\033]0;hijacked\007 end\n'")
        job = httpx.post(f"{server.url}/deploy", headers=server.headers, json=body,
                         timeout=10).json()
        deadline = time.monotonic() + 30
        while httpx.get(f"{server.url}/status/{job['job_id']}", headers=server.headers,
                        timeout=5).json()["status"] not in ("complete", "failed"):
            assert time.monotonic() < deadline, "the job did not finish"
            time.sleep(0.1)
    finally:
        server.stop()
    rc_file = launch(tmux, tmp_path, {"TERM": "xterm-256color", **env})
    tmux.wait_for("colour-app")
    tmux.run("send-keys", "-t", "dash", "s")  # a notification: "sorted by …"
    screen = tmux.wait_for("sorted by")
    bottom = next(line for line in screen.splitlines() if line.startswith("╰"))
    assert set(bottom.strip()) <= {"╰", "─", "╯"}, screen  # its border whole
    tmux.run("send-keys", "-t", "dash", "Enter")
    screen = tmux.wait_for("moved end")
    assert "colour-app" in screen.splitlines()[0]  # the screen was not cleared
    assert "[31m" not in screen.split("red-word plain-word")[0].splitlines()[-1]
    title = tmux.run("display", "-p", "-t", "dash", "#{pane_title}")
    assert "hijacked" not in title
    row = next(i for i, ln in enumerate(screen.splitlines()) if "red-word plain-word" in ln)
    line = tmux.run("capture-pane", "-p", "-e", "-t", "dash").splitlines()[row]

    def colour_at(word: str) -> str:
        """The last foreground colour the terminal was sent before ``word``."""
        return re.findall(r"\x1b\[3[0-9](?:;[0-9]+)*m", line[:line.index(word)])[-1]

    assert colour_at("red-word") != colour_at("plain-word"), repr(line)
    tmux.run("send-keys", "-t", "dash", "q")
    assert wait_exit(rc_file) == 0
