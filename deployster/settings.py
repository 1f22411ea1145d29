"""One settings object for the server, the dashboard and the CLI.

Values come from ``DEPLOYSTER_*`` environment variables, optionally layered over a
TOML file named by ``DEPLOYSTER_CONFIG`` (keys are the variable names without the
prefix, in lower case). The environment wins, so a unit file can override a
checked-in config; an empty variable counts as unset.

pydantic-settings reads the variables and pydantic converts each value by its
field's type, so a new field needs only its annotation. A value that does not
convert stops the command with one ``ConfigError`` line naming the variable.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from types import NoneType, UnionType
from typing import Annotated, Any, Literal, Self, Union, get_args, get_origin

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from .errors import ConfigError, DeploysterError
from .notify.targets import parse_events, parse_target

ENV_PREFIX = "DEPLOYSTER_"
CONFIG_VAR = f"{ENV_PREFIX}CONFIG"

# Where a setting's value came from (``Settings.load``).
DEFAULT, FILE, ENVIRONMENT, FLAG = "default", "file", "environment", "flag"


def env_name(field: str) -> str:
    """The variable a setting is read from: ``port`` -> ``DEPLOYSTER_PORT``."""
    return ENV_PREFIX + field.upper()


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "deployster"


def _expand_user(path: Path) -> Path:
    return Path(os.path.expanduser(path))


def _split_words(value: Any) -> Any:
    # The variable's form, "webhook=https://a slack=https://b" (URLs hold no
    # spaces); a TOML list passes as it is.
    if isinstance(value, str):
        return value.split()
    return value


def _check_targets(specs: tuple[str, ...]) -> tuple[str, ...]:
    for n, spec in enumerate(specs, 1):
        try:
            parse_target(spec)
        except DeploysterError as exc:
            # Not the spec itself: a Slack or Discord URL is a credential.
            raise ValueError(f"target {n}: {exc.message}") from None
    return specs


def _check_events(text: str) -> str:
    try:
        parse_events(text)
    except DeploysterError as exc:
        raise ValueError(exc.message.removeprefix("notification events ")) from None
    return text


def _check_url(url: str | None) -> str | None:
    if url is not None and (not re.match(r"https?://[^/\s]+", url) or any(
            ch.isspace() for ch in url)):
        raise ValueError("must be an http:// or https:// URL")
    return url


def _split_paths(value: Any) -> Any:
    # The variable's form, "/srv/a:/srv/b" (empty parts skipped); a TOML list
    # passes as it is.
    if isinstance(value, str):
        return [part for part in value.split(os.pathsep) if part]
    return value


# Redis connections of the server beyond one per live log stream, by default:
# the requests in flight, the dispatcher, the runners and the history writer.
REDIS_HEADROOM = 100
# A node's name (DEPLOYSTER_NODE): a host name's characters, so it reads well
# in a URL, a log line and a Redis key (deployster/node.py).
NODE_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")

# A path where a leading "~" is the user's home.
UserPath = Annotated[Path, AfterValidator(_expand_user)]
# Every number here is a size, a count or a duration: nan, inf or a negative
# value is a typo, never a setting.
Count = Annotated[int, Field(ge=0)]
Seconds = Annotated[float, Field(ge=0, allow_inf_nan=False)]
# NoDecode: pydantic-settings would read a tuple variable as JSON.
PathList = Annotated[tuple[UserPath, ...], NoDecode, BeforeValidator(_split_paths)]
Targets = Annotated[tuple[str, ...], NoDecode, BeforeValidator(_split_words),
                    AfterValidator(_check_targets)]
Url = Annotated[str, AfterValidator(_check_url)]
# Fields whose list is joined with spaces, not ":", in a variable (``to_env``).
_SPACE_JOINED = frozenset({"notify"})


class Settings(BaseSettings):
    """Immutable; build one with ``from_env`` (what the commands do) or directly
    with keyword arguments, which are validated the same way but never read the
    environment. ``with_overrides`` makes a changed copy."""

    model_config = SettingsConfigDict(
        frozen=True,
        extra="forbid",
        # Each field is read from exactly DEPLOYSTER_<FIELD> (no other spelling:
        # the runner drops exactly these names from the commands' environment).
        alias_generator=env_name,
        validate_by_name=True,
        case_sensitive=True,
        env_ignore_empty=True,
        # The admin token must not reach a log through a validation error.
        hide_input_in_errors=True,
        use_attribute_docstrings=True,
    )

    # Each field's docstring is its one-line meaning: `serve --help` and
    # `deployster config` show it (pydantic's use_attribute_docstrings).

    # Kept out of repr() and out of error messages.
    token: str | None = Field(default=None, repr=False)
    """The admin token, sent in the x-deployster-token header (unset: the data dir's kept one)."""
    host: str = "127.0.0.1"
    """The address `serve` listens on."""
    port: Count = 3259
    """The port `serve` listens on."""
    data_dir: UserPath = Field(default_factory=_default_data_dir)
    """The SQLite file, the embedded Redis (socket, append-only file) and the kept admin token."""
    redis_url: str | None = None
    """A Redis/Valkey: redis://host:6379/0, unix:///path, redis+sentinel://… (unset: embedded)."""
    database_url: str | None = None
    """postgresql://user:pass@host/db or sqlite:///path (unset: SQLite in the data dir)."""
    allowed_roots: PathList = ()
    """`:`-separated directories where an unknown project registers itself on its first deploy."""
    # Keys become "<ns>:deployster:…" and the lock "<ns>:lock:deploy:<id>".
    namespace: str = ""
    """A prefix of every Redis key, for several deployster instances sharing one Redis."""
    default_lock_ttl: Seconds = 600.0
    """The lock TTL of a new project, seconds."""
    default_timeout: Seconds = 3600.0
    """The job timeout of a new project, seconds."""
    log_cap_bytes: Count = 50 * 1024 * 1024
    """A job's log cap, bytes; the excess is dropped with a marker line."""
    # The /status cursor lives in Redis; the history keeps the rest.
    retention: Seconds = 24 * 3600.0
    """Seconds a finished job's record stays in Redis after reaching the SQL history."""
    log_grace: Seconds = 30.0
    """Seconds a finished job's log stream stays in Redis once the log is in SQL."""
    # A slow safety net for lost pub/sub notifications and expired locks.
    sweep_interval: Seconds = 2.0
    """Seconds between the dispatcher's safety sweeps (a missed wake-up, an expired lock)."""
    kill_grace: Seconds = 5.0
    """Seconds between SIGTERM and SIGKILL when a job is stopped."""
    shutdown_grace: Seconds = 30.0
    """On SIGTERM, seconds running jobs may go on before they are interrupted."""
    max_body_bytes: Count = 1024 * 1024
    """The largest request body, bytes (larger: 413)."""
    max_commands: Count = 100
    """The most commands one deploy request may list."""
    max_command_bytes: Count = 64 * 1024
    """The longest command of a deploy request, UTF-8 bytes."""
    max_queue: Count = 100
    """Deploys that may wait in one project's queue; past it 429 (0: no cap)."""
    sse_keepalive: Seconds = 15.0
    """Seconds without an event before a log stream sends a keep-alive comment."""
    max_streams: Count = 200
    """Live log streams one server serves at once (each holds a Redis connection)."""
    redis_connections: Count = 0
    """Redis connections a server opens at most, waiting for a free one (0: max_streams + 100)."""
    # Deleted hourly by the server, except each project's ``history_keep``
    # newest and its newest complete one (pruning.py).
    history_days: Seconds = 0.0
    """Finished deploys requested more than this many days ago leave the SQL history (0: never)."""
    history_keep: Count = 20
    """Finished deploys each project keeps in the history whatever their age."""
    log_format: Literal["text", "json"] = "text"
    """The server's log lines: text, or json (one object a line, for a log shipper)."""
    node: str = ""
    """This host's node name in a fleet sharing one Redis and PostgreSQL (unset: the kept one)."""
    public_url: str | None = None
    """The URL other nodes and links reach this server at (e.g. https://deploy.example.com)."""
    # Kept out of repr() and out of error messages, as the token is.
    metrics_token: str | None = Field(default=None, repr=False)
    """The bearer token GET /metrics requires (unset: /metrics is open, as exporters are)."""

    # Notifications and GitHub deployments (deployster/notify/).
    notify: Targets = Field(default=(), repr=False)
    """Space-separated KIND=URL targets (webhook, slack, discord) of projects without their own."""
    notify_on: Annotated[str, AfterValidator(_check_events)] = "complete,failed"
    """The events those targets get (comma-separated; all, or see `project add --help`)."""
    notify_secret: str | None = Field(default=None, repr=False)
    """The HMAC-SHA256 key that signs the bodies of those targets' webhooks."""
    notify_window: Seconds = 3600.0
    """Seconds a notification is retried for, with backoff, before it is given up."""
    notify_timeout: Seconds = 10.0
    """Seconds one delivery attempt may take."""
    github_token: str | None = Field(default=None, repr=False)
    """A GitHub token for the deployments of projects with --github and no token of their own."""
    github_api_url: Url = "https://api.github.com"
    """The GitHub API (GitHub Enterprise: https://HOST/api/v3)."""

    @field_validator("node")
    @classmethod
    def _node_name(cls, value: str) -> str:
        if value and not NODE_PATTERN.fullmatch(value):
            raise ValueError("must be 1-63 letters, digits, '.', '_' or '-', starting with a "
                             "letter or digit")
        return value

    @field_validator("redis_connections")
    @classmethod
    def _more_connections_than_streams(cls, value: int, info: ValidationInfo) -> int:
        streams = info.data.get("max_streams")  # absent: that field failed first
        if value and streams is not None and value <= streams:
            raise ValueError(
                f"must be 0 (the default: {env_name('max_streams')} + {REDIS_HEADROOM}) or more "
                f"than {env_name('max_streams')} ({streams}): each live stream holds a "
                "connection"
            )
        return value

    # ------------------------------------------------------------------ loading
    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Settings(...) holds what it is given and nothing else (tests and tools
        # build one that way); only from_env() reads the environment.
        return (init_settings,)

    @classmethod
    def from_env(cls, **overrides: Any) -> Self:
        """The settings of this process: the TOML file named by
        ``DEPLOYSTER_CONFIG``, under the ``DEPLOYSTER_*`` variables, under
        ``overrides`` (command-line flags; ``None`` means the flag was not
        given). Raises ``ConfigError`` for an unreadable file, an unknown key or
        a value that does not convert."""
        return cls.load(**overrides)[0]

    @classmethod
    def load(cls, **overrides: Any) -> tuple[Self, dict[str, str]]:
        """``from_env``, and where each field's value came from: ``DEFAULT``,
        ``FILE``, ``ENVIRONMENT`` or ``FLAG`` (what ``deployster config``
        shows). Raises ``ConfigError`` as ``from_env`` does."""
        config_file = os.environ.get(CONFIG_VAR)
        values = _read_toml(Path(config_file)) if config_file else {}
        origins = dict.fromkeys(values, FILE)
        by_variable = {env_name(name): name for name in cls.model_fields}
        from_variables = {
            by_variable.get(key, key): raw for key, raw in EnvSettingsSource(cls)().items()
        }
        flags = {k: v for k, v in overrides.items() if v is not None}
        for given, origin in ((from_variables, ENVIRONMENT), (flags, FLAG)):
            values.update(given)
            origins.update(dict.fromkeys(given, origin))
        settings = cls._validated(values)
        return settings, {name: origins.get(name, DEFAULT) for name in cls.model_fields}

    def with_overrides(self, **overrides: Any) -> Self:
        """A copy with these fields replaced (``None`` included), converted and
        checked like ``from_env``'s values. Raises ``ConfigError``."""
        return self._validated({**self.model_dump(), **overrides})

    @classmethod
    def _validated(cls, values: dict[str, Any]) -> Self:
        try:
            # model_validate, unlike Settings(...), consults no source.
            return cls.model_validate(values)
        except ValidationError as exc:
            raise _config_error(cls, exc, values) from None

    @classmethod
    def variables(cls) -> frozenset[str]:
        """Every environment variable the settings are read from: one per field,
        and ``DEPLOYSTER_CONFIG``."""
        return frozenset({env_name(name) for name in cls.model_fields} | {CONFIG_VAR})

    def to_env(self) -> dict[str, str]:
        """The ``DEPLOYSTER_*`` variables that make another process's
        ``from_env()`` load these same settings: ``allowed_roots`` joined with
        ``:``, ``None`` as an empty variable (which reads as unset)."""
        env: dict[str, str] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if value is None:
                text = ""
            elif isinstance(value, tuple):
                sep = " " if name in _SPACE_JOINED else os.pathsep
                text = sep.join(str(item) for item in value)
            else:
                text = str(value)
            env[env_name(name)] = text
        return env

    # --------------------------------------------------------------- derived
    @property
    def embedded_redis(self) -> bool:
        return not self.redis_url

    @property
    def redis_pool_size(self) -> int:
        """The most Redis connections the server opens (``redis_connections``,
        0 meaning ``max_streams`` + ``REDIS_HEADROOM``)."""
        return self.redis_connections or self.max_streams + REDIS_HEADROOM

    @property
    def redis_socket(self) -> Path:
        return self.data_dir / "redis.sock"

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / 'deployster.db'}"

    @property
    def redis_shown(self) -> str:
        """The Redis in use, for a log line or a message: its URL with the
        password masked, or the embedded one's socket."""
        if self.redis_url:
            return mask_url(self.redis_url)
        return f"unix://{self.redis_socket} (embedded)"

    @property
    def database_shown(self) -> str:
        """The database in use, its URL's password masked."""
        return mask_url(self.effective_database_url)



def _config_error(cls: type[Settings], exc: ValidationError, values: dict[str, Any]) -> ConfigError:
    """One line for the first thing wrong, naming its variable and the value as
    given, unless the field is kept out of repr (the token)."""
    error = exc.errors()[0]
    key = str(error["loc"][0]) if error["loc"] else ""
    name = {env_name(n): n for n in cls.model_fields}.get(key, key)
    if error["type"] == "extra_forbidden" or name not in cls.model_fields:
        return ConfigError(f"unknown setting {name!r}")
    field = cls.model_fields[name]
    given = values.get(name, error["input"])
    shown = f"{env_name(name)}={given!r}" if field.repr else env_name(name)
    if error["type"] in ("greater_than_equal", "finite_number"):
        return ConfigError(f"{shown} must be a finite number, 0 or more")
    if error["type"] == "value_error":  # a check of ours: its message
        return ConfigError(f"{shown} {error['ctx']['error']}")
    if error["type"] == "literal_error":  # one of a few words
        return ConfigError(f"{shown} must be {error['ctx']['expected']}")
    return ConfigError(f"{shown} is not a valid {_kind(field.annotation)}")


def _kind(annotation: Any) -> str:
    """A type as a user reads it: ``int`` for ``int``, ``int | None`` and
    ``Annotated[int, …]``; ``list of Path`` for ``tuple[Path, ...]``."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return _kind(args[0])
    if origin in (Union, UnionType):
        options = [arg for arg in args if arg is not NoneType]
        if len(options) == 1:
            return _kind(options[0])
    if origin in (tuple, list) and args:
        return f"list of {_kind(args[0])}"
    return annotation.__name__ if isinstance(annotation, type) else str(annotation)


def mask_url(url: str) -> str:
    """``url`` with any password in it shown as ``***``: the one in
    ``user:password@`` and a ``password=`` query parameter (redis-py reads
    both). Text that is no URL comes back as it is."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    # The user info ends at the last "@": a password with a raw "/", "?" or
    # "@" in it (a URL no client parses as meant) is masked whole, never in part.
    userinfo, at, _ = rest.rpartition("@")
    if at and ":" in userinfo and not userinfo.startswith("/"):
        rest = f"{userinfo.split(':', 1)[0]}:***@{rest[len(userinfo) + 1:]}"
    query_at = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    head, tail = rest[:query_at], rest[query_at:]
    tail = re.sub(r"([?&]password=)[^&#]*", r"\1***", tail, flags=re.IGNORECASE)
    return f"{scheme}://{head}{tail}"


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    return {str(k).lower(): v for k, v in data.items()}
