"""A real ``deployster serve`` in a subprocess, on a free port of 127.0.0.1.

``start_server`` waits until ``/healthz`` answers 200 and returns a
``LiveServer`` (its URL, token, settings, environment, process and log); the
``server`` fixture (``tests/conftest.py``) is one per test, ``serving`` one for
a fixture of a module's own; ``register`` adds projects for a server whose
settings the ``core`` fixture does not share. ``TOKEN`` is the admin token of
the tests' settings.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from deployster.service import Deployster
from deployster.settings import Settings
from tests.helpers.paths import REPO, STUB_BIN
from tests.helpers.processes import stop_process

TOKEN = "test-token-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def settings_env(settings: Settings) -> dict[str, str]:
    """The DEPLOYSTER_* variables that make another process use ``settings``."""
    return settings.to_env()


@dataclass
class LiveServer:
    url: str
    token: str
    settings: Settings
    env: dict[str, str]
    process: subprocess.Popen[bytes]
    log_path: Path
    headers: dict[str, str] = field(default_factory=dict)

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, headers=self.headers, timeout=30)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        return stop_process(self.process, sig, timeout)


async def register(settings: Settings, *paths: Path) -> None:
    """Register ``paths`` as projects through a core of its own, closed after:
    for a server on ``settings`` that the ``core`` fixture does not use (say,
    a Redis of the test's own)."""
    setup = await Deployster.open(settings)
    try:
        for path in paths:
            await setup.projects.add(str(path))
    finally:
        await setup.close()


def start_server(settings: Settings, log_path: Path, extra_env: dict[str, str] | None = None,
                 port: int | None = None) -> LiveServer:
    port = port or free_port()
    env = {
        **os.environ,
        **settings_env(settings),
        "DEPLOYSTER_HOST": "127.0.0.1",
        "DEPLOYSTER_PORT": str(port),
        "PATH": f"{STUB_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        **(extra_env or {}),
    }
    out = log_path.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "deployster", "serve"],
        env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO,
    )
    url = f"http://127.0.0.1:{port}"
    server = LiveServer(url, settings.token or "", settings, env, process, log_path,
                        {"x-deployster-token": settings.token or ""})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{server.log()}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    server.stop(signal.SIGKILL)
    raise RuntimeError(f"server did not come up:\n{server.log()}")


def serving(settings: Settings, tmp_path: Path, **env: str) -> Iterator[LiveServer]:
    """A live server for a fixture (``yield from serving(...)``), stopped after."""
    live = start_server(settings, tmp_path / "server.log", extra_env=env)
    try:
        yield live
    finally:
        live.stop()
