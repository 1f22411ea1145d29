"""The SQL database (history, projects, audit) through ``databases``.

SQLite by default (WAL mode and a busy timeout: the server and the dashboard
use the file from two processes), PostgreSQL for scale. Every statement in the
project is written once and runs on both; the few DDL words that differ are
filled in per dialect. Migrations are versioned and applied at connect.
Which driver errors mean "the database is down" is decided in ``outages``.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from databases import Database
from databases.core import Connection

from .clock import iso
from .errors import ConfigError

# (version, name, statements). Append only: never edit an applied migration. A
# statement is the same on both databases, or {dialect: statement} where they
# differ (a dialect missing from it runs nothing there).
MIGRATIONS: list[tuple[int, str, list[str | dict[str, str]]]] = [
    (
        1,
        "initial schema",
        [
            """CREATE TABLE projects (
                id {autoinc},
                name TEXT NOT NULL UNIQUE,
                path TEXT NOT NULL UNIQUE,
                pipeline_json TEXT NOT NULL DEFAULT '[]',
                lock_ttl DOUBLE PRECISION NOT NULL,
                timeout DOUBLE PRECISION NOT NULL,
                created_at TEXT NOT NULL,
                updated_at TEXT NOT NULL
            )""",
            """CREATE TABLE deployments (
                id TEXT PRIMARY KEY,
                project_id INTEGER NOT NULL,
                project TEXT NOT NULL,
                cd TEXT NOT NULL,
                commit_hash TEXT NOT NULL,
                ref_name TEXT NOT NULL,
                stage TEXT,
                commands TEXT NOT NULL,
                status TEXT NOT NULL,
                reason TEXT,
                exit_code INTEGER,
                queued_at TEXT,
                started_at TEXT,
                finished_at TEXT,
                started_by TEXT,
                log TEXT,
                log_bytes BIGINT
            )""",
            "CREATE INDEX deployments_project ON deployments (project_id, id)",
            "CREATE INDEX deployments_status ON deployments (status)",
            """CREATE TABLE audit_events (
                id {autoinc},
                at TEXT NOT NULL,
                actor TEXT NOT NULL,
                action TEXT NOT NULL,
                project_id INTEGER,
                job_id TEXT,
                detail TEXT
            )""",
        ],
    ),
    (
        2,
        "queue policy per project; superseded_by on deployments",
        [
            "ALTER TABLE projects ADD COLUMN queue_policy TEXT NOT NULL DEFAULT 'fifo'",
            "ALTER TABLE deployments ADD COLUMN superseded_by TEXT",
        ],
    ),
    (
        3,
        "per-project tokens: only a SHA-256 of the token is stored",
        [
            "ALTER TABLE projects ADD COLUMN token_hash TEXT",
            "ALTER TABLE projects ADD COLUMN token_created_at TEXT",
            # NULLs do not collide in a unique index, on either backend.
            "CREATE UNIQUE INDEX projects_token_hash ON projects (token_hash)",
        ],
    ),
    (
        4,
        "deployments.commands_masked: the stored commands had a secret masked",
        [
            "ALTER TABLE deployments ADD COLUMN commands_masked INTEGER NOT NULL DEFAULT 0",
        ],
    ),
    (
        5,
        "deploy steps per project (git source, supervisor); the commit a job deployed",
        [
            # (str.format()ted: {{}} is '{}')
            "ALTER TABLE projects ADD COLUMN steps_json TEXT NOT NULL DEFAULT '{{}}'",
            "ALTER TABLE deployments ADD COLUMN deployed_sha TEXT",
            "ALTER TABLE deployments ADD COLUMN redeploy_of TEXT",
        ],
    ),
    (
        6,
        "nodes: a project is (node, path); the node a job ran on",
        [
            # Rows of a single-node install get node '' here; the first
            # server to start adopts them (store.adopt_projects).
            {
                "postgresql": "ALTER TABLE projects ADD COLUMN node TEXT NOT NULL DEFAULT ''",
                # SQLite cannot drop a column's UNIQUE: the table is made again.
                "sqlite": """CREATE TABLE projects_v6 (
                    id INTEGER PRIMARY KEY AUTOINCREMENT,
                    node TEXT NOT NULL DEFAULT '',
                    name TEXT NOT NULL UNIQUE,
                    path TEXT NOT NULL,
                    pipeline_json TEXT NOT NULL DEFAULT '[]',
                    lock_ttl DOUBLE PRECISION NOT NULL,
                    timeout DOUBLE PRECISION NOT NULL,
                    created_at TEXT NOT NULL,
                    updated_at TEXT NOT NULL,
                    queue_policy TEXT NOT NULL DEFAULT 'fifo',
                    token_hash TEXT,
                    token_created_at TEXT,
                    steps_json TEXT NOT NULL DEFAULT '{{}}',
                    UNIQUE (node, path)
                )""",
            },
            {
                "postgresql": "ALTER TABLE projects DROP CONSTRAINT projects_path_key",
                "sqlite": "INSERT INTO projects_v6 (id, name, path, pipeline_json, lock_ttl, "
                          "timeout, created_at, updated_at, queue_policy, token_hash, "
                          "token_created_at, steps_json) SELECT id, name, path, pipeline_json, "
                          "lock_ttl, timeout, created_at, updated_at, queue_policy, token_hash, "
                          "token_created_at, steps_json FROM projects",
            },
            {
                "postgresql": "ALTER TABLE projects ADD CONSTRAINT projects_node_path "
                              "UNIQUE (node, path)",
                # The ids' high-water mark carries over: a removed project's id
                # is never handed out again (its history rows keep it).
                "sqlite": "DELETE FROM sqlite_sequence WHERE name = 'projects_v6'",
            },
            {"sqlite": "INSERT INTO sqlite_sequence (name, seq) SELECT 'projects_v6', seq "
                       "FROM sqlite_sequence WHERE name = 'projects'"},
            {"sqlite": "DROP TABLE projects"},
            {"sqlite": "ALTER TABLE projects_v6 RENAME TO projects"},
            {"sqlite": "CREATE UNIQUE INDEX projects_token_hash ON projects (token_hash)"},
            "ALTER TABLE deployments ADD COLUMN node TEXT",
        ],
    ),
    (
        7,
        "notifications and GitHub deployments per project",
        [
            # NULL: the server-wide targets; '[]': none. Secrets inside, as the
            # stage values are in pipeline_json: never sent to a reader.
            "ALTER TABLE projects ADD COLUMN notify_json TEXT",
            "ALTER TABLE projects ADD COLUMN github_repo TEXT",
            "ALTER TABLE projects ADD COLUMN github_token TEXT",
        ],
    ),
]

_DIALECT_WORDS = {
    "sqlite": {"autoinc": "INTEGER PRIMARY KEY AUTOINCREMENT"},
    "postgresql": {"autoinc": "BIGSERIAL PRIMARY KEY"},
}


# Key of the PostgreSQL advisory lock that serialises concurrent migrators.
_MIGRATION_LOCK_KEY = 0x6465706C6F79  # "deploy"


def dialect_of(database: Database) -> str:
    name = database.url.dialect
    return "postgresql" if name.startswith("postgres") else name


def normalise_url(url: str) -> str:
    """Accept the spellings people paste (postgres://, postgresql+asyncpg://)."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    return url.replace("postgresql+asyncpg://", "postgresql://").replace(
        "sqlite+aiosqlite://", "sqlite://"
    )


class _SQLiteDatabase(Database):
    """SQLite through one aiosqlite connection (and thread) for the whole life.

    ``databases`` opens a new aiosqlite connection, each with its own non-daemon
    thread, whenever no query is in flight, and closes it afterwards. A task
    cancelled while one was opening or closing (a shutdown, a timed-out health
    check) left that thread running, and the interpreter then waited for it
    for ever at exit. Holding one connection open for the database's life
    closes that hole, and saves a thread start and a file open per query.
    Queries still take turns on it (``databases`` serialises them per
    connection), which is all one SQLite file allows for writes anyway.
    """

    _pinned: Connection | None = None

    async def connect(self) -> None:
        await super().connect()
        self._pinned = self.connection()
        await self._pinned.__aenter__()

    async def disconnect(self) -> None:
        pinned, self._pinned = self._pinned, None
        if pinned is not None:
            await pinned.__aexit__(None, None, None)
        await super().disconnect()


async def connect_database(url: str) -> Database:
    url = normalise_url(url)
    if url.startswith("sqlite"):
        path = url.split("sqlite:///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        database: Database = _SQLiteDatabase(url, timeout=30)
    elif url.startswith("postgresql://"):
        database = Database(url, min_size=1, max_size=10)
    else:
        raise ConfigError(
            f"unsupported database URL {url.split(':', 1)[0]!r}: use sqlite:///PATH "
            "or postgresql://USER@HOST/DB"
        )
    await database.connect()
    if dialect_of(database) == "sqlite":
        await _enable_wal(database)
    await migrate(database)
    return database


async def _enable_wal(database: Database) -> None:
    """Switch the file to WAL (persistent, so normally a no-op).

    Turning a fresh file to WAL needs it alone for a moment, and SQLite answers
    "locked" at once instead of waiting out the busy timeout when another
    process (the server and the dashboard starting together) has it open.
    """
    for _ in range(200):
        try:
            mode = await database.fetch_val("PRAGMA journal_mode=WAL")
            if str(mode).lower() == "wal":
                return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc):
                raise
        await asyncio.sleep(0.05)
    raise ConfigError(f"cannot switch {database.url} to WAL mode: the database stays locked")


async def migrate(database: Database) -> list[int]:
    """Apply pending migrations; returns the versions applied now.

    Safe to run from two processes at once (the server and the dashboard starting
    together on a fresh database): the migrator takes the database's write lock
    before it reads what is applied, so the second one waits, then finds nothing
    left to do.
    """
    dialect = dialect_of(database)
    words = _DIALECT_WORDS[dialect]
    create = (
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
    )
    if dialect == "sqlite":
        await database.execute(create)
    done: list[int] = []
    async with database.transaction():
        if dialect == "postgresql":
            await database.execute(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK_KEY})")
            await database.execute(create)
        else:
            # A write as the transaction's first statement takes SQLite's write
            # lock at once, waiting out the busy timeout, instead of failing later
            # when a read transaction tries to upgrade.
            await database.execute("UPDATE schema_migrations SET name = name WHERE version < 0")
        applied = {
            r[0] for r in await database.fetch_all("SELECT version FROM schema_migrations")
        }
        for version, name, statements in MIGRATIONS:
            if version in applied:
                continue
            for statement in statements:
                text = statement.get(dialect) if isinstance(statement, dict) else statement
                if text:
                    await database.execute(text.format(**words))
            await database.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) "
                "VALUES (:v, :n, :at)",
                {"v": version, "n": name, "at": iso()},
            )
            done.append(version)
    return done


def latest_version() -> int:
    """The schema version this code migrates a database to."""
    return MIGRATIONS[-1][0]


# Every table deployster has: a statement naming one of them that finds it
# missing means the schema is gone (see outages.is_schema_missing).
TABLES = ("projects", "deployments", "audit_events", "schema_migrations")


async def schema_version(database: Database) -> int:
    """The newest migration applied; raises (``outages.is_schema_missing``)
    when the tables are gone."""
    return int(await database.fetch_val("SELECT MAX(version) FROM schema_migrations") or 0)
