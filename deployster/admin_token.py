"""The admin token kept in the data dir (README.md#the-admin-token).

With ``DEPLOYSTER_TOKEN`` unset (and no ``token`` in the config file), the
admin token is the one in ``<data dir>/token``: ``deployster serve`` creates it
on its first start (mode 0600) and every other process of that data dir (the
CLI, the dashboard) reads the same file, so a restart never changes the token
CI holds. ``deployster token`` prints it, ``deployster token --rotate``
replaces it; a running server follows the file (``AdminToken``), so the old
token stops working at once.

The file is never seen half-written: a new token is written to a temporary
file first, then linked into place (creation: two processes starting at once
end with one token, the loser reads the winner's) or renamed over the old one
(rotation).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from pathlib import Path

from .errors import ConfigError
from .settings import Settings

FILE_NAME = "token"
# 32 random bytes, hex: what the README suggested for DEPLOYSTER_TOKEN
# (openssl rand -hex 32); no "dps_" prefix, which is a project token's.
TOKEN_BYTES = 32


def token_path(data_dir: Path) -> Path:
    return data_dir / FILE_NAME


def read(data_dir: Path) -> str | None:
    """The kept token, or None when there is none yet. Raises ``ConfigError``
    for a file that cannot be read or holds no token."""
    path = token_path(data_dir)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise ConfigError(f"cannot read the admin token in {path}: {reason}") from None
    token = text.strip()
    if not token:
        raise ConfigError(f"{path} holds no token: 'deployster token --rotate' writes a new one")
    return token


def ensure(data_dir: Path) -> tuple[str, bool]:
    """The kept token, created when there is none; returns (token, created).
    Of processes creating it at once exactly one gets ``created``. Raises
    ``ConfigError`` (see ``read``) or ``OSError`` for a data dir it cannot write."""
    existing = read(data_dir)
    if existing is not None:
        return existing, False
    temp = _write_new(data_dir)
    try:
        os.link(temp, token_path(data_dir))  # fails if another process was first
        created = True
    except FileExistsError:
        created = False
    finally:
        temp.unlink()
    token = read(data_dir)
    assert token is not None  # linked by us or by the process that was first
    return token, created


def rotate(data_dir: Path) -> str:
    """Replace the kept token (or create it); returns the new one."""
    temp = _write_new(data_dir)
    try:
        os.replace(temp, token_path(data_dir))
    except BaseException:
        temp.unlink()
        raise
    return read(data_dir) or ""


def _write_new(data_dir: Path) -> Path:
    """A new token in a temporary file of the data dir, mode 0600, on disk."""
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, name = tempfile.mkstemp(prefix=f".{FILE_NAME}.", dir=data_dir)  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(secrets.token_hex(TOKEN_BYTES) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(name)
        raise
    return Path(name)


class AdminToken:
    """The admin token requests are checked against, and masked in logs.

    ``DEPLOYSTER_TOKEN`` (or the config file's ``token``) when set, fixed for
    the process's life; else the kept one, read again whenever its file
    changes (a ``stat`` per call: microseconds), so a rotation takes effect
    at once in every running process. None while no token is kept.
    """

    def __init__(self, settings: Settings) -> None:
        self._fixed = settings.token
        self._path = token_path(settings.data_dir)
        self._seen: tuple[int, int, int] | None = None
        self._kept: str | None = None

    def current(self) -> str | None:
        if self._fixed:
            return self._fixed
        try:
            st = os.stat(self._path)
        except OSError:
            # Gone (deleted by hand): the last token read stays in force until
            # a new one is kept; deleting the file is not a rotation.
            return self._kept
        seen = (st.st_ino, st.st_mtime_ns, st.st_size)
        if seen != self._seen:
            try:
                self._kept = read(self._path.parent) or self._kept
            except ConfigError:
                pass  # unreadable for now: keep the last one
            self._seen = seen
        return self._kept
