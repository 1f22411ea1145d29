"""Whether an exception means a backing service is out: Redis, the database, or neither.

One rule for every caller. An outage is temporary and not the caller's fault:
the server answers 503 naming the service (``server/errors.py``), the CLI says
so in one line, and the background loops (dispatcher, watchdog, log writer,
history writer) keep their state and retry. Anything else is a bug or bad
input and is reported as that.

- **Redis**: redis-py's ``ConnectionError`` (refused, reset, ``LOADING``, auth)
  and ``TimeoutError``, and the replies by which a running Redis refuses
  commands for now (``RedisRefused``): ``MISCONF`` (it cannot persist: a full
  disk under the append-only file, a failing BGSAVE), ``OOM`` (``maxmemory``
  reached under ``noeviction``), ``READONLY`` (a replica), ``NOREPLICAS``,
  ``BUSY`` (a script overran), ``MASTERDOWN``. ``redis_conn`` makes its clients
  raise ``RedisRefused`` for those, so ``except REDIS_DOWN`` catches them.
- **Database**: asyncpg's connection-level errors (SQLSTATE classes 08 and 57,
  a closed connection or a broken session, too many connections, a database
  that refuses or no longer exists); SQLite's busy, locked, read-only, I/O,
  full-disk and cannot-open results, told apart by result code: SQLite raises
  ``OperationalError`` for a syntax error or a missing table too.
- **Not an outage: a full connection pool of ours.** redis-py's
  ``MaxConnectionsError`` says that every connection of the client's own pool
  was busy, not that Redis is out: it is reported as the bug it is (a 500 from
  the API, with its traceback in the log), never as ``redis_unavailable``.
  ``redis_conn``'s clients do not raise it (a command waits for a free
  connection). Being a ``ConnectionError`` it is still caught by ``except
  REDIS_DOWN``, whose retry is right for it too.
- **An ``OSError``** counts only when one of the client libraries raised it
  (asyncpg lets the socket's ``ConnectionRefusedError`` through as is). By
  itself it is not an outage: a ``BrokenPipeError`` is usually stdout's reader
  gone (``deployster project list | head -1``), a ``PermissionError`` a file
  the user named.

``tests/test_outages.py`` holds the table, with exceptions produced for real.
"""

from __future__ import annotations

import enum
import re
import sqlite3
import traceback

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MaxConnectionsError, OutOfMemoryError, ReadOnlyError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .db import TABLES


class Outage(enum.Enum):
    REDIS = "redis"
    DATABASE = "database"

    @property
    def service(self) -> str:
        """The service's name in a sentence: "Redis", "the database"."""
        return "Redis" if self is Outage.REDIS else "the database"


# ----------------------------------------------------------------- Redis


class RedisRefused(ResponseError):
    """Redis answers but refuses the command for now (see ``REFUSAL_CODES``).

    ``code`` is the reply's error code (``MISCONF``, ``OOM``…); ``str()`` is the
    whole reply, code first. A ``ResponseError``, not a ``ConnectionError``: the
    connection is fine, and redis-py raises a ``ConnectionError`` reply at once,
    out of the middle of a pipeline's replies.
    """

    def __init__(self, message: str, code: str = "") -> None:
        code = code or message.split(" ", 1)[0]
        super().__init__(message, status_code=code)
        self.code = code


class RedisOutOfMemory(RedisRefused, OutOfMemoryError):
    """``OOM``: still an ``OutOfMemoryError`` for code that catches redis-py's class."""


class RedisReadOnly(RedisRefused, ReadOnlyError):
    """``READONLY``: still a ``ReadOnlyError`` for code that catches redis-py's class."""


# Error codes of a Redis that is up but will not run the command now; a retry
# later succeeds once the operator (or Redis) fixed the cause.
REFUSAL_CODES: dict[str, type[RedisRefused]] = {
    "MISCONF": RedisRefused,  # cannot persist: AOF write failed, BGSAVE failed
    "OOM": RedisOutOfMemory,  # maxmemory reached, nothing to evict
    "READONLY": RedisReadOnly,  # a replica (e.g. after a failover)
    "NOREPLICAS": RedisRefused,  # min-replicas-to-write not met
    "BUSY": RedisRefused,  # a script ran past busy-reply-threshold
    "MASTERDOWN": RedisRefused,  # a replica cut off from its master
}

# Redis 6.2 wraps an error raised inside a script as
# "ERR Error running script (call to f_<sha>): @user_script:1: @user_script: 1: -OOM …";
# Redis 7 keeps the code in front ("OOM … script: <sha>, on @user_script:1.").
_IN_SCRIPT = re.compile(r"^(?:ERR )?Error running script \(call to f_[0-9a-f]+\): .*?: -([A-Z]+) ")


def refusal(reply: str) -> RedisRefused | None:
    """The exception for an error reply (the text after ``-``) that is a refusal
    for now, else None. Used by ``redis_conn``'s reply parser."""
    code = reply.split(" ", 1)[0]
    if code not in REFUSAL_CODES:
        found = _IN_SCRIPT.match(reply)
        code = found.group(1) if found else ""
    kind = REFUSAL_CODES.get(code)
    return kind(reply, code) if kind is not None else None


# For ``except`` clauses. No bare OSError: redis-py wraps its socket errors in
# ConnectionError/TimeoutError (connect, send and read all do), and a bare one
# is most often someone else's (see the module docstring).
REDIS_DOWN: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    RedisRefused,
    # redis-py's own classes, for a client built without ``redis_conn``'s parser.
    OutOfMemoryError,
    ReadOnlyError,
)


# --------------------------------------------------------------- database

# SQLite result codes (the low byte of an extended code) that mean "not now".
_SQLITE_NOT_NOW = {
    3,  # SQLITE_PERM
    5,  # SQLITE_BUSY
    6,  # SQLITE_LOCKED
    8,  # SQLITE_READONLY: the file turned read-only under us
    10,  # SQLITE_IOERR
    13,  # SQLITE_FULL: the disk is full
    14,  # SQLITE_CANTOPEN
    15,  # SQLITE_PROTOCOL
}


def _asyncpg_errors() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    """(outage classes, classes excluded from them) of asyncpg."""
    try:
        import asyncpg
        from asyncpg.exceptions import _base
    except ImportError:  # pragma: no cover - asyncpg is a dependency
        return (), ()
    exc = asyncpg.exceptions
    down = (
        exc.PostgresConnectionError,  # class 08: connection exceptions
        exc.OperatorInterventionError,  # class 57: shutdown, terminated, cannot connect now
        exc.InterfaceError,  # the connection or pool was closed under us
        exc.TooManyConnectionsError,
        exc.ObjectNotInPrerequisiteStateError,  # database not accepting connections
        exc.InvalidCatalogNameError,  # the database does not exist (any more)
        # The session broke under the client: the first query after the server
        # terminated the connection can fail with "cannot switch to state 11;
        # another operation (2) is in progress" (seen in tests/test_outages.py).
        _base.InternalClientError,
    )
    # Client-side InterfaceErrors about what we sent, not about the server:
    # a value out of range for its column type, a bad connection option.
    not_down = (
        _base.DataError,
        _base.ClientConfigurationError,
        _base.UnsupportedClientFeatureError,
    )
    return down, not_down


_PG_DOWN, _PG_NOT_DOWN = _asyncpg_errors()


_MISSING_TABLE = re.compile(r'^no such table: (\w+)|^relation "(\w+)" does not exist')


def is_schema_missing(exc: BaseException) -> bool:
    """A statement failed because one of deployster's own tables is not there:
    the database was dropped and created again empty, or swapped for a new
    one. The database answers, but cannot be used until the tables are back
    (the history writer re-creates them: ``history.py``), so it counts as a
    database outage. A missing table of another name is a bug, not this."""
    if not isinstance(exc, sqlite3.OperationalError) and \
            type(exc).__name__ != "UndefinedTableError":  # asyncpg, SQLSTATE 42P01
        return False
    found = _MISSING_TABLE.match(str(exc))
    return found is not None and (found.group(1) or found.group(2)) in TABLES


def _database_down(exc: BaseException) -> bool:
    if is_schema_missing(exc):
        return True
    if isinstance(exc, sqlite3.OperationalError):
        code = getattr(exc, "sqlite_errorcode", None)
        return code is None or code & 0xFF in _SQLITE_NOT_NOW  # None: raised by hand
    return isinstance(exc, _PG_DOWN) and not isinstance(exc, _PG_NOT_DOWN)


# ----------------------------------------------------------- the classifier

# Top-level packages of each service's client libraries: a bare OSError raised
# inside one of them is that service's outage.
_LIBRARIES = {
    "redis": Outage.REDIS,
    "asyncpg": Outage.DATABASE,
    "databases": Outage.DATABASE,
    "aiosqlite": Outage.DATABASE,
}


def _raised_by(exc: BaseException) -> Outage | None:
    """The service whose client library ``exc`` came out of (innermost frame first)."""
    frames = list(traceback.walk_tb(exc.__traceback__))
    for frame, _ in reversed(frames):
        package = str(frame.f_globals.get("__name__", "")).split(".", 1)[0]
        if package in _LIBRARIES:
            return _LIBRARIES[package]
    return None


def classify(exc: BaseException) -> Outage | None:
    """Which backing service ``exc`` says is out: ``Outage.REDIS``,
    ``Outage.DATABASE``, or None (not an outage: a bug, bad input, a closed
    stdout…). The rules are in this module's docstring."""
    if isinstance(exc, MaxConnectionsError):
        return None
    if isinstance(exc, REDIS_DOWN):
        return Outage.REDIS
    if _database_down(exc):
        return Outage.DATABASE
    if isinstance(exc, OSError):
        return _raised_by(exc)
    return None


def describe(exc: BaseException) -> str:
    """A short reason for a health report: "refusing writes (MISCONF)", else the
    exception's class name."""
    if isinstance(exc, RedisRefused):
        what = "commands" if exc.code in ("BUSY", "MASTERDOWN") else "writes"
        return f"refusing {what} ({exc.code})"
    if is_schema_missing(exc):
        return "deployster's tables are missing (the database was emptied?)"
    return type(exc).__name__
