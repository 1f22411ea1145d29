"""Jobs run in the test's own process: a core and a dispatcher (its notifier
with it) on the test's settings, deploys submitted as ``POST /deploy`` does,
and what the notifier recorded in the audit log."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from deployster import store
from deployster.dispatcher import Dispatcher
from deployster.notify.outbox import Notifier
from deployster.service import DeployRequest, Deployster
from deployster.settings import Settings
from tests.helpers.paths import STUB_BIN


def put_stubs_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The jobs' final supervisorctl is the stand-in (tests/stubs): for an
    autouse fixture of the module."""
    monkeypatch.setenv("PATH", f"{STUB_BIN}{os.pathsep}{os.environ['PATH']}")


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[tuple[Deployster, Dispatcher]]:
    """A core on ``settings`` with its dispatcher (and so its notifier) running."""
    core = await Deployster.open(settings)
    dispatcher = Dispatcher(core)
    await dispatcher.start()
    try:
        yield core, dispatcher
    finally:
        await dispatcher.stop(grace=5)
        await core.close()


async def deploy(core: Deployster, dispatcher: Dispatcher, cd: Path, *commands: str,
                 commit: str = "abc1234", ref: str = "main") -> str:
    """POST /deploy's path: submit, and run it here when the lock is free."""
    result = await core.submit(DeployRequest(
        cd=str(cd), commands=[*commands, "supervisorctl restart my-app"], commit_hash=commit,
        ref_name=ref))
    if result.started:
        dispatcher.launch(result.started)
    return result.job_id


async def ended(core: Deployster, job_id: str, timeout: float = 30) -> str:
    """The job's end as ``status (reason)``, once it has one."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        job = await core.job(job_id)
        if job is not None and job.status.finished:
            return job.status.value + (f" ({job.reason})" if job.reason else "")
        assert asyncio.get_running_loop().time() < deadline, f"{job_id} did not end"
        await asyncio.sleep(0.02)


async def audit(core: Deployster, notifier: Notifier, project_id: int | None = None, *,
                count: int = 0, timeout: float = 30) -> list[tuple[str, str, int | None]]:
    """(action, event, HTTP status) of each attempt in the audit log, oldest
    first; with ``count``, once it holds at least that many.

    A target has its answer before the notifier has recorded the attempt
    (the reply still has to reach it, the lane to be settled), and the send
    loop may be writing a batch when this flushes: a test that knows how many
    attempts there will be waits for them here."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        await notifier.flush_audit()
        rows = await store.select_audit_events(core.db, action_prefix="notify.",
                                               project_id=project_id, limit=1000)
        attempts = [(r["action"], r["detail"]["event"], r["detail"].get("status"))
                    for r in reversed(rows)]
        if len(attempts) >= count:
            return attempts
        assert asyncio.get_running_loop().time() < deadline, \
            f"{len(attempts)} attempt(s) in the audit log after {timeout}s, want {count}: " \
            f"{attempts}"
        await asyncio.sleep(0.05)


async def until(check: Callable[[], Any], timeout: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)
