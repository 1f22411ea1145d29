"""A deploy request, and waiting for what a job does: its end as ``/status``
reports it, a file its commands write, its row and log in the SQL history (the
history writer copies a job a moment after it ends)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from deployster import store
from deployster.models import Job
from deployster.service import Deployster


def deploy_body(cd: Path | str, *commands: str, commit: str = "abc1234",
                ref: str = "main") -> dict[str, object]:
    return {
        "cd": str(cd),
        "commands": [*commands, "supervisorctl restart my-app--main"],
        "commit_hash": commit,
        "ref_name": ref,
    }


async def wait_for_status(
    client: httpx.AsyncClient, job_id: str, *, timeout: float = 30
) -> dict[str, object]:
    """Poll /status like the seed's client; returns the final reply with all logs."""
    logs = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reply = (await client.get(f"/status/{job_id}")).json()
        logs.append(reply.get("logs", ""))
        if reply["status"] in ("complete", "failed", "not_found"):
            return {**reply, "logs": "".join(logs)}
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish in {timeout}s")


async def wait_for_file(path: Path, timeout: float = 20) -> str:
    """The stripped content of ``path`` once a job has written it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        await asyncio.sleep(0.05)
    raise AssertionError(f"{path} was not written in {timeout}s")


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


async def history_settled(core: Deployster, job_id: str, timeout: float = 20) -> None:
    """Wait until the history writer is done with the job: stored, then settled
    (its ``dirty`` entry cleared, ``redis_scripts/settle.lua``), which is when a
    finished job's Redis keys get their expiry. The row is readable a moment
    before that: Redis cannot let the job go before this."""
    deadline = time.monotonic() + timeout
    while await core.redis.hexists(core.keys.dirty, job_id):
        if time.monotonic() >= deadline:
            raise AssertionError(f"the history writer did not settle {job_id} in {timeout}s")
        await asyncio.sleep(0.05)
