"""The SQL database (history, projects, audit) through ``databases``.

SQLite by default (WAL mode and a busy timeout: the server and the dashboard
use the file from two processes), PostgreSQL for scale. Every statement in the
project is written once and runs on both; the few DDL words that differ are
filled in per dialect. Migrations are versioned and applied at connect.
"""

from __future__ import annotations

from pathlib import Path

from databases import Database

from .clock import iso
from .errors import ConfigError

# (version, name, statements). Append only: never edit an applied migration.
MIGRATIONS: list[tuple[int, str, list[str]]] = [
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
]

_DIALECT_WORDS = {
    "sqlite": {"autoinc": "INTEGER PRIMARY KEY AUTOINCREMENT"},
    "postgresql": {"autoinc": "BIGSERIAL PRIMARY KEY"},
}


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


async def connect_database(url: str) -> Database:
    url = normalise_url(url)
    if url.startswith("sqlite"):
        path = url.split("sqlite:///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        database = Database(url, timeout=30)
    elif url.startswith("postgresql://"):
        database = Database(url, min_size=1, max_size=10)
    else:
        raise ConfigError(
            f"unsupported database URL {url.split(':', 1)[0]!r}: use sqlite:///PATH "
            "or postgresql://USER@HOST/DB"
        )
    await database.connect()
    if dialect_of(database) == "sqlite":
        await database.execute("PRAGMA journal_mode=WAL")
    await migrate(database)
    return database


async def migrate(database: Database) -> list[int]:
    """Apply pending migrations; returns the versions applied now."""
    words = _DIALECT_WORDS[dialect_of(database)]
    await database.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
    )
    applied = {r[0] for r in await database.fetch_all("SELECT version FROM schema_migrations")}
    done = []
    for version, name, statements in MIGRATIONS:
        if version in applied:
            continue
        async with database.transaction():
            # A second process may have applied it since we looked.
            if await database.fetch_val(
                "SELECT COUNT(*) FROM schema_migrations WHERE version = :v", {"v": version}
            ):
                continue
            for statement in statements:
                await database.execute(statement.format(**words))
            await database.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) "
                "VALUES (:v, :n, :at)",
                {"v": version, "n": name, "at": iso()},
            )
        done.append(version)
    return done
