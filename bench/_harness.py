"""Shared plumbing for the benchmark scripts (not a benchmark itself).

Each benchmark gets a temp dir (data dir, SQLite file, project dirs, stub bin
dir), a unique ``DEPLOYSTER_NAMESPACE``, a real ``deployster serve`` subprocess on
a free 127.0.0.1 port, and on exit: the server stopped, the namespace's Redis
keys deleted, the temp dir removed (and the embedded Redis stopped if we
started one, a temporary PostgreSQL database dropped if we created one).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import cast

import httpx
import redis

import deployster
from deployster.embedded_redis import ensure_embedded_redis, stop_embedded_redis
from deployster.keys import Keys

DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
TOKEN = "bench-token-" + uuid.uuid4().hex
REPO = Path(__file__).resolve().parent.parent
# Where the deployster this process imported lives. Subprocesses (``python -m
# deployster``) start there: ``-m`` puts the working directory first on
# sys.path, so with ``PYTHONPATH=<another checkout>`` a server started from
# REPO would run REPO's code, not the checkout being measured.
CODE_ROOT = Path(deployster.__file__).resolve().parent.parent


# ------------------------------------------------------------------ options


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--redis-url",
        help=f"Redis to use (default: {DEFAULT_REDIS} if it answers, else an embedded "
        "redis-server in a temp dir; 'embedded' for one of the bench's own)",
    )
    parser.add_argument(
        "--database-url",
        help="PostgreSQL admin URL (e.g. postgresql://postgres@127.0.0.1:5432/test): a "
        "temporary database is created there and dropped after (default: SQLite in the "
        "temp dir)",
    )
    parser.add_argument("--keep", action="store_true",
                        help="keep the temp dir (server log, stamps) for inspection")


def redis_answers(url: str) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=0.5)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except redis.RedisError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------- figures


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (pct in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def summary(values: Sequence[float]) -> dict[str, float]:
    return {
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": max(values),
        "min": min(values),
        "mean": statistics.fmean(values),
    }


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def wait_until(check: Callable[[], object], *, timeout: float, interval: float = 0.02,
               what: str = "condition") -> None:
    """Poll ``check()`` until truthy; raise TimeoutError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")


def proc_cpu_seconds(pid: int) -> float:
    """User+system CPU seconds of a process (Linux /proc), 0.0 when unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks
    except (OSError, IndexError, ValueError):
        return 0.0


# ----------------------------------------------------------------- the env


@dataclass
class BenchEnv:
    """Temp dir, Redis, database and namespace for one benchmark run."""

    name: str
    redis_url_arg: str | None = None
    database_url_arg: str | None = None
    keep: bool = False
    tmp: Path = field(init=False)
    namespace: str = field(init=False)
    redis_url: str = field(init=False)
    database_url: str = field(init=False)
    stub_bin: Path = field(init=False)
    _embedded_dir: Path | None = field(default=None, init=False)
    _pg_database: tuple[str, str] | None = field(default=None, init=False)
    _servers: list[Server] = field(default_factory=list, init=False)

    def __enter__(self) -> BenchEnv:
        # Short prefix: the embedded Redis socket path must stay under 108 bytes.
        self.tmp = Path(tempfile.mkdtemp(prefix=f"dst-{self.name[:8]}-"))
        self.namespace = f"bench{self.name[:8]}{uuid.uuid4().hex[:8]}"
        self.stub_bin = self.tmp / "bin"
        self.stub_bin.mkdir()
        try:
            self.redis_url = self._resolve_redis()
            self.database_url = self._resolve_database()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for server in reversed(self._servers):
            server.stop()
        if getattr(self, "redis_url", None):
            with contextlib.suppress(redis.RedisError):
                removed = delete_namespace(self.redis_url, self.namespace)
                print(f"[cleanup] deleted {removed} Redis keys under {self.namespace}:*",
                      file=sys.stderr)
        if self._pg_database is not None:
            admin, dbname = self._pg_database
            with contextlib.suppress(Exception):
                asyncio.run(_pg_exec(admin, f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)'))
        if self._embedded_dir is not None:
            stop_embedded_redis(self._embedded_dir)
        if self.keep:
            print(f"[cleanup] kept {self.tmp}", file=sys.stderr)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # -- resources
    def _resolve_redis(self) -> str:
        if self.redis_url_arg == "embedded":  # a Redis of the bench's own
            self._embedded_dir = self.tmp / "redis"
            return ensure_embedded_redis(self._embedded_dir)
        if self.redis_url_arg:
            if not redis_answers(self.redis_url_arg):
                raise SystemExit(f"Redis at {self.redis_url_arg} does not answer")
            return self.redis_url_arg
        if redis_answers(DEFAULT_REDIS):
            return DEFAULT_REDIS
        self._embedded_dir = self.tmp / "redis"
        return ensure_embedded_redis(self._embedded_dir)

    def _resolve_database(self) -> str:
        if not self.database_url_arg:
            return f"sqlite:///{self.tmp / 'data' / 'deployster.db'}"
        admin = self.database_url_arg.replace("postgresql+asyncpg://", "postgresql://")
        if not admin.startswith(("postgresql://", "postgres://")):
            raise SystemExit("--database-url must be a postgresql:// URL")
        dbname = f"deployster_bench_{uuid.uuid4().hex[:10]}"
        asyncio.run(_pg_exec(admin, f'CREATE DATABASE "{dbname}"'))
        self._pg_database = (admin, dbname)
        return f"{admin.rsplit('/', 1)[0]}/{dbname}"

    @property
    def database_kind(self) -> str:
        return "postgresql" if self._pg_database else "sqlite"

    @property
    def redis_kind(self) -> str:
        return "embedded" if self._embedded_dir else self.redis_url

    @property
    def sqlite_path(self) -> Path | None:
        if self._pg_database:
            return None
        return self.tmp / "data" / "deployster.db"

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for ``deployster`` subprocesses (stub bin dir first on PATH)."""
        return {
            **os.environ,
            "DEPLOYSTER_TOKEN": TOKEN,
            "DEPLOYSTER_DATA_DIR": str(self.tmp / "data"),
            "DEPLOYSTER_NAMESPACE": self.namespace,
            "DEPLOYSTER_REDIS_URL": self.redis_url,
            "DEPLOYSTER_DATABASE_URL": self.database_url,
            # Benches queue thousands of jobs behind one held lock: no queue cap.
            "DEPLOYSTER_MAX_QUEUE": "0",
            "PATH": f"{self.stub_bin}{os.pathsep}{os.environ.get('PATH', '')}",
            **extra,
        }

    def write_stub(self, name: str, body: str) -> Path:
        path = self.stub_bin / name
        path.write_text("#!/bin/sh\n" + body)
        path.chmod(0o755)
        return path

    def project(self, dirname: str, *options: str) -> Path:
        """Create a project directory and register it (``deployster project add``
        with ``options``, e.g. ``--verify-window 0``)."""
        path = self.tmp / dirname
        path.mkdir()
        result = subprocess.run(
            [sys.executable, "-m", "deployster", "project", "add", str(path), *options],
            env=self.env(), cwd=CODE_ROOT, capture_output=True, text=True, timeout=60,
        )
        if result.returncode != 0:
            raise SystemExit(f"project add failed: {result.stderr.strip()}")
        return path

    def serve(self, *, argv: list[str] | None = None, **extra_env: str) -> Server:
        """``deployster serve`` (or ``argv``, another server), stopped on exit."""
        server = Server.start(self.env(**extra_env), self.tmp / f"server{len(self._servers)}.log",
                              argv=argv)
        self._servers.append(server)
        return server


async def _pg_exec(dsn: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def delete_namespace(url: str, namespace: str) -> int:
    """Delete ``<ns>:*`` (which includes the locks, ``<ns>:lock:*``)."""
    client = redis.Redis.from_url(url)
    try:
        keys: set[bytes] = set()
        for pattern in (f"{namespace}:*", f"{namespace}:lock:*"):
            keys.update(client.scan_iter(pattern, count=1000))
        ordered = list(keys)
        for start in range(0, len(ordered), 500):
            client.delete(*ordered[start : start + 500])
        return len(ordered)
    finally:
        client.close()


# ---------------------------------------------------------------- servers


@dataclass
class Server:
    """A subprocess serving HTTP on 127.0.0.1:<port>, ready once /healthz answers."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @classmethod
    def start(cls, env: dict[str, str], log_path: Path, *,
              argv: list[str] | None = None, port: int | None = None,
              health: str = "/healthz", timeout: float = 30.0) -> Server:
        port = port or free_port()
        env = {**env, "DEPLOYSTER_HOST": "127.0.0.1", "DEPLOYSTER_PORT": str(port)}
        with log_path.open("wb") as out:
            process = subprocess.Popen(
                argv or [sys.executable, "-m", "deployster", "serve"],
                env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=CODE_ROOT,
            )
        server = cls(f"http://127.0.0.1:{port}", process, log_path)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise SystemExit(f"server exited with {process.returncode}:\n{server.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(server.url + health, timeout=1).status_code == 200:
                    return server
            time.sleep(0.05)
        server.stop(signal.SIGKILL)
        raise SystemExit(f"server did not come up in {timeout:g}s:\n{server.log_tail()}")

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


class Sink:
    """A notification target for the benches: a local HTTP endpoint that
    answers every POST 200 at once and counts them. A bare asyncio protocol on
    a loop of its own thread: the bench's receiving end must cost the shared
    CPUs as little as a remote target would cost them nothing."""

    def __init__(self) -> None:
        self.count = 0
        self._loop = asyncio.new_event_loop()
        sink = self

        class Answer(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = cast(asyncio.Transport, transport)
                self.data = b""

            def data_received(self, data: bytes) -> None:
                self.data += data
                head, sep, body = self.data.partition(b"\r\n\r\n")
                if not sep:
                    return
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if len(body) >= length:
                    sink.count += 1
                    self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n"
                                         b"Connection: close\r\n\r\n")
                    self.transport.close()

        ready = threading.Event()
        port: list[int] = []

        def serve() -> None:  # the loop is this thread's: the caller's may be running one
            asyncio.set_event_loop(self._loop)
            server = self._loop.run_until_complete(
                self._loop.create_server(Answer, "127.0.0.1", 0))
            port.append(server.sockets[0].getsockname()[1])
            ready.set()
            self._loop.run_forever()

        threading.Thread(target=serve, daemon=True).start()
        ready.wait(10)
        self.url = f"http://127.0.0.1:{port[0]}/hook"

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)


NOTIFY_SECRET = "bench-notify-secret"


def notify_options(env: BenchEnv, *sinks: Sink, events: str = "all") -> list[str]:
    """``project add`` options giving a project these sinks as webhook targets
    wanting ``events`` (default every one), signed."""
    secret = env.tmp / "notify.secret"
    secret.write_text(NOTIFY_SECRET)
    return [*(a for s in sinks for a in ("--notify", f"webhook={s.url}")),
            "--notify-on", events, "--notify-secret-file", str(secret)]


def wait_for_notifications(env: BenchEnv, timeout: float = 120) -> None:
    """Until the server's notifier has sent everything (nothing in the outbox,
    no delivery lane left)."""
    keys = Keys(env.namespace)
    client = redis.Redis.from_url(env.redis_url)
    try:
        wait_until(lambda: not client.xlen(keys.outbox) and not client.zcard(keys.notify_due),
                   timeout=timeout, interval=0.1, what="the notifications to be sent")
    finally:
        client.close()


def headers() -> dict[str, str]:
    return {"x-deployster-token": TOKEN}


def deploy_body(cd: Path, *commands: str, program: str = "bench-app", ref: str = "main",
                commit: str = "0123abc") -> dict[str, object]:
    """A seed-shaped deploy body. Give each request its own ``commit``: the server
    answers an identical request still queued with that job instead of a new one."""
    return {
        "cd": str(cd),
        "commands": [*commands, f"supervisorctl restart {program}"],
        "commit_hash": commit,
        "ref_name": ref,
    }
