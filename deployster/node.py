"""This host's node name (README.md#several-hosts).

Several ``deployster serve`` processes, one per host, may share one Redis and
one PostgreSQL: each host is a **node**, and a project belongs to the node whose
files it deploys. The name is ``DEPLOYSTER_NODE`` when set; otherwise the one
kept in ``<data dir>/node``, written with the host name the first time it is
needed, so that renaming a host later does not orphan its projects (they are
registered under the name, not the host).
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

from .errors import ConfigError
from .procinfo import hostname
from .settings import NODE_PATTERN, Settings

FILE_NAME = "node"


def check_name(name: str) -> str:
    """``name`` if it is a valid node name; raises ``ConfigError`` otherwise."""
    if not NODE_PATTERN.fullmatch(name):
        raise ConfigError(
            f"node name {name!r}: use 1-63 letters, digits, '.', '_' or '-', starting "
            "with a letter or digit (DEPLOYSTER_NODE)")
    return name


def kept_path(settings: Settings) -> Path:
    """Where the node's name is kept when ``DEPLOYSTER_NODE`` is not set."""
    return Path(settings.data_dir) / FILE_NAME


def kept_name(settings: Settings) -> str | None:
    """The name kept in the data dir, if one is (read only: nothing is
    written). Raises ``ConfigError`` for a bad name."""
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        kept = kept_path(settings).read_text(encoding="utf-8").strip()
        if kept:
            return check_name(kept)
    return None


def host_node_name() -> str:
    """The name a new node takes: this host's short name, made a valid node name."""
    name = re.sub(r"[^A-Za-z0-9._-]", "-", hostname().split(".")[0])[:63] or "node"
    return name if name[0].isalnum() else "n" + name[:62]


def node_name(settings: Settings) -> str:
    """This process's node: ``settings.node``, else the kept name (created
    from the host name on first use). Raises ``ConfigError`` for a bad name."""
    if settings.node:
        return check_name(settings.node)
    kept = kept_name(settings)
    if kept:
        return kept
    name = host_node_name()
    path = kept_path(settings)
    with contextlib.suppress(OSError):  # a read-only data dir: the host name, not kept
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(name + "\n", encoding="utf-8")
        try:
            os.link(tmp, path)  # two processes at once: the first one's name wins
        except FileExistsError:
            kept = path.read_text(encoding="utf-8").strip()
            if kept:
                name = check_name(kept)
        finally:
            tmp.unlink(missing_ok=True)
    return name
