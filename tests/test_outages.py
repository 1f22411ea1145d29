"""``outages.classify``: which exceptions mean Redis is out, the database is out,
or neither. One table, each row an exception produced for real the way the
library raises it (a closed port, a Redis refusing writes, a locked SQLite
file, a pipe with no reader), never built by hand.

The ``except REDIS_DOWN`` clauses across the code must agree with the function:
checked on every row.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import sqlite3
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from databases import Database

from deployster.embedded_redis import redis_server_binary
from deployster.outages import REDIS_DOWN, Outage, RedisRefused, classify
from deployster.redis_conn import redis_from_url
from tests.helpers.databases import pg_admin_url
from tests.helpers.refusing_redis import RefusingRedis
from tests.helpers.server import free_port

REDIS, DATABASE = Outage.REDIS, Outage.DATABASE

# A script that writes, as deployster's Lua scripts do.
WRITE = "redis.call('SET', KEYS[1], ARGV[1]) return 1"


async def raised(action: Callable[[], Awaitable[object]]) -> BaseException:
    """The exception ``action`` raises (it must raise one)."""
    try:
        await action()
    except Exception as exc:
        return exc
    raise AssertionError("no exception was raised")


def raised_now(action: Callable[[], object]) -> BaseException:
    """The exception the blocking ``action`` raises (it must raise one)."""
    try:
        action()
    except Exception as exc:
        return exc
    raise AssertionError("no exception was raised")


def check(exc: BaseException, expected: Outage | None) -> None:
    assert classify(exc) is expected, f"{type(exc).__name__}: {exc}"
    if not isinstance(exc, OSError):  # a bare OSError can only be told by its origin
        assert isinstance(exc, REDIS_DOWN) == (expected is REDIS), type(exc).__mro__


# ------------------------------------------------------------------ Redis


def _binaries() -> list[str]:
    """The embedded 6.2, and a redis-server on PATH when there is one (7.x here):
    the two answer a refused write inside a script differently."""
    found = [str(redis_server_binary())]
    other = shutil.which("redis-server")
    if other and os.path.realpath(other) != os.path.realpath(found[0]):
        found.append(other)
    return found


@pytest.fixture(scope="module", params=_binaries(), ids=["embedded", "on-path"][:len(_binaries())])
def refusing(request: pytest.FixtureRequest) -> Iterator[RefusingRedis]:
    with RefusingRedis(request.param) as server:
        yield server


async def test_a_redis_refusing_writes_is_a_redis_outage(refusing: RefusingRedis) -> None:
    client = redis_from_url(refusing.url)
    script = client.register_script(WRITE)
    try:
        rows: list[tuple[str, BaseException]] = []
        with refusing.out_of_memory():
            rows.append(("OOM, a command", await raised(lambda: client.set("k", "v"))))
            rows.append(("OOM, in a script", await raised(lambda: script(keys=["k"], args=["v"]))))
            async with client.pipeline(transaction=False) as pipe:
                await script(keys=["k"], args=["v"], client=pipe)
                pipe.set("k", "v")
                replies = await pipe.execute(raise_on_error=False)
            rows += [("OOM, in a pipeline", reply) for reply in replies]
            assert await client.ping()  # Redis is up: it only refuses writes
        with refusing.disk_full():
            rows.append(("MISCONF, a command", await raised(lambda: client.set("k", "v"))))
            rows.append(("MISCONF, in a script",
                         await raised(lambda: script(keys=["k"], args=["v"]))))
            rows.append(("MISCONF, PING", await raised(client.ping)))
            assert await client.get("k") is None  # reads still work
        for what, exc in rows:
            assert isinstance(exc, RedisRefused), (what, repr(exc), str(exc))
            assert exc.code in str(exc), what
            check(exc, REDIS)
        assert await client.set("k", "v")  # writes again once the fault is gone
    finally:
        await client.aclose()


async def test_redis_errors_that_are_not_outages(refusing: RefusingRedis) -> None:
    client = redis_from_url(refusing.url)
    try:
        await client.set("text", "v")
        wrong_type = await raised(lambda: client.lpush("text", "x"))
        bad_script = await raised(lambda: client.eval("return redis.call('NOPE')", 0))
        no_script = await raised(lambda: client.evalsha("0" * 40, 0))
        for exc in (wrong_type, bad_script, no_script):
            check(exc, None)
    finally:
        await client.aclose()


async def test_redis_unreachable_is_a_redis_outage(tmp_path: Path) -> None:
    closed = redis_from_url(f"redis://127.0.0.1:{free_port()}/0")
    gone = redis_from_url(f"unix://{tmp_path / 'no.sock'}")
    # A port that accepts connections (the kernel's backlog) but never answers.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        mute = aioredis.Redis(port=silent.getsockname()[1], socket_timeout=0.2,
                              socket_connect_timeout=0.2)
        try:
            for exc in (await raised(closed.ping), await raised(gone.ping),
                        await raised(mute.ping)):
                check(exc, REDIS)
        finally:
            for client in (closed, gone, mute):
                await client.aclose()


async def test_a_full_connection_pool_is_no_outage_and_ours_waits(
    redis_url: str, namespace: str
) -> None:
    """redis-py's own pool refuses a command when its connections are all busy
    (``MaxConnectionsError``, a ``ConnectionError``): not Redis being out, so
    never reported as that (``except REDIS_DOWN`` may still retry it). A
    client of ``redis_conn`` waits for a free connection instead."""
    channel = f"{namespace}:channel"
    plain = aioredis.Redis(
        connection_pool=aioredis.ConnectionPool.from_url(redis_url, max_connections=1))
    ours = redis_from_url(redis_url, max_connections=1)
    # A subscriber holds its connection (here the pool's only one) until closed.
    subscribers = [plain.pubsub(), ours.pubsub()]
    try:
        await subscribers[0].subscribe(channel)
        full = await raised(plain.ping)
        assert classify(full) is None, repr(full)
        await subscribers[1].subscribe(channel)
        ping = asyncio.create_task(ours.ping())
        await asyncio.sleep(0.2)
        assert not ping.done()  # waiting, not failed
        await subscribers[1].aclose()
        assert await ping is True
    finally:
        for closing in (*subscribers, plain, ours):
            await closing.aclose()


# --------------------------------------------------------------- database


async def test_database_unreachable_is_a_database_outage() -> None:
    # asyncpg lets the socket's own ConnectionRefusedError through: an OSError
    # that counts because asyncpg raised it.
    database = Database(f"postgresql://postgres@127.0.0.1:{free_port()}/x", min_size=1)
    exc = await raised(database.connect)
    assert isinstance(exc, ConnectionRefusedError)
    check(exc, DATABASE)


async def test_sqlite_outages_and_mistakes(tmp_path: Path) -> None:
    path = tmp_path / "d.db"
    database = Database(f"sqlite:///{path}")
    await database.connect()
    try:
        await database.execute("CREATE TABLE t (x INTEGER)")
        missing_table = await raised(lambda: database.execute("SELECT * FROM nope"))
        syntax = await raised(lambda: database.execute("SELEKT 1"))
        # Another process holds the write lock: "database is locked".
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            contender = sqlite3.connect(path, timeout=0)
            locked = raised_now(lambda: contender.execute("INSERT INTO t VALUES (1)"))
            contender.close()
        finally:
            holder.execute("ROLLBACK")
            holder.close()
    finally:
        await database.disconnect()
    read_only = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        refused = raised_now(lambda: read_only.execute("INSERT INTO t VALUES (1)"))
    finally:
        read_only.close()
    cannot_open = raised_now(lambda: sqlite3.connect(tmp_path).execute("SELECT 1"))

    for exc in (locked, refused, cannot_open):
        check(exc, DATABASE)
    for exc in (missing_table, syntax):  # a bug, not an outage: a 500, not a 503
        assert isinstance(exc, sqlite3.OperationalError)
        check(exc, None)


@pytest.mark.skipif(not pg_admin_url(), reason="needs DEPLOYSTER_TEST_DATABASE_URL")
async def test_postgresql_outages_and_mistakes(any_database_url: str) -> None:
    if not any_database_url.startswith("postgresql"):
        pytest.skip("PostgreSQL only")
    import asyncpg

    admin_url = pg_admin_url()
    assert admin_url is not None
    name = any_database_url.rsplit("/", 1)[1]
    database = Database(any_database_url, min_size=1, max_size=2)
    await database.connect()
    admin = await asyncpg.connect(admin_url)
    try:
        out_of_range = await raised(
            lambda: database.fetch_val("SELECT CAST(:v AS INTEGER)", {"v": 2**40}))
        missing_table = await raised(lambda: database.execute("SELECT * FROM nope"))
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            f"WHERE datname = '{name}'")
        # The first query meets the killed session (asyncpg: InternalClientError
        # "cannot switch to state…" when it comes at once), the next ones a
        # database refusing connections.
        for _ in range(3):
            check(await raised(lambda: database.fetch_val("SELECT 1")), DATABASE)
        for exc in (out_of_range, missing_table):
            check(exc, None)
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()
        await database.disconnect()


# ----------------------------------------------------------- neither


def test_an_oserror_by_itself_is_no_outage(tmp_path: Path) -> None:
    # A pipe whose reader went away: what `deployster project list | head -1` hits.
    reader, writer = os.pipe()
    os.close(reader)
    try:
        broken_pipe = raised_now(lambda: os.write(writer, b"x"))
    finally:
        os.close(writer)
    assert isinstance(broken_pipe, BrokenPipeError)
    # A closed port reached by something that is no backing service's client.
    with socket.socket() as plain:
        refused = raised_now(lambda: plain.connect(("127.0.0.1", free_port())))
    assert isinstance(refused, ConnectionRefusedError)
    missing = raised_now((tmp_path / "nope").read_text)
    for exc in (broken_pipe, refused, missing):
        check(exc, None)
    check(ValueError("bad input"), None)
