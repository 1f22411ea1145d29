"""A Redis behind Sentinel (``redis+sentinel://``, README.md#several-hosts): a
real master and a real sentinel (``redis-server --sentinel``) started here, a
real server deploying through them."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from deployster.embedded_redis import redis_server_binary
from deployster.errors import ConfigError
from deployster.redis_conn import redis_from_url
from deployster.settings import Settings
from tests.helpers.deploys import deploy_body, wait_for_status
from tests.helpers.processes import stop_process
from tests.helpers.server import free_port, register, start_server


def _wait_ping(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if redis.Redis(port=port, socket_connect_timeout=0.2).ping():
                return
        except redis.RedisError:
            time.sleep(0.05)
    raise AssertionError(f"nothing answers on {port}")


@pytest.fixture
def sentinel_url(tmp_path: Path) -> Iterator[str]:
    """A master and a sentinel watching it as 'mymaster'; their URL."""
    binary = str(redis_server_binary())
    master, sentinel = free_port(), free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(f"port {sentinel}\nbind 127.0.0.1\n"
                    f"sentinel monitor mymaster 127.0.0.1 {master} 1\n")
    procs = [subprocess.Popen([binary, "--port", str(master), "--bind", "127.0.0.1",
                               "--save", "", "--appendonly", "no"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        _wait_ping(master)
        procs.append(subprocess.Popen([binary, str(conf), "--sentinel"], cwd=tmp_path,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        _wait_ping(sentinel)
        yield f"redis+sentinel://127.0.0.1:{sentinel}/mymaster/0"
    finally:
        for proc in procs:
            stop_process(proc)


async def test_a_server_deploys_through_a_sentinel_managed_redis(
    settings: Settings, sentinel_url: str, project_dir: Path, tmp_path: Path
) -> None:
    through = settings.model_copy(update={"redis_url": sentinel_url})
    await register(through, project_dir)
    live = start_server(through, tmp_path / "server.log")
    try:
        async with live.client() as client:
            reply = await client.post("/deploy", json=deploy_body(project_dir, "echo via-sentinel"))
            assert reply.status_code == 200, reply.text
            done = await wait_for_status(client, reply.json()["job_id"])
        assert done["status"] == "complete" and "via-sentinel" in str(done["logs"])
    finally:
        live.stop()


@pytest.mark.parametrize("url", ["redis+sentinel://127.0.0.1:26379",
                                 "redis+sentinel://127.0.0.1:26379/",
                                 "redis+sentinel://127.0.0.1/mymaster",
                                 "redis+sentinel://127.0.0.1:26379/mymaster/x"])
def test_a_sentinel_url_it_cannot_read_is_a_clear_error(url: str) -> None:
    with pytest.raises(ConfigError, match="sentinel"):
        redis_from_url(url)
