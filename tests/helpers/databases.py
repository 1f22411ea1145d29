"""Which databases the tests run on: SQLite always, PostgreSQL too when
``DEPLOYSTER_TEST_DATABASE_URL`` points at a server (its admin URL, from which a
fresh database per test is created: ``any_database_url`` in ``tests/conftest.py``)."""

from __future__ import annotations

import os


def pg_admin_url() -> str | None:
    """``DEPLOYSTER_TEST_DATABASE_URL``, or None when PostgreSQL is not configured."""
    return os.environ.get("DEPLOYSTER_TEST_DATABASE_URL") or None
