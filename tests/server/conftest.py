"""Shared by the server tests: two registered projects, and waits for the SQL
history (the history writer copies a job a moment after it ends)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from deployster import store
from deployster.models import Job, Project
from deployster.service import Deployster


@pytest.fixture
async def app(core: Deployster, project_dir: Path) -> Project:
    return await core.projects.add(str(project_dir))


@pytest.fixture
async def other(core: Deployster, tmp_path: Path) -> Project:
    path = tmp_path / "other-app"
    path.mkdir()
    return await core.projects.add(str(path))


async def history_row(core: Deployster, job_id: str, status: str | None = None,
                      timeout: float = 20) -> Job:
    """The job's SQL row once the history writer has recorded its end (with
    ``status``, when given)."""
    deadline = time.monotonic() + timeout
    row = None
    while time.monotonic() < deadline:
        row = await store.select_deployment(core.db, job_id)
        if row is not None and row.status.finished and status in (None, row.status.value):
            return row
        await asyncio.sleep(0.05)
    raise AssertionError(f"history of {job_id} is {row!r} after {timeout}s, expected "
                         f"{status or 'a finished job'}")


async def history_log(core: Deployster, job_id: str, timeout: float = 20) -> str:
    """The log as the SQL history holds it, once the history writer copied it
    (a log is stored only with the job's end)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = await store.select_deployment_log(core.db, job_id)
        if log is not None:
            return log
        await asyncio.sleep(0.05)
    raise AssertionError(f"the log of {job_id} did not reach the history in {timeout}s")
