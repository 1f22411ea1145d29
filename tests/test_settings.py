"""Settings: ``DEPLOYSTER_<FIELD>`` variables over the optional TOML file named by
``DEPLOYSTER_CONFIG`` (deployster/settings.py), as the commands read them.

The in-process tests set the real process environment (``monkeypatch.setenv``,
undone after each test) and start from one without any ``DEPLOYSTER_*``
variable; the command-line ones run ``deployster serve`` for real.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from deployster.errors import ConfigError
from deployster.models import Job
from deployster.runner import child_env
from deployster.settings import Count, Settings, mask_url
from tests.helpers.cli import one_line_error
from tests.helpers.paths import REPO
from tests.helpers.server import TOKEN, free_port, start_server


@pytest.fixture
def environ(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """The process environment, less any DEPLOYSTER_* variable of the caller's."""
    for name in list(os.environ):
        if name.startswith("DEPLOYSTER_"):
            monkeypatch.delenv(name)
    return monkeypatch


def toml_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "deployster.toml"
    path.write_text(text)
    return path


def every_field_changed(tmp_path: Path) -> Settings:
    """A value other than the default for every field."""
    return Settings(
        token="t0ken-from-test",
        host="0.0.0.0",
        port=8080,
        data_dir=tmp_path / "data",
        redis_url="redis://127.0.0.1:6390/3",
        database_url="postgresql://deployster:pw@127.0.0.1/deployster",
        allowed_roots=(tmp_path / "srv", tmp_path / "opt"),
        namespace="staging",
        default_lock_ttl=60.5,
        default_timeout=120.0,
        log_cap_bytes=1000,
        retention=10.0,
        log_grace=5.0,
        sweep_interval=0.25,
        kill_grace=1.5,
        shutdown_grace=7.0,
        max_body_bytes=2048,
        max_commands=3,
        max_command_bytes=512,
        max_queue=0,
        sse_keepalive=2.5,
        max_streams=9,
        redis_connections=10,
        history_days=30.0,
        history_keep=4,
        log_format="json",
        node="web-1",
        notify=("webhook=https://hooks.example.com/a", "slack=https://hooks.slack.com/s/T/B/X"),
        notify_on="failed,lock_released",
        notify_secret="wh-secret",
        notify_window=600.0,
        notify_timeout=2.5,
        github_token="ghp_fromtest",
        github_api_url="https://github.example.com/api/v3",
        public_url="https://deploy.example.com",
        metrics_token="m3trics-from-test",
    )


class WithNewFields(Settings):
    """Fields of kinds Settings has none of yet: each parses by its type."""

    verbose: bool = False
    limit: Count | None = None


def test_the_expected_settings_change_every_field(tmp_path: Path) -> None:
    """The tests below cover every field: a new one must be added to them."""
    expected, defaults = every_field_changed(tmp_path), Settings()
    same = [name for name in Settings.model_fields
            if getattr(expected, name) == getattr(defaults, name)]
    assert same == []


# ------------------------------------------------------------- every field


def test_every_field_from_the_environment(
    environ: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    variables = {
        "DEPLOYSTER_TOKEN": "t0ken-from-test",
        "DEPLOYSTER_HOST": "0.0.0.0",
        "DEPLOYSTER_PORT": "8080",
        "DEPLOYSTER_DATA_DIR": str(tmp_path / "data"),
        "DEPLOYSTER_REDIS_URL": "redis://127.0.0.1:6390/3",
        "DEPLOYSTER_DATABASE_URL": "postgresql://deployster:pw@127.0.0.1/deployster",
        "DEPLOYSTER_ALLOWED_ROOTS": f"{tmp_path / 'srv'}:{tmp_path / 'opt'}",
        "DEPLOYSTER_NAMESPACE": "staging",
        "DEPLOYSTER_DEFAULT_LOCK_TTL": "60.5",
        "DEPLOYSTER_DEFAULT_TIMEOUT": "120",
        "DEPLOYSTER_LOG_CAP_BYTES": "1000",
        "DEPLOYSTER_RETENTION": "10",
        "DEPLOYSTER_LOG_GRACE": "5",
        "DEPLOYSTER_SWEEP_INTERVAL": "0.25",
        "DEPLOYSTER_KILL_GRACE": "1.5",
        "DEPLOYSTER_SHUTDOWN_GRACE": "7",
        "DEPLOYSTER_MAX_BODY_BYTES": "2048",
        "DEPLOYSTER_MAX_COMMANDS": "3",
        "DEPLOYSTER_MAX_COMMAND_BYTES": "512",
        "DEPLOYSTER_MAX_QUEUE": "0",
        "DEPLOYSTER_SSE_KEEPALIVE": "2.5",
        "DEPLOYSTER_MAX_STREAMS": "9",
        "DEPLOYSTER_REDIS_CONNECTIONS": "10",
        "DEPLOYSTER_HISTORY_DAYS": "30",
        "DEPLOYSTER_HISTORY_KEEP": "4",
        "DEPLOYSTER_LOG_FORMAT": "json",
        "DEPLOYSTER_NODE": "web-1",
        "DEPLOYSTER_NOTIFY": "webhook=https://hooks.example.com/a "
                             "slack=https://hooks.slack.com/s/T/B/X",
        "DEPLOYSTER_NOTIFY_ON": "failed,lock_released",
        "DEPLOYSTER_NOTIFY_SECRET": "wh-secret",
        "DEPLOYSTER_NOTIFY_WINDOW": "600",
        "DEPLOYSTER_NOTIFY_TIMEOUT": "2.5",
        "DEPLOYSTER_GITHUB_TOKEN": "ghp_fromtest",
        "DEPLOYSTER_GITHUB_API_URL": "https://github.example.com/api/v3",
        "DEPLOYSTER_PUBLIC_URL": "https://deploy.example.com",
        "DEPLOYSTER_METRICS_TOKEN": "m3trics-from-test",
    }
    for name, value in variables.items():
        environ.setenv(name, value)
    loaded = Settings.from_env()
    assert loaded == every_field_changed(tmp_path)
    assert isinstance(loaded.port, int) and isinstance(loaded.default_timeout, float)
    assert set(variables) | {"DEPLOYSTER_CONFIG"} == Settings.variables()


def test_every_field_from_a_toml_file(environ: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = toml_file(tmp_path, f"""\
token = "t0ken-from-test"
host = "0.0.0.0"
port = 8080
data_dir = "{tmp_path / 'data'}"
redis_url = "redis://127.0.0.1:6390/3"
database_url = "postgresql://deployster:pw@127.0.0.1/deployster"
allowed_roots = ["{tmp_path / 'srv'}", "{tmp_path / 'opt'}"]
namespace = "staging"
default_lock_ttl = 60.5
default_timeout = 120
log_cap_bytes = 1000
retention = 10.0
log_grace = 5.0
sweep_interval = 0.25
kill_grace = 1.5
shutdown_grace = 7
max_body_bytes = 2048
max_commands = 3
max_command_bytes = 512
max_queue = 0
sse_keepalive = 2.5
max_streams = 9
redis_connections = 10
history_days = 30
history_keep = 4
log_format = "json"
node = "web-1"
notify = ["webhook=https://hooks.example.com/a", "slack=https://hooks.slack.com/s/T/B/X"]
notify_on = "failed,lock_released"
notify_secret = "wh-secret"
notify_window = 600
notify_timeout = 2.5
github_token = "ghp_fromtest"
github_api_url = "https://github.example.com/api/v3"
public_url = "https://deploy.example.com"
metrics_token = "m3trics-from-test"
""")
    environ.setenv("DEPLOYSTER_CONFIG", str(config))
    assert Settings.from_env() == every_field_changed(tmp_path)


def test_a_toml_key_may_be_in_upper_case_and_the_allowed_roots_a_string(
    environ: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = toml_file(tmp_path, 'PORT = 8080\nallowed_roots = "/srv/a::/srv/b"\n')
    environ.setenv("DEPLOYSTER_CONFIG", str(config))
    loaded = Settings.from_env()
    assert loaded.port == 8080
    assert loaded.allowed_roots == (Path("/srv/a"), Path("/srv/b"))


def test_nothing_set_gives_the_defaults(environ: pytest.MonkeyPatch, tmp_path: Path) -> None:
    environ.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    loaded = Settings.from_env()
    assert loaded == Settings()
    assert loaded.token is None and loaded.redis_url is None and loaded.embedded_redis
    assert (loaded.host, loaded.port, loaded.allowed_roots) == ("127.0.0.1", 3259, ())
    assert loaded.log_cap_bytes == 50 * 1024 * 1024 and loaded.kill_grace == 5.0
    assert loaded.data_dir == tmp_path / "xdg" / "deployster"
    assert loaded.redis_socket == tmp_path / "xdg" / "deployster" / "redis.sock"
    assert loaded.effective_database_url == f"sqlite:///{tmp_path}/xdg/deployster/deployster.db"


def test_without_xdg_data_home_the_data_dir_is_under_the_home(
    environ: pytest.MonkeyPatch,
) -> None:
    environ.delenv("XDG_DATA_HOME", raising=False)
    assert Settings.from_env().data_dir == Path.home() / ".local" / "share" / "deployster"


def test_paths_expand_the_home_and_empty_roots_are_skipped(environ: pytest.MonkeyPatch) -> None:
    environ.setenv("DEPLOYSTER_DATA_DIR", "~/deploys")
    environ.setenv("DEPLOYSTER_ALLOWED_ROOTS", "~/sites::/srv/www:")
    loaded = Settings.from_env()
    assert loaded.data_dir == Path.home() / "deploys"
    assert loaded.allowed_roots == (Path.home() / "sites", Path("/srv/www"))


def test_a_database_url_wins_over_the_sqlite_file(tmp_path: Path) -> None:
    url = "postgresql://deployster@127.0.0.1/deployster"
    assert Settings(data_dir=tmp_path, database_url=url).effective_database_url == url


def test_the_variables_another_process_gets_load_the_same_settings(
    environ: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for settings in (every_field_changed(tmp_path), Settings(data_dir=tmp_path)):
        with pytest.MonkeyPatch.context() as scoped:
            for name, value in settings.to_env().items():
                scoped.setenv(name, value)
            assert Settings.from_env() == settings


# -------------------------------------------------------------- precedence


def test_the_environment_wins_over_the_file_and_flags_over_both(
    environ: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = toml_file(tmp_path, 'port = 1111\nhost = "10.0.0.1"\nnamespace = "from-file"\n')
    environ.setenv("DEPLOYSTER_CONFIG", str(config))
    environ.setenv("DEPLOYSTER_PORT", "2222")
    environ.setenv("DEPLOYSTER_HOST", "127.0.0.2")
    loaded = Settings.from_env()
    assert (loaded.port, loaded.host, loaded.namespace) == (2222, "127.0.0.2", "from-file")
    # A flag given wins; one left out (None) leaves the environment's value.
    flagged = Settings.from_env(port=3333, host=None)
    assert (flagged.port, flagged.host, flagged.namespace) == (3333, "127.0.0.2", "from-file")


def test_an_empty_variable_counts_as_unset(environ: pytest.MonkeyPatch, tmp_path: Path) -> None:
    environ.setenv("DEPLOYSTER_CONFIG", str(toml_file(tmp_path, "port = 1111\n")))
    environ.setenv("DEPLOYSTER_PORT", "")
    environ.setenv("DEPLOYSTER_TOKEN", "")
    loaded = Settings.from_env()
    assert loaded.port == 1111 and loaded.token is None
    environ.setenv("DEPLOYSTER_CONFIG", "")
    assert Settings.from_env().port == 3259


def test_only_the_exact_upper_case_names_are_read(environ: pytest.MonkeyPatch) -> None:
    # The runner drops exactly these names from the commands' environment.
    environ.setenv("deployster_port", "1111")
    environ.setenv("Deployster_Token", "lower-case-secret")
    loaded = Settings.from_env()
    assert loaded.port == 3259 and loaded.token is None


def test_with_overrides_converts_and_replaces_none_too(tmp_path: Path) -> None:
    settings = Settings(token="x", redis_url="redis://127.0.0.1:6379/0", data_dir=tmp_path)
    changed = settings.with_overrides(
        shutdown_grace=10, allowed_roots=[str(tmp_path)], port="8080", redis_url=None)
    assert changed.shutdown_grace == 10.0 and isinstance(changed.shutdown_grace, float)
    assert changed.allowed_roots == (tmp_path,) and changed.port == 8080
    assert changed.redis_url is None and changed.embedded_redis
    assert (changed.token, changed.data_dir) == ("x", tmp_path)
    assert settings.redis_url == "redis://127.0.0.1:6379/0"  # the original is untouched


def test_settings_are_immutable() -> None:
    settings = Settings()
    with pytest.raises(ValidationError):
        settings.port = 1
    assert settings.port == 3259


def test_the_redis_pool_exceeds_the_live_streams_by_default() -> None:
    # Each live stream holds a connection; the requests need some beside them.
    assert Settings().redis_connections == 0
    assert Settings().redis_pool_size == 300
    assert Settings(max_streams=20).redis_pool_size == 120
    assert Settings(max_streams=0).redis_pool_size == 100
    assert Settings(max_streams=20, redis_connections=21).redis_pool_size == 21


# --------------------------------------------------------------- bad values


@pytest.mark.parametrize(
    ("kind", "variable", "raw", "message"),
    [
        (Settings, "DEPLOYSTER_PORT", "abc", "DEPLOYSTER_PORT='abc' is not a valid int"),
        (Settings, "DEPLOYSTER_PORT", "80.5", "DEPLOYSTER_PORT='80.5' is not a valid int"),
        (Settings, "DEPLOYSTER_PORT", "-1",
         "DEPLOYSTER_PORT='-1' must be a finite number, 0 or more"),
        (Settings, "DEPLOYSTER_MAX_QUEUE", "inf", "DEPLOYSTER_MAX_QUEUE='inf' is not a valid int"),
        (Settings, "DEPLOYSTER_KILL_GRACE", "soon",
         "DEPLOYSTER_KILL_GRACE='soon' is not a valid float"),
        (Settings, "DEPLOYSTER_KILL_GRACE", "nan",
         "DEPLOYSTER_KILL_GRACE='nan' must be a finite number, 0 or more"),
        (Settings, "DEPLOYSTER_LOG_FORMAT", "xml",
         "DEPLOYSTER_LOG_FORMAT='xml' must be 'text' or 'json'"),
        (Settings, "DEPLOYSTER_NODE", "web 1",
         "DEPLOYSTER_NODE='web 1' must be 1-63 letters, digits, '.', '_' or '-', starting "
         "with a letter or digit"),
        (Settings, "DEPLOYSTER_RETENTION", "inf",
         "DEPLOYSTER_RETENTION='inf' must be a finite number, 0 or more"),
        (Settings, "DEPLOYSTER_HISTORY_DAYS", "-inf",
         "DEPLOYSTER_HISTORY_DAYS='-inf' must be a finite number, 0 or more"),
        (Settings, "DEPLOYSTER_SHUTDOWN_GRACE", "-0.5",
         "DEPLOYSTER_SHUTDOWN_GRACE='-0.5' must be a finite number, 0 or more"),
        (Settings, "DEPLOYSTER_REDIS_CONNECTIONS", "-1",
         "DEPLOYSTER_REDIS_CONNECTIONS='-1' must be a finite number, 0 or more"),
        (Settings, "DEPLOYSTER_REDIS_CONNECTIONS", "many",
         "DEPLOYSTER_REDIS_CONNECTIONS='many' is not a valid int"),
        # No more connections than live streams: they would leave requests none.
        (Settings, "DEPLOYSTER_REDIS_CONNECTIONS", "200",
         "DEPLOYSTER_REDIS_CONNECTIONS='200' must be 0 (the default: DEPLOYSTER_MAX_STREAMS "
         "+ 100) or more than DEPLOYSTER_MAX_STREAMS (200): each live stream holds a "
         "connection"),
        (Settings, "DEPLOYSTER_NOTIFY_ON", "complete,finished",
         "DEPLOYSTER_NOTIFY_ON='complete,finished' must be a comma-separated list of queued, "
         "started, complete, failed, superseded, cancelled, lock_released (or all); got "
         "'finished'"),
        (Settings, "DEPLOYSTER_NOTIFY_WINDOW", "-1",
         "DEPLOYSTER_NOTIFY_WINDOW='-1' must be a finite number, 0 or more"),
        (Settings, "DEPLOYSTER_NOTIFY_TIMEOUT", "soon",
         "DEPLOYSTER_NOTIFY_TIMEOUT='soon' is not a valid float"),
        (Settings, "DEPLOYSTER_GITHUB_API_URL", "api.github.com",
         "DEPLOYSTER_GITHUB_API_URL='api.github.com' must be an http:// or https:// URL"),
        # The targets are not repeated: a Slack or Discord URL is a credential.
        (Settings, "DEPLOYSTER_NOTIFY", "webhook=https://a/b teams=https://c/secret-path",
         "DEPLOYSTER_NOTIFY target 2: a notification target is KIND=URL with KIND one of "
         "webhook, slack, discord; got 'teams'"),
        (Settings, "DEPLOYSTER_NOTIFY", "slack=hooks.slack.com/secret-path",
         "DEPLOYSTER_NOTIFY target 1: the slack target's URL must be an http:// or https:// "
         "URL with a host"),
        # A field of a kind Settings has none of yet is refused by its type too.
        (WithNewFields, "DEPLOYSTER_VERBOSE", "maybe",
         "DEPLOYSTER_VERBOSE='maybe' is not a valid bool"),
        (WithNewFields, "DEPLOYSTER_LIMIT", "some", "DEPLOYSTER_LIMIT='some' is not a valid int"),
        (WithNewFields, "DEPLOYSTER_LIMIT", "-2",
         "DEPLOYSTER_LIMIT='-2' must be a finite number, 0 or more"),
    ],
)
def test_a_bad_variable_is_one_line_naming_it(
    environ: pytest.MonkeyPatch, kind: type[Settings], variable: str, raw: str, message: str
) -> None:
    environ.setenv(variable, raw)
    with pytest.raises(ConfigError) as refused:
        kind.from_env()
    assert refused.value.message == message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('port = "abc"', "DEPLOYSTER_PORT='abc' is not a valid int"),
        ("port = 80.5", "DEPLOYSTER_PORT=80.5 is not a valid int"),
        ("kill_grace = nan", "DEPLOYSTER_KILL_GRACE=nan must be a finite number, 0 or more"),
        ("max_streams = -3", "DEPLOYSTER_MAX_STREAMS=-3 must be a finite number, 0 or more"),
        ("max_streams = 10\nredis_connections = 5",
         "DEPLOYSTER_REDIS_CONNECTIONS=5 must be 0 (the default: DEPLOYSTER_MAX_STREAMS + 100) "
         "or more than DEPLOYSTER_MAX_STREAMS (10): each live stream holds a connection"),
        ("namespace = 5", "DEPLOYSTER_NAMESPACE=5 is not a valid str"),
        # Kept out of repr, as the admin token: never shown back.
        ("metrics_token = 918273645", "DEPLOYSTER_METRICS_TOKEN is not a valid str"),
        ("allowed_roots = 5", "DEPLOYSTER_ALLOWED_ROOTS=5 is not a valid list of Path"),
        ("data_dir = [1]", "DEPLOYSTER_DATA_DIR=[1] is not a valid Path"),
        ("prot = 8080", "unknown setting 'prot'"),
        ("deployster_port = 8080", "unknown setting 'deployster_port'"),
    ],
)
def test_a_bad_value_in_the_file_is_one_line_naming_its_variable(
    environ: pytest.MonkeyPatch, tmp_path: Path, text: str, message: str
) -> None:
    environ.setenv("DEPLOYSTER_CONFIG", str(toml_file(tmp_path, text + "\n")))
    with pytest.raises(ConfigError) as refused:
        Settings.from_env()
    assert refused.value.message == message


def test_an_unreadable_or_broken_file_is_one_line(
    environ: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    missing = tmp_path / "missing.toml"
    environ.setenv("DEPLOYSTER_CONFIG", str(missing))
    with pytest.raises(ConfigError) as refused:
        Settings.from_env()
    assert refused.value.message == (
        f"cannot read config file {missing}: No such file or directory")
    broken = toml_file(tmp_path, "port = [\n")
    environ.setenv("DEPLOYSTER_CONFIG", str(broken))
    with pytest.raises(ConfigError) as refused:
        Settings.from_env()
    assert refused.value.message.startswith(f"config file {broken} is not valid TOML: ")
    assert "\n" not in refused.value.message


def test_a_bad_override_is_refused_the_same_way() -> None:
    with pytest.raises(ConfigError) as refused:
        Settings().with_overrides(kill_grace=-1)
    assert refused.value.message == "DEPLOYSTER_KILL_GRACE=-1 must be a finite number, 0 or more"
    with pytest.raises(ConfigError) as refused:
        Settings().with_overrides(kill_graec=1)
    assert refused.value.message == "unknown setting 'kill_graec'"


# ------------------------------------------------------------ the token


def test_the_token_is_not_in_the_repr(tmp_path: Path) -> None:
    settings = every_field_changed(tmp_path)
    for shown in (repr(settings), str(settings)):
        assert "t0ken-from-test" not in shown and "token=" not in shown
        assert "m3trics-from-test" not in shown
        assert "staging" in shown  # the other fields are


def test_the_token_is_not_in_an_error_message(
    environ: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    environ.setenv("DEPLOYSTER_CONFIG", str(toml_file(tmp_path, "token = 918273645\n")))
    with pytest.raises(ConfigError) as refused:
        Settings.from_env()
    assert refused.value.message == "DEPLOYSTER_TOKEN is not a valid str"
    # Built directly, pydantic's own error does not show it either.
    with pytest.raises(ValidationError) as invalid:
        Settings(token=918273645)  # type: ignore[arg-type]
    assert "918273645" not in str(invalid.value)


def test_where_each_value_came_from(environ: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """What ``deployster config`` shows beside each value (tests/server/test_startup.py
    runs the command)."""
    config = toml_file(tmp_path, 'port = 1111\nhost = "10.0.0.1"\nnamespace = "ns"\n')
    environ.setenv("DEPLOYSTER_CONFIG", str(config))
    environ.setenv("DEPLOYSTER_PORT", "2222")
    environ.setenv("DEPLOYSTER_NAMESPACE", "")  # empty: unset, so the file's value
    loaded, origins = Settings.load(host="127.0.0.9", kill_grace=None)
    assert loaded == Settings.from_env(host="127.0.0.9")
    assert (origins["port"], origins["host"], origins["namespace"]) == (
        "environment", "flag", "file")
    assert {origins[name] for name in Settings.model_fields} - {
        origins["port"], origins["host"], origins["namespace"]} == {"default"}


def test_every_setting_says_what_it_is_in_one_line() -> None:
    """Its docstring in ``Settings``: ``serve --help`` lists it."""
    for name, field in Settings.model_fields.items():
        assert field.description and "\n" not in field.description, name


def test_passwords_in_urls_are_masked() -> None:
    assert mask_url("redis://:pw@127.0.0.1:6379/0") == "redis://:***@127.0.0.1:6379/0"
    assert mask_url("postgresql://app:p@ss/w@db/x?sslmode=require") == (
        "postgresql://app:***@db/x?sslmode=require")
    assert mask_url("redis://:p?w@h/0") == "redis://:***@h/0"
    assert mask_url("unix:///run/redis.sock?db=1&password=pw") == (
        "unix:///run/redis.sock?db=1&password=***")
    for unchanged in ("redis://127.0.0.1:6379/0", "sqlite:////var/lib/d.db", "redis://user@h/0",
                      "not a url"):
        assert mask_url(unchanged) == unchanged


# ------------------------------------------- a new field needs its type only


@pytest.mark.parametrize(
    ("verbose", "limit", "expected"),
    [("true", "5", (True, 5)), ("0", "", (False, None)), ("yes", "0", (True, 0)),
     ("off", "12", (False, 12))],
)
def test_a_new_bool_or_optional_int_field_parses_by_its_type(
    environ: pytest.MonkeyPatch, verbose: str, limit: str, expected: tuple[bool, int | None]
) -> None:
    environ.setenv("DEPLOYSTER_VERBOSE", verbose)
    environ.setenv("DEPLOYSTER_LIMIT", limit)
    loaded = WithNewFields.from_env()
    assert (loaded.verbose, loaded.limit) == expected
    assert {"DEPLOYSTER_VERBOSE", "DEPLOYSTER_LIMIT"} <= WithNewFields.variables()


# ------------------------------------------------- the commands' environment


def test_commands_get_no_setting_variable(environ: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in Settings.variables():
        environ.setenv(name, "server-only")
    environ.setenv("DEPLOYSTER_SOMETHING_ELSE", "passes")
    job = Job(id="j1", project_id=1, project="p", cd=str(tmp_path), commands=["true"],
              commit_hash="abc1234", ref_name="main")
    env = child_env(job)
    assert "server-only" not in env.values()
    assert env["DEPLOYSTER_SOMETHING_ELSE"] == "passes"
    assert "DEPLOYSTER_CONFIG" in Settings.variables() and len(Settings.variables()) == len(
        Settings.model_fields) + 1


# ------------------------------------------------------ as a user sees it


def serve(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "deployster", "serve"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=False)


def clean_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEPLOYSTER_")}
    return {**env, "DEPLOYSTER_TOKEN": TOKEN, "DEPLOYSTER_DATA_DIR": str(tmp_path / "data"),
            "DEPLOYSTER_PORT": str(free_port())}


@pytest.mark.parametrize(
    ("variable", "raw", "line"),
    [
        ("DEPLOYSTER_PORT", "abc", "deployster: error: DEPLOYSTER_PORT='abc' is not a valid int"),
        ("DEPLOYSTER_KILL_GRACE", "nan",
         "deployster: error: DEPLOYSTER_KILL_GRACE='nan' must be a finite number, 0 or more"),
    ],
)
def test_serve_with_a_bad_variable_says_so_in_one_line(
    tmp_path: Path, variable: str, raw: str, line: str
) -> None:
    assert one_line_error(serve({**clean_env(tmp_path), variable: raw})) == line


def test_serve_with_a_bad_token_in_the_file_does_not_print_it(tmp_path: Path) -> None:
    config = toml_file(tmp_path, "token = 918273645\n")
    env = {**clean_env(tmp_path), "DEPLOYSTER_CONFIG": str(config), "DEPLOYSTER_TOKEN": ""}
    line = one_line_error(serve(env))
    assert line == "deployster: error: DEPLOYSTER_TOKEN is not a valid str"


def test_serve_reads_its_settings_from_a_toml_file(
    settings: Settings, tmp_path: Path
) -> None:
    port = free_port()
    config = toml_file(tmp_path, f"""\
token = "{settings.token}"
host = "127.0.0.1"
port = {port}
data_dir = "{settings.data_dir}"
redis_url = "{settings.redis_url}"
database_url = "{settings.database_url}"
namespace = "{settings.namespace}"
""")
    # Every setting variable empty (unset): the file alone decides.
    unset = {name: "" for name in Settings.variables()}
    live = start_server(settings, tmp_path / "server.log", port=port,
                        extra_env={**unset, "DEPLOYSTER_CONFIG": str(config)})
    try:
        assert httpx.get(f"{live.url}/healthz", timeout=10).status_code == 200
        wrong = {"x-deployster-token": "not-the-token"}
        assert httpx.get(f"{live.url}/projects", headers=wrong, timeout=10).status_code == 403
        reply = httpx.get(f"{live.url}/projects", headers=live.headers, timeout=10)
        assert reply.status_code == 200, reply.text
    finally:
        live.stop()
    assert "Traceback" not in live.log()
