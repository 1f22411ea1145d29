"""One settings object for the server, the dashboard and the CLI.

Values come from ``DEPLOYSTER_*`` environment variables, optionally layered over a
TOML file named by ``DEPLOYSTER_CONFIG`` (keys are the variable names without the
prefix, in lower case). The environment wins, so a unit file can override a
checked-in config.
"""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .errors import ConfigError

ENV_PREFIX = "DEPLOYSTER_"


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "deployster"


@dataclass(frozen=True)
class Settings:
    token: str | None = None
    host: str = "127.0.0.1"
    port: int = 3259
    data_dir: Path = field(default_factory=_default_data_dir)
    redis_url: str | None = None
    database_url: str | None = None
    allowed_roots: tuple[Path, ...] = ()
    # Prefix for several deployster instances sharing one Redis: keys become
    # "<ns>:deployster:…" and the lock "<ns>:lock:deploy:<id>".
    namespace: str = ""
    default_lock_ttl: float = 600.0
    default_timeout: float = 3600.0
    log_cap_bytes: int = 50 * 1024 * 1024
    # How long a finished job's record and log stream stay in Redis after they
    # reached SQL (the /status cursor lives there; history keeps the rest).
    retention: float = 24 * 3600.0
    # Slow safety net for lost pub/sub notifications and expired locks.
    sweep_interval: float = 2.0
    kill_grace: float = 5.0
    # On SIGTERM, how long running jobs may go on before they are interrupted.
    shutdown_grace: float = 30.0
    max_body_bytes: int = 1024 * 1024
    # Per deploy request: how many commands, and how long each may be (UTF-8 bytes).
    max_commands: int = 100
    max_command_bytes: int = 64 * 1024
    # Jobs that may wait in one project's queue; past it a deploy gets 429 (0: no cap).
    max_queue: int = 100
    # Seconds without an event before an SSE stream sends a keep-alive comment.
    sse_keepalive: float = 15.0
    # Live log streams one server serves at once (each holds a Redis connection).
    max_streams: int = 200
    # SQL history: finished deploys requested more than this many days ago are
    # deleted (hourly, by the server), except each project's ``history_keep``
    # newest. 0 keeps everything.
    history_days: float = 0.0
    history_keep: int = 20

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> Settings:
        env = dict(os.environ if environ is None else environ)
        values: dict[str, Any] = {}
        config_file = env.get(ENV_PREFIX + "CONFIG")
        if config_file:
            values.update(_read_toml(Path(config_file)))
        for f in fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is not None and raw != "":
                values[f.name] = raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**{k: _coerce(k, v) for k, v in values.items()})

    def with_overrides(self, **overrides: Any) -> Settings:
        return replace(
            self, **{k: _coerce(k, v) for k, v in overrides.items() if v is not None}
        )

    # --------------------------------------------------------------- derived
    @property
    def embedded_redis(self) -> bool:
        return not self.redis_url

    @property
    def redis_socket(self) -> Path:
        return self.data_dir / "redis.sock"

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / 'deployster.db'}"

    def require_token(self) -> str:
        if not self.token:
            raise ConfigError(
                "DEPLOYSTER_TOKEN is not set: export a long random secret, e.g. "
                "DEPLOYSTER_TOKEN=$(openssl rand -hex 32), and send it in the "
                "x-deployster-token header."
            )
        return self.token


_FIELD_TYPES = {f.name: f.type for f in fields(Settings)}


def _coerce(name: str, value: Any) -> Any:
    if name not in _FIELD_TYPES:
        raise ConfigError(f"unknown setting {name!r}")
    kind = str(_FIELD_TYPES[name])
    try:
        if name == "allowed_roots":
            if isinstance(value, str):
                value = [p for p in value.split(os.pathsep) if p]
            return tuple(Path(os.path.expanduser(str(p))) for p in value)
        if name == "data_dir":
            return Path(os.path.expanduser(str(value)))
        if kind == "int":
            number: int | float = int(value)
        elif kind == "float":
            number = float(value)
        else:
            return value
    except (TypeError, ValueError):
        raise ConfigError(
            f"{ENV_PREFIX}{name.upper()}={value!r} is not a valid {kind}"
        ) from None
    # Every number here is a size, a count or a duration: nan, inf or a
    # negative value is a typo, never a setting.
    if not math.isfinite(number) or number < 0:
        raise ConfigError(
            f"{ENV_PREFIX}{name.upper()}={value!r} must be a finite number, 0 or more"
        )
    return number


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    return {str(k).lower(): v for k, v in data.items()}
